"""Writing files so that a reader never sees half of one, and nothing is lost on replacement.

Every output tfguess writes goes through :func:`atomic_write` (a temporary file in the same folder,
flushed and renamed over the target) or :func:`publish_dir` (a folder built aside, then renamed
into place). Replacing keeps the old version as ``<stem>.previous<suffix>`` where asked.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

TMP_SUFFIX = ".tmp"


def temp_path(path: Path) -> Path:
    """A temporary name beside ``path``, unique to this process: ``.<name>.<pid>.tmp<suffix>``
    (hidden; it keeps the suffix, which some writers require)."""
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}{path.suffix}")


def previous_path(path: Path) -> Path:
    """Where the version replaced by a new ``path`` is kept: ``<stem>.previous<suffix>``."""
    return path.with_name(f"{path.stem}.previous{path.suffix}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse
        pass
    finally:
        os.close(fd)


def atomic_write(
    path: str | Path,
    data: bytes | str | Callable[[Path], None],
    *,
    keep_previous: bool = False,
    fsync: bool = False,
) -> Path | None:
    """Write ``data`` (bytes, text, or a function that writes a given path) to ``path`` atomically.

    With ``keep_previous``, a file already at ``path`` is renamed to ``<stem>.previous<suffix>``
    (replacing an older one) just before the new one takes its place; that path is returned.
    The old file or the new one is at ``path`` at every instant: the old one is first linked (or
    copied) to its ``.previous`` name, then the new one is renamed over it.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        if callable(data):
            data(tmp)
        else:
            with open(tmp, "wb") as f:
                f.write(data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data)
                if fsync:
                    f.flush()
                    os.fsync(f.fileno())
        previous = None
        if keep_previous and path.exists():
            previous = previous_path(path)
            _copy_aside(path, previous)
        os.replace(tmp, path)
        if fsync:
            _fsync_dir(path.parent)
        return previous
    finally:
        tmp.unlink(missing_ok=True)


def _copy_aside(path: Path, target: Path) -> None:
    """Make ``target`` a copy of ``path`` (a hard link where possible), atomically."""
    tmp = temp_path(target)
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:  # no hard links here (some file systems): copy
        shutil.copy2(path, tmp)
    os.replace(tmp, target)
    # rename() does nothing when both names are links to one file (target was already a link to
    # path, e.g. after an interrupted save): the extra name must go.
    tmp.unlink(missing_ok=True)


def publish_dir(build: Callable[[Path], None], path: str | Path, *,
                keep_previous: bool = True) -> Path | None:
    """Build a folder aside with ``build(tmp_path)``, then rename it to ``path``.

    An existing ``path`` is kept as ``<name>.previous<suffix>`` (replacing an older one) with
    ``keep_previous``, else removed once the new folder is complete. Returns the kept path.
    """
    path = Path(path)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent))
    previous = None
    try:
        target = staging / path.name
        build(target)
        if path.exists():
            previous = previous_path(path) if keep_previous else staging / f"{path.name}.old"
            remove(previous)
            os.replace(path, previous)
        os.replace(target, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return previous if keep_previous else None


def remove(path: Path) -> None:
    """Remove a file or a folder tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def clean_stale_temp_files(folder: Path, names: list[str]) -> list[Path]:
    """Remove temporary files left beside ``names`` in ``folder`` by processes that are gone."""
    removed = []
    for name in names:
        tail = TMP_SUFFIX + Path(name).suffix
        for tmp in folder.glob(f".{name}.*{tail}"):
            pid = tmp.name[len(name) + 2:-len(tail)]
            if pid.isdigit() and not _alive(int(pid)):
                remove(tmp)
                removed.append(tmp)
    return removed


def is_inside(path: Path, root: Path) -> bool:
    """Whether ``path`` is ``root`` or below it (by name: resolve both first to follow links)."""
    return path == root or root in path.parents


def display_path(path: str | os.PathLike[str]) -> str:
    """``path`` as text that can always be printed: bytes that are not UTF-8 (a file name from
    another system) appear as ``\\xe9`` escapes instead of failing the output."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (this process counts as running)."""
    return _alive(pid)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


# ---------------------------------------------------------------------------------------------
# File names as text that is always valid Unicode and converts back exactly


def path_text(path: str | os.PathLike[str]) -> str:
    """``path`` as text for JSON, CSV and web pages: valid Unicode whatever the name's bytes, and
    converted back exactly by :func:`text_path`. Bytes that are not UTF-8 appear as ``\\xe9``
    escapes (as :func:`display_path` shows them) and a backslash is doubled; a UTF-8 name without
    a backslash is itself."""
    return os.fsencode(path).replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


_ESCAPE = re.compile(rb"\\(\\|x[0-9a-fA-F]{2})")


def text_path(text: str) -> str:
    """The file name that :func:`path_text` turned into ``text``."""
    if "\\" not in text:
        return text
    raw = _ESCAPE.sub(lambda m: b"\\" if m.group(1) == b"\\" else bytes([int(m.group(1)[1:], 16)]),
                      text.encode("utf-8", "surrogateescape"))
    return os.fsdecode(raw)
