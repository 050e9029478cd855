"""One run at a time writes into a folder: guess-dir's DST, train's TF_FILES, the review page's
changes.

:func:`folder_lock` is an advisory lock: ``flock`` on a hidden lock file in the folder (the kernel
releases it when its process ends, however it ends: a killed run's lock is never stale), and a
lock keyed by the resolved path for the threads of one process. A second run waits, saying
whom for, or stops with :class:`FolderBusyError`.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tfguess.core.errors import TfguessError
from tfguess.core.fsutil import display_path

LOCK_FILENAME = ".tfguess.lock"   # guess-dir's DST, train's TF_FILES (a hidden file: never scanned)
_WINDOWS_LOCK_OFFSET = 1 << 30     # msvcrt locks bytes: one far past the holder's pid line


class FolderBusyError(TfguessError):
    """Another run holds the folder's lock and the caller chose not to wait."""


@dataclass
class _Held:
    rlock: threading.RLock = field(default_factory=threading.RLock)
    depth: int = 0
    fd: int | None = None


_HELD: dict[Path, _Held] = {}
_HELD_GUARD = threading.Lock()


@contextmanager
def folder_lock(folder: str | Path, what: str, *, name: str = LOCK_FILENAME, wait: bool = True,
                log: Callable[[str], None] = print, hint: str = "") -> Iterator[Path | None]:
    """Hold the advisory lock ``folder/name`` for the block, so that one run at a time writes
    into ``folder``: across processes (``flock``, released by the kernel when its process ends
    however it ends, so the lock of a killed run is never stale) and across the threads of this
    process (a lock keyed by the resolved path, re-entrant in one thread).

    A second holder waits, saying once which run it waits for (``what`` and pid, as the holder
    wrote them into the lock file), or with ``wait=False`` raises :class:`FolderBusyError` naming
    that run (``hint``: what the message suggests). The lock file is removed on release. On a file
    system without locks the block runs unlocked, with a note, and gets None instead of the lock
    file's path. On Windows ``msvcrt`` locks a byte of the file instead of ``flock`` (released
    with its process too; polled while waiting).
    """
    folder = Path(folder).resolve()
    path = folder / name
    with _HELD_GUARD:
        held = _HELD.setdefault(path, _Held())
    if not held.rlock.acquire(blocking=False):
        if not wait:
            raise FolderBusyError(_busy(folder, what, os.getpid(), hint))
        held.rlock.acquire()
    try:
        if held.depth == 0:
            held.fd = _acquire(path, folder, what, wait, log, hint)
        held.depth += 1
        try:
            yield path if held.fd is not None else None
        finally:
            held.depth -= 1
            if held.depth == 0 and held.fd is not None:
                _release(path, held.fd)
                held.fd = None
    finally:
        held.rlock.release()


def _busy(folder: Path, what: str, pid: int | None, hint: str) -> str:
    who = f"pid {pid}" if pid else "pid unknown"
    return (f"another {what} is writing into {display_path(folder)} ({who})"
            + (f": {hint}" if hint else ""))


def _acquire(path: Path, folder: Path, what: str, wait: bool, log: Callable[[str], None],
             hint: str) -> int | None:
    told = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
        try:
            try:
                got = _try_lock(fd)
            except OSError as e:
                if e.errno not in _NO_LOCKS:
                    raise
                log(f"note: {display_path(folder)} is on a file system without file locks: "
                    f"another run writing into it at the same time is not kept out")
                os.close(fd)
                return None
            if not got:
                holder_what, pid = _holder(fd, what)
                if not wait:
                    raise FolderBusyError(_busy(folder, holder_what, pid, hint))
                if not told:
                    log(f"{_busy(folder, holder_what, pid, '')}; waiting — Ctrl-C to stop")
                    _flush()  # said before a wait of minutes, also into a pipe or a log file
                    told = True
                _lock(fd)
            # The holder removes the file before it lets go: a lock on a removed file is none.
            if not _same_file(fd, path):
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()} {what}\n".encode())
            return fd
        except BaseException:
            os.close(fd)
            raise


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass


def _holder(fd: int, what: str) -> tuple[str, int | None]:
    """What the lock's holder wrote into the file: ``(what, pid)`` (it writes just after it
    takes the lock, so an empty file is read again for a moment)."""
    for _ in range(20):
        os.lseek(fd, 0, os.SEEK_SET)
        words = os.read(fd, 200).decode("utf-8", "replace").split()
        if words and words[0].isdigit():
            return (" ".join(words[1:]) or what), int(words[0])
        time.sleep(0.01)
    return what, None


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _release(path: Path, fd: int) -> None:
    try:
        if _same_file(fd, path):
            path.unlink()
    except OSError:  # e.g. Windows, where an open file stays; the lock goes with the handle
        pass
    try:
        _unlock(fd)
    finally:
        os.close(fd)


_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}

if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EDEADLK):
                return False
            raise

    def _lock(fd: int) -> None:
        while not _try_lock(fd):
            time.sleep(0.25)

    def _unlock(fd: int) -> None:
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX)  # Ctrl-C interrupts the wait (KeyboardInterrupt)

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


@contextmanager
def run_folder_lock(folder: str | Path, what: str, *, create: bool = False, wait: bool = True,
                    log: Callable[[str], None] = print) -> Iterator[Path | None]:
    """:func:`folder_lock` on a run folder (TF_FILES), made first with ``create``. A folder that
    does not exist and is not to be made holds nothing to keep apart: the block runs without the
    lock (and says what is missing)."""
    folder = Path(folder).expanduser()
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    if not folder.is_dir():
        yield None
        return
    with folder_lock(folder, what, wait=wait, log=log,
                     hint="leave out --no-wait to wait for it") as path:
        yield path


def locked_run(what: str):
    """Decorator for ``fn(tf_files, config=None, ..., log=print)``: ``fn`` runs holding the lock
    of TF_FILES (made first when ``config.image_dir`` names the photos elsewhere), so that a second
    run on the same folder waits instead of interleaving its writes."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(tf_files, config=None, *args, **kwargs):
            create = bool(getattr(config, "image_dir", None))
            with run_folder_lock(tf_files, what, create=create, log=kwargs.get("log", print)):
                return fn(tf_files, config, *args, **kwargs)

        return wrapper

    return decorate
