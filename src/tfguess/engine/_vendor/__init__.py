"""Third-party code vendored unchanged (see each file's header for origin and licence)."""
