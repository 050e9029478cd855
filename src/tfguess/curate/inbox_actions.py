"""The inbox's actions and their journal: label an image (a copy into ``data/<label>/`` that never
overwrites), mark it "none of these", accept the model's confident guesses, undo. Each action is
a row of ``TF_FILES/inbox-journal.csv`` (:class:`InboxJournal`); an undo deletes the copy it
made only when its content is still the one copied, and is journalled too.

:class:`InboxActions` is a part of :class:`tfguess.curate.inbox.Inbox`: it works on the inbox's
state (``lock``, ``journal``, ``digest``, ``feats``, the labelled set, the scores) and calls its
``pending``, ``retrain`` and ``_score``.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tfguess.core.errors import TfguessError
from tfguess.core.fsutil import display_path
from tfguess.data.dataset import label_name_problem
from tfguess.guess.journal import claim_name

JOURNAL_FILENAME = "inbox-journal.csv"
FIELDS = ["id", "time", "action", "source", "sha256", "destination", "label", "undoes"]
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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_label(name: str) -> str:
    """``name`` when it can be a label folder; else :class:`InboxError` saying why."""
    why = label_name_problem(name) if name else "it is empty"
    if why is None and (name.startswith(".") or "/" in name or "\\" in name or name in ("..",)):
        why = "it starts with '.' or holds a slash"
    if why is None and len(name.encode("utf-8", "surrogateescape")) > 100:
        why = "it is longer than 100 bytes"
    if why:
        raise InboxError(f"{name!r} cannot be a label: {why}. Use one line of plain text, "
                         "e.g. 'red_fox'")
    return name


def copy_no_overwrite(src: Path, folder: Path, name: str | None = None) -> Path:
    """Copy ``src`` into ``folder`` as ``name`` (default: its own) or ``<stem>-N<ext>`` when that
    is taken. The bytes go to a hidden temporary file first, then a hard link gives the final
    name (it fails rather than replace a file), so a name never holds half a copy."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    stem, ext = os.path.splitext(name or src.name)
    tmp = folder / f".tfguess-inbox.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(src, "rb") as inp, open(tmp, "xb") as out:
        shutil.copyfileobj(inp, out)
    try:
        return claim_name(tmp, folder, stem, ext)
    finally:
        tmp.unlink(missing_ok=True)


class InboxJournal:
    """``TF_FILES/inbox-journal.csv``: one row an action, appended and fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> list[Action]:
        if not self.path.exists():
            return []
        with open(self.path, newline="", encoding="utf-8", errors="surrogateescape") as f:
            return [Action(**{**row, "id": int(row["id"]),
                              "undoes": int(row["undoes"]) if row.get("undoes") else None})
                    for row in csv.DictReader(f)]

    def append(self, **fields) -> Action:
        rows = self.read()
        action = Action(id=max((a.id for a in rows), default=0) + 1, time=_now(), **fields)
        new = not self.path.exists()
        with open(self.path, "a", newline="", encoding="utf-8", errors="surrogateescape") as f:
            writer = csv.DictWriter(f, FIELDS)
            if new:
                writer.writeheader()
            writer.writerow({k: ("" if v is None else v) for k, v in dataclasses.asdict(action).items()})
            f.flush()
            os.fsync(f.fileno())
        return action

    def active(self) -> list[Action]:
        """Copies and "none of these" not undone, oldest first."""
        rows = self.read()
        undone = {a.undoes for a in rows if a.action == "undo"}
        return [a for a in rows if a.action != "undo" and a.id not in undone]


class InboxActions:
    """What a person does on the inbox page (a part of :class:`~tfguess.curate.inbox.Inbox`)."""

    def _source(self, name: str) -> Path:
        if name not in self.digest:
            raise InboxError(f"{name}: not an image of the inbox {display_path(self.dir)}")
        return self.dir / name

    def label(self, name: str, label: str) -> dict:
        """Copy the inbox image ``name`` into ``data/<label>/`` (a new label is created)."""
        label = check_label(label)
        with self.lock:
            src = self._source(name)
            if name not in self.pending():
                raise InboxError(f"{name} is labelled already: undo that first")
            from tfguess.guess.journal import file_digest

            if file_digest(src) != self.digest[name]:
                raise InboxError(f"{name} changed since the inbox was read: reload the page")
            dst = copy_no_overwrite(src, self.run.data / label)
            action = self.journal.append(action="copy", source=name, sha256=self.digest[name],
                                         destination=self.run.store(dst), label=label)
            return self._after(action)

    def none_of_these(self, name: str) -> dict:
        """Mark ``name`` as none of the labels: no copy, out of the list."""
        with self.lock:
            self._source(name)
            if name not in self.pending():
                raise InboxError(f"{name} is labelled already: undo that first")
            action = self.journal.append(action="none", source=name, sha256=self.digest[name],
                                         destination="", label=NONE_LABEL)
            return self._after(action)

    def _after(self, action: Action) -> dict:
        """Bookkeeping after an action: the labelled set, the counter, an automatic re-train."""
        if action.action == "copy":
            if action.label not in self.labels:
                self._load_labelled()
            else:
                i = self.labels.index(action.label)
                self.lab_x = (np.concatenate([self.lab_x, self.feats[action.source][None]])
                              if len(self.lab_x) else self.feats[action.source][None].copy())
                self.lab_y = np.append(self.lab_y, i)
            self.since_retrain += 1
        retrained = False
        if self.auto_every and self.since_retrain >= self.auto_every and len(self.trainable_labels()) >= 2:
            self.retrain()
            retrained = True
        else:
            self._score()
        return {**dataclasses.asdict(action), "retrained": retrained}

    def undo(self, action_id: int | None = None) -> dict:
        """Undo action ``action_id`` (default: the last one not undone). A copy is deleted only
        when its content is still the copied one."""
        from tfguess.guess.journal import file_digest

        with self.lock:
            live = self.journal.active()
            if not live:
                raise InboxError("nothing to undo")
            target = live[-1] if action_id is None else next((a for a in live if a.id == action_id), None)
            if target is None:
                raise InboxError(f"action {action_id} does not exist or was undone already")
            if target.action == "copy":
                copy = self.run.resolve(target.destination)
                if copy.is_file() and file_digest(copy) != target.sha256:
                    raise InboxError(f"{copy} was changed since it was copied: left as it is "
                                     "(move it away by hand)")
                copy.unlink(missing_ok=True)
            action = self.journal.append(action="undo", source=target.source, sha256=target.sha256,
                                         destination=target.destination, label=target.label,
                                         undoes=target.id)
            self._load_labelled()
            if target.action == "copy":
                self.since_retrain = max(0, self.since_retrain - 1)
            self._score()
            return dataclasses.asdict(action)

    def accept(self, label: str, min_score: float) -> list[dict]:
        """Label every pending image the model gives ``label`` with a score >= ``min_score``."""
        with self.lock:
            if label not in self.head_labels:
                raise InboxError(f"unknown label {label!r}: one of {', '.join(self.head_labels)}")
            j = self.head_labels.index(label)
            names = [n for n, p in zip(self.pool_names, self.pool_probs)
                     if p.argmax() == j and p[j] >= min_score]
            auto, self.auto_every = self.auto_every, 0
            try:
                done = [self.label(n, label) for n in names]
            finally:
                self.auto_every = auto
            if auto and self.since_retrain >= auto:
                self.retrain()
            return done
