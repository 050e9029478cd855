"""The inbox's journal, ``TF_FILES/inbox-journal.csv``: one row an action (a copy into
``data/<label>/``, "none of these", an undo), appended and fsynced, never rewritten (but for
adding the columns of a newer version to an older journal, atomically).

A row that cannot be written leaves the file as it was (a torn row is cut off again) and raises
:class:`InboxError` naming the file and the fix; the caller undoes what the row was to record, so
an action is its row and its effect, or neither. Each row a person gave a label by also holds the
model's guess shown at that moment (``guess``, ``guess_score``): the page's figure of how often
the model is right (:func:`tfguess.curate.active.guess_figures`).

Writers hold the lock of TF_FILES' changes (:mod:`tfguess.curate.inbox_actions`), so ids stay
unique across the servers and processes writing into one TF_FILES.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import io
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tfguess.core.errors import TfguessError, describe_os_error
from tfguess.core.fsutil import atomic_write

JOURNAL_FILENAME = "inbox-journal.csv"
FIELDS = ["id", "time", "action", "source", "sha256", "destination", "label", "undoes",
          "guess", "guess_score"]
NONE_LABEL = ""                        # the journal's label of "none of these"


class InboxError(TfguessError, ValueError):
    """An inbox action that cannot be done; the message says why and what to do."""


@dataclass
class Action:
    id: int
    time: str
    action: str          # copy | none | undo
    source: str          # path relative to DIR
    sha256: str
    destination: str     # copy: path relative to TF_FILES; else ""
    label: str
    undoes: int | None = None
    guess: str = ""      # the model's guess shown when a person labelled it ("" : none shown)
    guess_score: str = ""

    def guessed(self) -> tuple[bool, float] | None:
        """``(right, score)`` of the model's guess when a person labelled this photo, or None."""
        if self.action != "copy" or not self.guess:
            return None
        try:
            return self.guess == self.label, float(self.guess_score)
        except ValueError:
            return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _cannot_write(path: Path, e: OSError) -> InboxError:
    """The error of a row that could not be written: the file, the OS's reason, the fix."""
    fix = (f": make it writable (e.g. chmod u+w {path}), then do it again"
           if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else "")
    return InboxError(f"cannot write the inbox journal {describe_os_error(e)}; nothing was "
                      f"changed{fix}")


class InboxJournal:
    """``TF_FILES/inbox-journal.csv``: one row an action, appended and fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> list[Action]:
        """Every row, oldest first; an unreadable or damaged journal is an :class:`InboxError`
        naming the file and the line."""
        try:
            with open(self.path, newline="", encoding="utf-8", errors="surrogateescape") as f:
                rows = list(csv.DictReader(f))
        except FileNotFoundError:
            return []
        except OSError as e:
            raise InboxError(f"cannot read the inbox journal: {describe_os_error(e)}") from None
        names = [f.name for f in dataclasses.fields(Action)]
        out = []
        for line, row in enumerate(rows, 2):
            try:
                values = {k: (row.get(k) or "") for k in names}
                values["id"] = int(values["id"])
                values["undoes"] = int(values["undoes"]) if values["undoes"] else None
                out.append(Action(**values))
            except (ValueError, TypeError):
                raise InboxError(f"{self.path} line {line} is damaged: mend or delete that line "
                                 "(a text editor), or move the file away") from None
        return out

    def check_writable(self) -> None:
        """Raises :class:`InboxError` (naming the file and the fix) when a row cannot be added."""
        try:
            with open(self.path, "a", encoding="utf-8"):
                pass
        except OSError as e:
            raise _cannot_write(self.path, e) from None

    def _header(self) -> list[str]:
        """The columns of the file (:data:`FIELDS` for a new or empty one); an older journal
        gets the newer columns first (rewritten atomically, every row kept)."""
        try:
            with open(self.path, newline="", encoding="utf-8", errors="surrogateescape") as f:
                header = next(csv.reader(f), None)
        except FileNotFoundError:
            return FIELDS
        if not header:
            return FIELDS
        missing = [k for k in FIELDS if k not in header]
        if missing:
            rows = [dataclasses.asdict(a) for a in self.read()]
            buf = io.StringIO()
            writer = csv.DictWriter(buf, header + missing, extrasaction="ignore")
            writer.writeheader()
            writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
            atomic_write(self.path, buf.getvalue(), fsync=True)
            header = header + missing
        return header

    def append(self, **fields) -> Action:
        """Add one row (the next id); on failure the file is left as it was and
        :class:`InboxError` names it and the fix."""
        try:
            header = self._header()
            rows = self.read()
            action = Action(id=max((a.id for a in rows), default=0) + 1, time=_now(), **fields)
            row = {k: ("" if v is None else v) for k, v in dataclasses.asdict(action).items()}
            self._write(header, row)
        except OSError as e:
            raise _cannot_write(self.path, e) from None
        return action

    def _write(self, header: list[str], row: dict) -> None:
        """One row with one ``write`` (the header first into an empty file), fsynced; a write
        that fails part-way is cut off again, so no torn row is left behind."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, header, extrasaction="ignore")
        writer.writerow(row)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            text = buf.getvalue()
            if size == 0:
                head = io.StringIO()
                csv.writer(head).writerow(header)
                text = head.getvalue() + text
            data = text.encode("utf-8", "surrogateescape")
            try:
                if os.write(fd, data) != len(data):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
                os.fsync(fd)
            except OSError:
                try:
                    os.ftruncate(fd, size)
                except OSError:
                    pass
                raise
        finally:
            os.close(fd)

    def active(self) -> list[Action]:
        """Copies and "none of these" not undone, oldest first."""
        rows = self.read()
        undone = {a.undoes for a in rows if a.action == "undo"}
        return [a for a in rows if a.action != "undo" and a.id not in undone]

    def signature(self) -> tuple[int, int, int] | None:
        """What changes when another process writes a row: ``(size, mtime, inode)``."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_size, st.st_mtime_ns, st.st_ino
