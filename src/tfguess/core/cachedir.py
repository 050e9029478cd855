"""Where tfguess keeps what it derives once per machine (converted weights, TFLite engines)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$TFGUESS_CACHE``, or ``~/.cache/tfguess``."""
    return Path(os.environ.get("TFGUESS_CACHE") or Path.home() / ".cache" / "tfguess").expanduser()
