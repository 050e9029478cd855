"""tfguess: train an image classifier from a folder of labelled photos, then guess, sort and export."""

__version__ = "0.1.0"
