"""Fixing the data set from the review page: move an image to another label, or take it out.

Every change is a move inside TF_FILES (images are never deleted nor overwritten): a relabelled
image goes to ``<image_dir>/<label>/``, a taken-out one to ``TF_FILES/removed/<label>/``, under
its own name or, when that is taken, ``<stem>-N<ext>``. Each change is one row of
``TF_FILES/relabel-journal.csv`` and can be undone (the undo is journalled too).

Paths in the journal and in :class:`Change` are text that is always valid Unicode
(:func:`fsutil.path_text`: bytes of a name that are not UTF-8 as ``\\xNN``, a backslash doubled),
so they can go into JSON and a web page as they are; a path given as that text (a ``str``) is
turned back into the exact name, a :class:`~pathlib.Path` is taken as it is.

Changes are serialised across editors and processes: every editor of one TF_FILES takes the
same lock (a lock keyed by the folder in this process, and the lock file
``TF_FILES/.tfguess-review.lock``), so a server that makes an editor per request needs nothing more.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from tfguess.core.errors import TfguessError, describe_os_error
from tfguess.core.fsutil import display_path, is_inside, path_text, text_path
from tfguess.core.locks import folder_lock
from tfguess.core.runfolder import RELABEL_JOURNAL_FILENAME as JOURNAL_FILENAME
from tfguess.core.runfolder import REMOVED_DIRNAME

EDIT_LOCK_FILENAME = ".tfguess-review.lock"
FIELDS = ["id", "time", "action", "source", "destination", "from_label", "to_label", "undoes"]


class RelabelError(TfguessError, ValueError):
    """A change that cannot be made; the message says why."""


@dataclass
class Change:
    id: int
    time: str
    action: str          # move | remove | undo
    source: str          # paths relative to TF_FILES when inside it, else absolute
    destination: str
    from_label: str
    to_label: str        # the new label; "" when taken out of the data set
    undoes: int | None = None


def _read_changes(text: str) -> list[Change]:
    """The journal's rows, line by line: a row damaged by hand is left out and costs no other
    (a stray quote does not swallow the rows after it); a row spans lines only where a quoted
    file name holds line breaks."""
    lines = text.replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or next(csv.reader([lines[0]]), None) != FIELDS:
        return []
    changes, i = [], 1
    while i < len(lines):
        for span in range(1, min(4, len(lines) - i) + 1):
            try:
                rows = list(csv.reader(io.StringIO("\n".join(lines[i:i + span]) + "\n",
                                                   newline=""), strict=True))
            except csv.Error:
                continue
            change = _change(dict(zip(FIELDS, rows[0]))) if (
                len(rows) == 1 and len(rows[0]) == len(FIELDS)) else None
            if change is not None:
                changes.append(change)
                i += span
                break
        else:
            i += 1
    return changes


def _change(row: dict) -> Change | None:
    """A journal row as a Change; None for a row damaged by hand (it is left out, the others
    still count)."""
    try:
        if None in row or any(row.get(k) is None for k in FIELDS):
            return None
        return Change(**{**row, "id": int(row["id"]),
                         "undoes": int(row["undoes"]) if row["undoes"] else None})
    except (TypeError, ValueError):
        return None


def read_journal(tf_files: str | Path) -> list[Change]:
    """The changes of ``TF_FILES/relabel-journal.csv``, oldest first (none without one)."""
    path = Path(tf_files) / JOURNAL_FILENAME
    if not path.exists():
        return []
    return _read_changes(path.read_bytes().decode("utf-8", "surrogateescape"))


def last_change_id(tf_files: str | Path) -> int:
    """The id of the newest change of the journal (0 when none): a report records it, so that
    the review page knows which changes came after the data the report is about."""
    return max((c.id for c in read_journal(tf_files)), default=0)


def _free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or ``folder/<stem>-N<ext>`` when taken: a path that does not exist yet."""
    stem, ext = os.path.splitext(name)
    n = 0
    while True:
        candidate = folder / (name if n == 0 else f"{stem}-{n}{ext}")
        if not os.path.lexists(candidate):
            return candidate
        n += 1


def _move_no_overwrite(src: Path, folder: Path, name: str | None = None) -> Path:
    """Move ``src`` into ``folder`` as ``name`` (default: its own) or, when taken, a free
    variant of it; never replaces a file."""
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        target = _free_name(folder, name or src.name)
        try:
            os.link(src, target)  # fails when target appeared meanwhile: never overwrites
        except FileExistsError:
            continue
        except OSError:  # no hard links here (another file system): exclusive create + copy
            import shutil

            try:
                with open(target, "xb") as out, open(src, "rb") as inp:
                    shutil.copyfileobj(inp, out)
            except FileExistsError:
                continue
            shutil.copystat(src, target)
        src.unlink()
        return target


class DataSetEditor:
    """Moves images of one TF_FILES' data set and keeps the journal; one change at a time across
    threads, editors and processes."""

    def __init__(self, tf_files: str | Path, image_dir: str | Path, labels: list[str]) -> None:
        self.tf_files = Path(tf_files).resolve()
        self.image_dir = Path(image_dir).resolve()
        self.labels = list(labels)
        self.removed_dir = self.tf_files / REMOVED_DIRNAME
        self.journal_path = self.tf_files / JOURNAL_FILENAME

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """The lock of this TF_FILES' changes (see the module docstring)."""
        try:
            with folder_lock(self.tf_files, "review page change", name=EDIT_LOCK_FILENAME,
                             log=lambda _: None):
                yield
        except OSError as e:
            raise RelabelError(describe_os_error(e)) from None

    # ---- paths

    def _rel(self, path: Path) -> str:
        """``path`` relative to TF_FILES when inside it, as text (:func:`fsutil.path_text`)."""
        try:
            return path_text(path.relative_to(self.tf_files).as_posix())
        except ValueError:
            return path_text(path)

    def _abs(self, path: str | Path) -> Path:
        """The absolute path of ``path``: text as :meth:`_rel` writes it, or a Path."""
        p = path if isinstance(path, Path) else Path(text_path(path))
        if "\0" in str(p):  # no file name holds one: the OS would refuse it (ValueError)
            shown = display_path(p).replace("\0", "\\x00")
            raise RelabelError(f"{shown}: no such file (a file name cannot hold a NUL byte)")
        return p if p.is_absolute() else self.tf_files / p

    def label_of(self, path: Path) -> str:
        """The label folder an image of the data set is in."""
        return path.relative_to(self.image_dir).parts[0]

    def check_image(self, path: str | Path) -> Path:
        """``path`` resolved, when it is an existing image file of the data set; else RelabelError."""
        p = Path(os.path.abspath(self._abs(path)))
        shown = display_path(p)
        if p.is_symlink() or not is_inside(p.resolve(), self.image_dir):
            raise RelabelError(f"{shown}: not an image of the data set {display_path(self.image_dir)}")
        if not p.is_file():
            raise RelabelError(f"{shown}: no such file (moved or deleted since the report was made)")
        if len(p.relative_to(self.image_dir).parts) < 2:
            raise RelabelError(f"{shown}: not inside a label folder of {display_path(self.image_dir)}")
        return p

    # ---- journal

    def journal(self) -> list[Change]:
        return read_journal(self.tf_files)

    def _append(self, change: Change) -> None:
        new = not self.journal_path.exists()
        with open(self.journal_path, "a", newline="", encoding="utf-8",
                  errors="surrogateescape") as f:
            writer = csv.DictWriter(f, FIELDS)
            if new:
                writer.writeheader()
            writer.writerow({k: ("" if v is None else v) for k, v in asdict(change).items()})
            f.flush()
            os.fsync(f.fileno())

    def _record(self, action: str, src: Path, dst: Path, from_label: str, to_label: str,
                undoes: int | None = None) -> Change:
        changes = self.journal()
        change = Change(id=max((c.id for c in changes), default=0) + 1,
                        time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        action=action, source=self._rel(src), destination=self._rel(dst),
                        from_label=from_label, to_label=to_label, undoes=undoes)
        self._append(change)
        return change

    def active(self) -> list[Change]:
        """Moves and take-outs not undone, oldest first."""
        changes = self.journal()
        undone = {c.undoes for c in changes if c.action == "undo"}
        return [c for c in changes if c.action != "undo" and c.id not in undone]

    def journal_rows(self, seen: int | None = None, since: str | None = None) -> list[dict]:
        """The journal as the review page shows it, oldest first: each change's fields and
        ``undone`` (an undo of it follows), ``undoable`` (still in effect, and its image not moved
        again since: :meth:`undo` takes it) and ``pending`` (it changed the data set after the
        report's data, and no later change cancels it: a move or take-out still in effect, or
        the undo of a change the report saw). The report saw the changes up to id ``seen``
        (:func:`last_change_id` when it was made), or, for a report that does not say, those
        before its time ``since``; without either (no report), every change in effect is
        pending."""
        changes = self.journal()

        def after(c: Change) -> bool:
            return c.id > seen if seen is not None else c.time >= since

        by_id = {c.id: c for c in changes}
        undone = {c.undoes for c in changes if c.action == "undo"}
        in_effect = [c for c in changes if c.action != "undo" and c.id not in undone]
        last_move_from: dict[str, int] = {}   # path -> the newest change in effect moving it
        for c in in_effect:
            last_move_from[c.source] = max(c.id, last_move_from.get(c.source, 0))
        rows = []
        for c in changes:
            active = c.action != "undo" and c.id not in undone
            if seen is None and since is None:
                pending = active
            elif c.action != "undo":
                pending = active and after(c)
            else:
                target = by_id.get(c.undoes)
                pending = after(c) and target is not None and not after(target)
            rows.append({**asdict(c), "undone": c.id in undone, "pending": pending,
                         "undoable": active and last_move_from.get(c.destination, 0) < c.id})
        return rows

    def current_path(self, original: str | Path) -> Path:
        """Where an image that was at ``original`` is now, following the journal (undos too)."""
        path = self._rel(self._abs(original))
        for c in self.journal():
            if c.source == path:
                path = c.destination
        return self._abs(path)

    # ---- changes

    def move(self, path: str | Path, label: str) -> Change:
        """Move an image of the data set into the folder of another label."""
        if label not in self.labels:
            raise RelabelError(f"unknown label {label!r}: one of {', '.join(self.labels)}")
        with self._lock():
            src = self.check_image(path)
            old = self.label_of(src)
            if old == label:
                raise RelabelError(f"{display_path(src.name)} is already labelled {label}")
            dst = _move_no_overwrite(src, self.image_dir / label)
            return self._record("move", src, dst, old, label)

    def remove(self, path: str | Path) -> Change:
        """Take an image out of the data set: moved to ``TF_FILES/removed/<label>/``."""
        with self._lock():
            src = self.check_image(path)
            old = self.label_of(src)
            dst = _move_no_overwrite(src, self.removed_dir / old)
            return self._record("remove", src, dst, old, "")

    def undo(self, change_id: int) -> Change:
        """Put the image of change ``change_id`` back where it was (a free name if that is taken)."""
        with self._lock():
            target = next((c for c in self.active() if c.id == change_id), None)
            if target is None:
                raise RelabelError(f"change {change_id} does not exist or was undone already")
            later = [c for c in self.active() if c.id > change_id and c.source == target.destination]
            if later:
                raise RelabelError(f"undo change {later[-1].id} first (it moved the same image again)")
            now = self._abs(target.destination)
            if not now.is_file():
                raise RelabelError(f"{display_path(now)}: no longer there, cannot undo change "
                                   f"{change_id}")
            original = self._abs(target.source)
            back = _move_no_overwrite(now, original.parent, original.name)
            return self._record("undo", now, back, target.to_label, target.from_label,
                                undoes=change_id)
