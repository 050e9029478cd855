"""Small helpers shared by the backbone modules."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tfguess.core.cachedir import cache_dir  # noqa: F401 - re-exported for the backbones
from tfguess.core.errors import WeightsUnavailableError  # noqa: F401 - re-exported for the backbones

RANDOM = "random"




def keras_models_dir() -> Path:
    """The folder where Keras keeps downloaded weights: ``$KERAS_HOME/models`` or ~/.keras/models."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser() / "models"


_HASHES: dict[tuple[str, int, int], str] = {}


def file_fingerprint(path: str | Path) -> str:
    """First 16 hex digits of the file's sha256 (memoised on path, size and mtime)."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()[:16]
    return _HASHES[key]


def check_file(path: str, name: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsUnavailableError(f"weights file for {name} not found: {p} (check the --weights path)")
    return p
