"""Running a saved model: guess, guess-dir with its journal, and the Ray path."""
