"""Start a TF_FILES from nothing on the inbox page: labels (:func:`create_label`), uploaded
photos (:func:`add_photo`), the photos per label (:func:`photo_counts`), and the first training
once every label has :data:`MIN_PHOTOS_PER_LABEL` photos (:func:`train_from_nothing`)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from tfguess.core.config import TrainConfig
from tfguess.core.runfolder import RunFolder
from tfguess.curate.inbox_actions import InboxError, check_label, copy_no_overwrite
from tfguess.data.dataset import walk

MIN_PHOTOS_PER_LABEL = 5               # photos each label needs to train


def create_label(tf_files: str | Path, name: str) -> Path:
    """``TF_FILES/data/<name>/`` (made when missing)."""
    folder = RunFolder.at(tf_files).data / check_label(name)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def add_photo(tf_files: str | Path, label: str, filename: str, data: bytes) -> Path:
    """Write an uploaded photo into ``data/<label>/`` under its own name (its base name only) or
    ``<stem>-N<ext>`` when taken; refuses what is not an image."""
    from tfguess.data.images import ImageError, check_header

    folder = create_label(tf_files, label)
    # the base name only, without control characters (a NUL byte cannot be in a file name)
    name = "".join(c for c in os.path.basename(filename.replace("\\", "/")) if c >= " ")
    name = name or "photo.jpg"
    if name.startswith("."):
        name = "photo" + name
    tmp = folder / f".tfguess-upload.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "xb") as f:
        f.write(data)
    try:
        try:
            check_header(tmp, data=data)
        except ImageError as e:
            raise InboxError(f"{name}: not a usable image ({e.reason})") from None
        return copy_no_overwrite(tmp, folder, name)
    finally:
        tmp.unlink(missing_ok=True)


def photo_counts(tf_files: str | Path) -> dict[str, int]:
    data = RunFolder.at(tf_files).data
    if not data.is_dir():
        return {}
    return {e.name: len(walk(e.path, recursive=True).images)
            for e in sorted(os.scandir(data), key=lambda e: e.name)
            if e.is_dir() and not e.name.startswith(".")}


def ready_to_train(tf_files: str | Path) -> str | None:
    """None when every label has enough photos to train; else what is missing."""
    counts = photo_counts(tf_files)
    if len(counts) < 2:
        return "create at least 2 labels"
    short = [f"{label} ({n})" for label, n in counts.items() if n < MIN_PHOTOS_PER_LABEL]
    if short:
        return f"each label needs {MIN_PHOTOS_PER_LABEL} photos: add to {', '.join(short)}"
    return None


def train_from_nothing(tf_files: str | Path, log: Callable[[str], None] = print,
                       progress: bool = False):
    """Train an ordinary TF_FILES from the photos given on the page, and write its evaluation
    report as ``tfguess train`` does (the review page reads it). The quick recipe: the page
    waits for it, and re-trains as labels arrive; ``tfguess train TF_FILES`` then trains the
    default time plan on the sorted photos."""
    from tfguess.curate.retrain import train_with_report

    missing = ready_to_train(tf_files)
    if missing:
        raise InboxError(f"not ready to train: {missing}")
    result = train_with_report(tf_files, TrainConfig(quick=True), progress=progress, log=log)
    return result

