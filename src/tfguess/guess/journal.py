"""guess-dir's destination folder as a journal: whatever stops a run, what is there is whole.

Each copy is written under a hidden temporary name in its destination folder, then given its
final name with a hard link (which fails rather than replace a file already there), then its
manifest row is written and flushed, and only then is the temporary name removed. The manifest
is fsynced every :data:`FSYNC_EVERY_ROWS` rows or :data:`FSYNC_EVERY_SECONDS` seconds and at
the end. So after a crash, ``kill -9``, Ctrl-C or a full disk:

* every file under a final name is a whole copy;
* a copy that got its final name but not its row still has its temporary name beside it (same
  inode): the next run removes both, and copies that source again;
* a temporary file of a process that is gone is removed by the next run;
* a last manifest line cut short (power loss, full disk) is dropped by the next run;
* a damaged line (a hand edit) costs that line alone, and the message gives its number; when the
  copy it recorded is still in the folder with the digest the line gives, its row is recorded
  again, so the source is not copied twice.

One run at a time writes into a folder (:func:`locks.folder_lock`, held by :class:`Journal`).

A re-run into the same folder resumes: a source recorded with the same content digest and the
same model, whose copy is still there, is not copied again.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from tfguess.core.fsutil import atomic_write, display_path, process_alive
from tfguess.core.locks import folder_lock

MANIFEST_NAME = "manifest.csv"
HEADER = ["source", "destination", "label", "score", "top_k", "sha256", "model"]
TEMP_PREFIX = ".tfguess-copy."
TEMP_SUFFIX = ".tmp"
FSYNC_EVERY_ROWS = 32
FSYNC_EVERY_SECONDS = 1.0
_CHUNK = 1 << 20
_ENCODING = {"encoding": "utf-8", "errors": "surrogateescape"}  # file names that are not UTF-8

# O_BINARY: on Windows a file descriptor is in text mode (each \n written as \r\n) without it.
_BINARY = getattr(os, "O_BINARY", 0)


def file_digest(path: str | os.PathLike[str], fd: int | None = None) -> str:
    """sha256 hex of a file's content, read in chunks (never whole)."""
    h = hashlib.sha256()
    own = fd is None
    if own:
        fd = os.open(path, os.O_RDONLY)
    try:
        while chunk := os.read(fd, _CHUNK):
            h.update(chunk)
    finally:
        if own:
            os.close(fd)
    return h.hexdigest()


@dataclass(frozen=True)
class Entry:
    source: str
    destination: str
    label: str
    score: str
    top_k: str
    sha256: str
    model: str

    def row(self) -> list[str]:
        return [self.source, self.destination, self.label, self.score, self.top_k, self.sha256,
                self.model]


def _header_line() -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(HEADER)
    return buf.getvalue()


def _is_ours(path: Path) -> bool:
    """True when ``path`` is absent, empty, or a manifest with this version's header."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_header_line()))
    except FileNotFoundError:
        return True
    except IsADirectoryError:
        return False
    text = head.decode("utf-8", "replace")
    return text == _header_line() or (_header_line().startswith(text) and path.stat().st_size
                                      == len(head))


def choose_manifest(dst: Path) -> Path:
    """``dst/manifest.csv``, or ``manifest-1.csv``, ``manifest-2.csv``... when a file already
    there is not a tfguess manifest of this version (it is never appended to)."""
    n = 0
    while True:
        path = dst / (MANIFEST_NAME if n == 0 else f"manifest-{n}.csv")
        if _is_ours(path):
            return path
        n += 1


MAX_ROW_LINES = 8   # a row spans several lines only when a file name holds line breaks
_SHA = re.compile(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")


@dataclass
class ManifestRead:
    """A manifest as read: its whole rows, and what could not be read (file line numbers)."""
    entries: list[Entry]
    damaged: list[tuple[int, str]]   # (line number, text) of each line dropped
    torn_tail: bool = False          # an incomplete last line (an interrupted run) was dropped

    @property
    def note(self) -> str | None:
        parts = ["dropped an incomplete last line (an interrupted run)"] if self.torn_tail else []
        if self.damaged:
            numbers = [n for n, _ in self.damaged]
            shown = ", ".join(map(str, numbers[:10])) + (
                f" and {len(numbers) - 10} more" if len(numbers) > 10 else "")
            parts.append(f"dropped {len(numbers)} damaged line(s): line {shown}")
        return "; ".join(parts) or None


def _parse_row(text: str) -> list[str] | None:
    """The one CSV record ``text`` holds, or None (a quote left open, two records, garbage)."""
    if '"' not in text and "\r" not in text and "\n" not in text and "\0" not in text:
        return text.split(",")  # what the csv module makes of it, 3x faster (most rows)
    try:
        rows = list(csv.reader(io.StringIO(text + "\n", newline=""), strict=True))
    except csv.Error:
        return None
    return rows[0] if len(rows) == 1 else None


def _plausible(row: list[str]) -> bool:
    """A row of several lines must look like one of ours end to end (digest, model identity)."""
    return bool(_SHA.fullmatch(row[5])) and row[6].startswith("sha256:") and "\n" not in row[6]


def read_manifest(path: Path) -> ManifestRead:
    """The rows of a manifest, line by line: a damaged line costs that line alone (a stray
    quote does not swallow the rows after it); a row spans several lines only where a quoted
    file name holds line breaks and the whole row is well-formed."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return ManifestRead([], [])
    text = raw.decode(**_ENCODING)
    torn = bool(text) and not text.endswith("\n")
    if torn:
        text = text[: text.rfind("\n") + 1]
    if not text.startswith(_header_line()):
        return ManifestRead([], [], torn)
    lines = text[len(_header_line()):].split("\n")[:-1]
    entries, damaged, i = [], [], 0
    while i < len(lines):
        for span in range(1, min(MAX_ROW_LINES, len(lines) - i) + 1):
            row = _parse_row("\n".join(lines[i:i + span]))
            if row is not None and len(row) == len(HEADER) and (span == 1 or _plausible(row)):
                entries.append(Entry(*row))
                i += span
                break
        else:
            damaged.append((i + 2, lines[i]))  # file line numbers: the header is line 1
            i += 1
    return ManifestRead(entries, damaged, torn)


def _salvage(line: str, unrecorded: dict[str, Path]) -> Entry | None:
    """The row a damaged line was, when its copy is still in DST with the digest the line gives
    and its source can be read from it: the copy's name appears in the line, and the fields
    around it are read leniently."""
    shas = _SHA.findall(line)
    if not shas:
        return None
    sha = shas[-1]
    for name in sorted(unrecorded, key=len, reverse=True):
        at = line.find(name)
        if at < 0:
            continue
        try:
            if file_digest(unrecorded[name]) != sha:
                continue
        except OSError:
            continue
        source = _lenient(line[:at].rstrip('"').rstrip(","))
        middle = line[at + len(name):line.rfind(sha)].strip('",')
        label, score, top_k = ((_parse_row(middle) or []) + ["", "", ""])[:3]
        model = _lenient(line[line.rfind(sha) + len(sha):].lstrip('",'))
        if model and os.path.isfile(source):  # else the source cannot be told from the line
            return Entry(source, name, label, score, top_k, sha, model)
    return None


def _lenient(field_text: str) -> str:
    row = _parse_row(field_text)
    return row[0] if row is not None and len(row) == 1 else field_text.replace('"', "")


def _temp_pid(name: str) -> int | None:
    if not (name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)):
        return None
    pid = name[len(TEMP_PREFIX):-len(TEMP_SUFFIX)].split(".", 1)[0]
    return int(pid) if pid.isdigit() else None


class Journal:
    """The manifest of one destination folder, open for appending (see the module docstring)."""

    def __init__(self, dst: Path, log: Callable[[str], None] = print, wait: bool = True) -> None:
        """Open ``dst``'s manifest, holding ``dst``'s lock until :meth:`close`: a second run into
        the same folder waits for this one (or, with ``wait=False``, stops with a message)."""
        self._lock = ExitStack()
        self._locked = self._lock.enter_context(folder_lock(
            dst, "guess-dir", wait=wait, log=log,
            hint="leave out --no-wait to wait for it")) is not None
        try:
            self._open(dst, log)
        except BaseException:
            self._lock.close()
            raise

    def _open(self, dst: Path, log: Callable[[str], None]) -> None:
        self.dst = dst
        self.log = log
        self.manifest = choose_manifest(dst)
        if self.manifest.name != MANIFEST_NAME:
            log(f"note: {display_path(dst / MANIFEST_NAME)} is not a manifest of this tfguess "
                f"version (its header differs): left as it is; this run records into "
                f"{display_path(self.manifest)}")
        read = read_manifest(self.manifest)
        self.entries = read.entries
        if read.note:
            recovered = self._salvage(read.damaged)
            atomic_write(self.manifest, lambda p: self._write_all(p), fsync=True)
            log(f"note: repaired {display_path(self.manifest)}: {read.note}"
                + (f"; {len(recovered)} of them recorded again from their copies in DST (same "
                   f"digest; not copied twice): line {', '.join(map(str, recovered))}"
                   if recovered else ""))
        self.destinations = {Path(e.destination) for e in self.entries}
        self._index: dict[tuple[str, str, str], list[Entry]] = {}
        for e in self.entries:
            self._index.setdefault((e.source, e.sha256, e.model), []).append(e)
        self.sources = {e.source for e in self.entries}
        self.cleaned = self._clean_temp_files()
        if self.cleaned:
            log(f"note: removed {self.cleaned} unfinished copy(ies) of an interrupted run")
        fresh = not self.manifest.exists() or self.manifest.stat().st_size == 0
        self._file = open(self.manifest, "w" if fresh else "a", newline="", **_ENCODING)
        self._writer = csv.writer(self._file, lineterminator="\n")
        if fresh:
            self._writer.writerow(HEADER)
            self._sync()
        self._unsynced = 0
        self._synced_at = time.monotonic()
        self._n = 0
        self._folders: set[Path] = {dst}

    def _salvage(self, damaged: list[tuple[int, str]]) -> list[int]:
        """Take back the rows of damaged lines whose copies are still in DST, unrecorded, with the
        digest the line gives; returns their line numbers."""
        if not damaged:
            return []
        recorded = {e.destination for e in self.entries}
        folders = [self.dst] + [p for p in self.dst.iterdir() if p.is_dir() and not p.is_symlink()]
        unrecorded = {str(p): p for folder in folders for p in folder.iterdir()
                      if str(p) not in recorded and not p.name.startswith(".") and p.is_file()
                      and not p.is_symlink()}
        recovered = []
        for number, line in damaged:
            entry = _salvage(line, unrecorded)
            if entry is not None:
                self.entries.append(entry)
                unrecorded.pop(entry.destination)
                recovered.append(number)
        return recovered

    def _write_all(self, path: Path) -> None:
        with open(path, "w", newline="", **_ENCODING) as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(HEADER)
            w.writerows(e.row() for e in self.entries)

    def _clean_temp_files(self) -> int:
        """Remove the temporary copies of runs that are gone (and a final name that never got its
        manifest row: it shares the temporary file's inode). Holding the folder's lock, every
        other process's copy is one of a run that is gone: the lock passes on as soon as its
        holder dies, before its parent may have noticed (a zombie still answers to its pid)."""
        removed = 0
        folders = [self.dst] + [p for p in self.dst.iterdir() if p.is_dir() and not p.is_symlink()]
        for folder in folders:
            temps = [p for p in folder.iterdir() if _temp_pid(p.name) is not None]
            for tmp in temps:
                pid = _temp_pid(tmp.name)
                if pid == os.getpid() or (not self._locked and process_alive(pid)):
                    continue
                st = tmp.stat()
                if st.st_nlink > 1:
                    for other in folder.iterdir():
                        if other != tmp and other not in self.destinations and \
                                _same_inode(other, st):
                            other.unlink()
                tmp.unlink()
                removed += 1
        return removed

    def done(self, source: str, sha256: str, model: str) -> bool:
        """Whether this source, with this content, was copied for this model (copy still there)."""
        return any(os.path.lexists(e.destination)
                   for e in self._index.get((source, sha256, model), []))

    def copy(self, source: Path, fd: int, folder: Path, stem: str, ext: str,
             fields: Callable[[Path, str], Entry]) -> Entry:
        """Copy the open file ``fd`` (of ``source``) into ``folder`` as ``stem+ext`` (or
        ``stem-N+ext``), never replacing anything; record ``fields(final_path, sha256)``.
        A Ctrl-C waits until the copy is whole and recorded (or gone)."""
        with _InterruptAfter():
            return self._copy(source, fd, folder, stem, ext, fields)

    def _copy(self, source: Path, fd: int, folder: Path, stem: str, ext: str,
              fields: Callable[[Path, str], Entry]) -> Entry:
        folder.mkdir(exist_ok=True)
        self._folders.add(folder)
        self._n += 1
        tmp = folder / f"{TEMP_PREFIX}{os.getpid()}.{self._n}{TEMP_SUFFIX}"
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _BINARY, 0o644)
        try:
            h = hashlib.sha256()
            try:
                while chunk := os.read(fd, _CHUNK):
                    h.update(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(out, view):]
            except OSError as e:
                if e.filename is None:  # name the folder being written (or the source read)
                    raise OSError(e.errno, e.strerror, str(folder)) from None
                raise
            finally:
                os.close(out)
            try:
                shutil.copystat(source, tmp)
            except OSError:
                pass
            target = claim_name(tmp, folder, stem, ext)
            entry = fields(target, h.hexdigest())
            try:
                self._writer.writerow(entry.row())
                self._file.flush()
            except OSError as e:  # no row: the copy goes too (a torn row is dropped next run)
                target.unlink(missing_ok=True)
                if e.filename is None:
                    raise OSError(e.errno, e.strerror, str(self.manifest)) from None
                raise
            self._unsynced += 1
            if (self._unsynced >= FSYNC_EVERY_ROWS
                    or time.monotonic() - self._synced_at >= FSYNC_EVERY_SECONDS):
                self._sync()
        finally:
            tmp.unlink(missing_ok=True)
        self.entries.append(entry)
        self.destinations.add(Path(entry.destination))
        self.sources.add(entry.source)
        return entry

    def _sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._unsynced = 0
        self._synced_at = time.monotonic()

    def close(self) -> None:
        try:
            if self._file.closed:
                return
            try:
                self._sync()
                for folder in self._folders:
                    _fsync_dir(folder)
            finally:
                self._file.close()
        finally:
            self._lock.close()


def _same_inode(path: Path, st: os.stat_result) -> bool:
    try:
        other = path.lstat()
    except OSError:
        return False
    return (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


class _InterruptAfter:
    """Holds back a Ctrl-C (SIGINT) until the block is done, then raises it: between creating a
    temporary file and recording its copy, an interrupt would leave a stray file or a copy with
    no manifest row. Only the main thread can set signal handlers; elsewhere this does nothing."""

    def __enter__(self) -> _InterruptAfter:
        self.held, self.active = None, threading.current_thread() is threading.main_thread()
        if self.active:
            self.previous = signal.signal(signal.SIGINT, self._hold)
        return self

    def _hold(self, signum, frame) -> None:
        self.held = (signum, frame)

    def __exit__(self, *exc) -> None:
        if not self.active:
            return
        signal.signal(signal.SIGINT, self.previous if self.previous is not None else signal.SIG_DFL)
        if self.held and callable(self.previous):
            self.previous(*self.held)  # Python's default handler raises KeyboardInterrupt


def claim_name(tmp: Path, folder: Path, stem: str, ext: str) -> Path:
    """Give ``tmp`` the first free name of ``stem+ext``, ``stem-1+ext``...: a hard link fails
    when the name is taken, so nothing is replaced, even by a run beside this one."""
    n = 0
    while True:
        target = folder / (f"{stem}{ext}" if n == 0 else f"{stem}-{n}{ext}")
        try:
            os.link(tmp, target)
            return target
        except FileExistsError:
            n += 1
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK,
                               errno.ENOSYS):
                raise
            break
    while True:  # no hard links on this file system: claim the name, then move the copy onto it
        target = folder / (f"{stem}{ext}" if n == 0 else f"{stem}-{n}{ext}")
        try:
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            n += 1
            continue
        os.replace(tmp, target)
        return target
