"""The inbox's actions: label an image (a copy into ``data/<label>/`` that never overwrites), mark
it "none of these", accept the model's confident guesses, undo. Each action is a row of
``TF_FILES/inbox-journal.csv`` (:mod:`.inbox_journal`) and its effect, or neither: a copy whose
row cannot be written is taken back, an undo whose row cannot be written puts the copy back. An
undo deletes the copy it made only when its content is still the one copied, and is journalled too.

Every action holds the lock of TF_FILES' changes, the review page's (``folder_lock`` on
``TF_FILES/.tfguess-review.lock``: across threads and processes), and checks the journal again
inside it: two servers on one TF_FILES (or two tabs, or the review page) stay consistent, one
photo is copied once, and journal ids stay unique. A photo labelled elsewhere is refused here
with "labelled already" and leaves the list on the page's next reload.

:class:`InboxActions` is a part of :class:`tfguess.curate.inbox.Inbox`: it works on the inbox's
state (``lock``, ``journal``, ``digest``, ``feats``, the labelled set, the scores) and calls its
``pending``, ``retrain``, ``refresh`` and ``_score``.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from tfguess.core.errors import describe_os_error
from tfguess.core.fsutil import display_path
from tfguess.core.locks import folder_lock
from tfguess.curate.inbox_journal import (
    FIELDS,
    JOURNAL_FILENAME,
    NONE_LABEL,
    Action,
    InboxError,
    InboxJournal,
)
from tfguess.curate.relabel import EDIT_LOCK_FILENAME
from tfguess.data.dataset import label_name_problem
from tfguess.guess.journal import claim_name

__all__ = ["FIELDS", "JOURNAL_FILENAME", "NONE_LABEL", "Action", "InboxActions", "InboxError",
           "InboxJournal", "check_label", "copy_no_overwrite"]


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


class InboxActions:
    """What a person does on the inbox page (a part of :class:`~tfguess.curate.inbox.Inbox`)."""

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """The lock of this TF_FILES' changes, the review page's (see the module docstring)."""
        try:
            with folder_lock(self.run.root, "inbox page change", name=EDIT_LOCK_FILENAME,
                             log=lambda _: None):
                yield
        except OSError as e:
            raise InboxError(describe_os_error(e)) from None

    def _source(self, name: str) -> Path:
        if name not in self.digest:
            raise InboxError(f"{name}: not an image of the inbox {display_path(self.dir)}")
        return self.dir / name

    def _check_pending(self, name: str) -> None:
        """Refuses ``name`` when it is labelled already (the journal read again: by this page, or
        by another server on this TF_FILES)."""
        if name not in self.pending():
            raise InboxError(f"{name} is labelled already (here or on another page of this "
                             "TF_FILES): reload the page, or undo that first")

    def _guess(self, name: str) -> tuple[str, str]:
        """The model's guess for ``name`` now (what the page shows): ``(label, score)``."""
        if self.head is None or name not in self.pool_names or not len(self.head_labels):
            return "", ""
        p = self.pool_probs[self.pool_names.index(name)]
        j = int(p.argmax())
        return self.head_labels[j], f"{float(p[j]):.5f}"

    def _copy(self, name: str, src: Path, folder: Path) -> Path:
        """A copy of ``src`` in ``folder`` whose content is the one shown (else taken back)."""
        from tfguess.guess.journal import file_digest

        try:
            dst = copy_no_overwrite(src, folder)
        except FileNotFoundError:
            if src.exists():
                raise
            raise InboxError(f"{name} is no longer in the inbox folder {display_path(self.dir)}: "
                             "reload the page (it leaves the list)") from None
        if file_digest(dst) != self.digest[name]:
            dst.unlink(missing_ok=True)
            raise InboxError(f"{name} was replaced in the inbox folder since the page showed it: "
                             "reload the page to see it (it is read again), then label it")
        return dst

    def label(self, name: str, label: str, *, by_person: bool = True) -> dict:
        """Copy the inbox image ``name`` into ``data/<label>/`` (a new label is created), with its
        journal row (and the model's guess shown, when ``by_person``), or neither."""
        label = check_label(label)
        with self.lock:
            with self._writing():
                src = self._source(name)
                self._check_pending(name)
                guess, score = self._guess(name) if by_person else ("", "")
                self.journal.check_writable()
                dst = self._copy(name, src, self.run.data / label)
                try:
                    action = self.journal.append(action="copy", source=name,
                                                 sha256=self.digest[name],
                                                 destination=self.run.store(dst), label=label,
                                                 guess=guess, guess_score=score)
                except InboxError as e:
                    raise InboxError(f"{e}. {name} was not labelled"
                                     f"{_take_back(dst)}") from None
            self.mine.append(action.id)
            return self._after(action)

    def none_of_these(self, name: str) -> dict:
        """Mark ``name`` as none of the labels: no copy, out of the list."""
        with self.lock:
            with self._writing():
                self._source(name)
                self._check_pending(name)
                guess, score = self._guess(name)
                action = self.journal.append(action="none", source=name, sha256=self.digest[name],
                                             destination="", label=NONE_LABEL, guess=guess,
                                             guess_score=score)
            self.mine.append(action.id)
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

    def _undo_target(self, action_id: int | None) -> Action:
        """Action ``action_id``, or this page's last action not undone (else the journal's)."""
        live = self.journal.active()
        if not live:
            raise InboxError("nothing to undo")
        if action_id is None:
            own = [a for a in live if a.id in self.mine]
            return (own or live)[-1]
        target = next((a for a in live if a.id == action_id), None)
        if target is None:
            raise InboxError(f"action {action_id} does not exist or was undone already")
        return target

    def undo(self, action_id: int | None = None) -> dict:
        """Undo action ``action_id`` (default: this page's last one not undone). A copy is
        deleted only when its content is still the copied one; it is put back when the undo's
        row cannot be written."""
        from tfguess.guess.journal import file_digest

        with self.lock:
            with self._writing():
                target = self._undo_target(action_id)
                self.journal.check_writable()
                copy, aside = self.run.resolve(target.destination), None
                if target.action == "copy" and copy.is_file():
                    if file_digest(copy) != target.sha256:
                        raise InboxError(f"{copy} was changed since it was copied: left as it is "
                                         "(move it away by hand)")
                    aside = copy.with_name(f".tfguess-inbox-undo.{os.getpid()}."
                                           f"{threading.get_ident()}.tmp")
                    os.replace(copy, aside)
                try:
                    action = self.journal.append(action="undo", source=target.source,
                                                 sha256=target.sha256,
                                                 destination=target.destination,
                                                 label=target.label, undoes=target.id)
                except InboxError as e:
                    raise InboxError(f"{e}. Nothing was undone{_put_back(aside, copy)}") from None
                if aside is not None:
                    aside.unlink(missing_ok=True)
            self._load_labelled()
            if target.action == "copy":
                self.since_retrain = max(0, self.since_retrain - 1)
            self._score()
            return dataclasses.asdict(action)

    def accept(self, label: str, min_score: float) -> list[dict]:
        """Label every pending image the model gives ``label`` with a score >= ``min_score``
        (not counted in the figure of the model's guesses: no person looked at each)."""
        with self.lock:
            if label not in self.head_labels:
                raise InboxError(f"unknown label {label!r}: one of {', '.join(self.head_labels)}")
            j = self.head_labels.index(label)
            pending = set(self.pending())
            names = [n for n, p in zip(self.pool_names, self.pool_probs)
                     if p.argmax() == j and p[j] >= min_score and n in pending]
            auto, self.auto_every = self.auto_every, 0
            try:
                done = [self.label(n, label, by_person=False) for n in names]
            finally:
                self.auto_every = auto
            if auto and self.since_retrain >= auto:
                self.retrain()
            return done


def _take_back(dst: Path) -> str:
    """Removes the copy whose row could not be written; what the message adds."""
    try:
        dst.unlink(missing_ok=True)
        return " (its copy was taken back)"
    except OSError as e:
        return f"; its copy could not be removed ({describe_os_error(e)}): delete {dst} by hand"


def _put_back(aside: Path | None, copy: Path) -> str:
    """Puts an undone copy back under its name (never over another file); what the message adds."""
    if aside is None:
        return ""
    try:
        os.link(aside, copy)
        aside.unlink()
        return f" ({copy} is back)"
    except OSError as e:
        return f"; the copy is at {aside} ({describe_os_error(e)}): rename it to {copy.name}"
