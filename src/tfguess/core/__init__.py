"""The plumbing every stage stands on: errors, atomic writes, locks, the TF_FILES layout, the typed settings."""
