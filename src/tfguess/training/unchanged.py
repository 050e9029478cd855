"""A re-run with nothing new does nothing: ``train`` on a TF_FILES whose photos and settings are
those the model there was trained on returns that model, without importing TensorFlow.

What "the same" means: the settings asked for (the config before any plan, less those that
change nothing in the model: ``force``, ``report``, ``workers``, ``summaries_dir``), tfguess's
version, and every file under the image folder and the evaluation folder by relative path, size
and modification time (a photo moved, added, edited or removed is a change). The model and its
labels file must still be those the last run wrote (size and modification time). Nothing is
read but directory entries: a folder of 800 photos is checked in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tfguess import __version__
from tfguess.core.runfolder import RunFolder

IGNORED_SETTINGS = ("force", "report", "workers", "summaries_dir")


def inputs_digest(config, image_dir: Path) -> str:
    """The digest of what a training run reads: its settings and the files of its folders."""
    h = hashlib.sha256()
    settings = {k: v for k, v in config.to_dict().items() if k not in IGNORED_SETTINGS}
    h.update(json.dumps({"tfguess": __version__, "config": settings}, sort_keys=True,
                        default=str).encode())
    folders = [Path(image_dir)]
    if config.eval_dir:
        folders.append(Path(config.eval_dir).expanduser().resolve())
    for folder in folders:
        h.update(f"\0folder\0{folder}".encode("utf-8", "surrogateescape"))
        for root, dirs, files in os.walk(folder, followlinks=config.follow_links):
            dirs.sort()
            rel = os.path.relpath(root, folder)
            for name in sorted(files):
                try:
                    st = os.stat(os.path.join(root, name))
                except OSError:
                    continue   # gone or unreadable: the training says so, the digest skips it
                h.update(f"\0{rel}/{name}\0{st.st_size}\0{st.st_mtime_ns}".encode(
                    "utf-8", "surrogateescape"))
    return h.hexdigest()


def _stamp(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def record(run: RunFolder, digest: str) -> dict:
    """What the run summary keeps to know the next run changes nothing: the inputs' digest and
    the stamps of the files the run wrote."""
    return {"inputs": digest, "model": _stamp(run.model), "labels": _stamp(run.labels)}


def last_run_if_unchanged(run: RunFolder, digest: str) -> dict | None:
    """The last run's summary when it was trained on these very inputs and its model and labels
    are still the files it wrote; else None (a missing or damaged summary is a change)."""
    try:
        summary = json.loads(run.summary.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    seen = summary.get("inputs") if isinstance(summary, dict) else None
    if not isinstance(seen, dict) or seen.get("inputs") != digest:
        return None
    if seen.get("model") is None or seen.get("model") != _stamp(run.model):
        return None
    if seen.get("labels") != _stamp(run.labels):
        return None
    return summary
