"""The inbox: a folder of unlabelled photos sorted by a person with the model's help.

Every image of the inbox folder (DIR) is classified from cached features (the same cache and
extractor as ``train``: ``TF_FILES/bottlenecks``), listed by uncertainty, and labelled with one
action: a labelled image is **copied** into ``TF_FILES/data/<label>/`` (DIR is only read, never
modified), under its own name or ``<stem>-N<ext>`` when that is taken (never overwriting). Each
action is a row of ``TF_FILES/inbox-journal.csv`` and can be undone: the undo deletes the copy
it made (only when its content is still the one copied) and is journalled too; an action and its
row are done together or not at all, under the review page's lock of TF_FILES, so two servers on
one TF_FILES stay consistent (:mod:`.inbox_actions`). DIR is read again when the page reloads
(:meth:`Inbox.refresh`: photos added, deleted or replaced; rows another server wrote). A re-train
(:func:`tfguess.curate.active.refit`: seconds, no TensorFlow) re-orders the rest. "Finish" trains
TF_FILES' model with the settings of its last run and sorts DIR with ``guess_dir`` (renamed
copies, manifest, resume).

Start from nothing: :func:`create_label` and :func:`add_photo` fill ``data/<label>/``;
:func:`train_from_nothing` trains once every label has :data:`MIN_PHOTOS_PER_LABEL` photos.

This module holds the inbox's state (its images, features, scores, the labelled set), the warm
re-train, the page's figures and "Finish"; the actions are in :mod:`.inbox_actions`, their
journal in :mod:`.inbox_journal`, the order and suggestions in :mod:`.inbox_order`, starting
from nothing in :mod:`.inbox_start`. Every name is importable from here.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tfguess.core.config import TrainConfig
from tfguess.core.errors import TfguessError
from tfguess.core.fsutil import display_path, is_inside
from tfguess.core.runfolder import RunFolder
from tfguess.curate import active
from tfguess.curate.inbox_actions import (
    FIELDS,
    JOURNAL_FILENAME,
    NONE_LABEL,
    Action,
    InboxActions,
    InboxError,
    InboxJournal,
    check_label,
    copy_no_overwrite,
)
from tfguess.curate.inbox_order import TOP_K, InboxOrder, write_suggestions
from tfguess.curate.inbox_start import (
    MIN_PHOTOS_PER_LABEL,
    add_photo,
    create_label,
    photo_counts,
    ready_to_train,
    train_from_nothing,
)
from tfguess.data.dataset import walk

SORTED_DIRNAME = "inbox-sorted"        # "Finish": the guess-dir layout of DIR

__all__ = [
    "FIELDS", "JOURNAL_FILENAME", "MIN_PHOTOS_PER_LABEL", "NONE_LABEL", "SORTED_DIRNAME", "TOP_K",
    "Action", "Inbox", "InboxError", "InboxJournal", "add_photo", "check_label",
    "copy_no_overwrite", "create_label", "photo_counts", "ready_to_train", "run_config",
    "train_from_nothing", "write_suggestions",
]


def _backbone_source(run: RunFolder, config: TrainConfig):
    """``(BackboneRef, build)`` of TF_FILES' model, or of its settings when it has none yet."""
    from tfguess.engine.features import BackboneRef

    if run.model.exists():
        from tfguess.engine.model import load_classifier, read_meta

        ref = BackboneRef.from_meta(read_meta(run.model)["backbone"])
        return ref, lambda: load_classifier(run.model).backbone
    from tfguess.training.backbone_ref import backbone_ref, resolve_backbone

    spec = resolve_backbone(config)
    # No photos to choose by yet: --resize auto is the backbone's own resize (backbone_ref).
    ref = backbone_ref(spec, spec.weights_id(config.weights), config.resize)
    return ref, lambda: spec.build(weights=config.weights)


def run_config(run: RunFolder) -> TrainConfig:
    """The settings of TF_FILES' last run (the quick recipe before the first)."""
    try:
        return TrainConfig.from_dict(run.read_summary().get("config", {}))
    except TfguessError:
        return TrainConfig(quick=True)


class Inbox(InboxActions, InboxOrder):
    """The inbox of one TF_FILES: its images, features, scores, journal; safe across threads.
    Its actions (label, none of these, undo, accept) are :class:`InboxActions`', its order and
    suggestions :class:`InboxOrder`'s."""

    def __init__(self, tf_files: str | Path, inbox_dir: str | Path, *, auto_every: int = 20,
                 strategy: str = active.DEFAULT_STRATEGY, log: Callable[[str], None] = print,
                 progress: bool = False) -> None:
        self.run = RunFolder.at(tf_files)
        self.dir = Path(inbox_dir).expanduser().resolve()
        if not self.dir.is_dir():
            raise InboxError(f"inbox folder not found: {display_path(self.dir)}: check the path")
        if is_inside(self.dir, self.run.root) or is_inside(self.run.root, self.dir):
            raise InboxError(f"the inbox {display_path(self.dir)} and TF_FILES {self.run.root} must "
                             "not be inside one another: choose a folder outside TF_FILES")
        if strategy not in active.STRATEGIES:
            raise InboxError(f"unknown strategy {strategy!r}: one of {', '.join(active.STRATEGIES)}")
        self.auto_every, self.strategy, self.log, self.progress = auto_every, strategy, log, progress
        self.journal = InboxJournal(self.run.root / JOURNAL_FILENAME)
        self.lock = threading.RLock()
        self.since_retrain = 0
        self.last: active.Refit | None = None
        self.mine: list[int] = []           # ids of the actions of this page (what "undo" takes)
        self.journal_seen = None            # the journal's signature when the list was made
        self.load()

    # ---- features

    def _features(self, paths: list[Path]) -> tuple[list[str], dict[str, np.ndarray], dict[str, str]]:
        """(digests, features by digest, skipped reason by digest) of ``paths`` from the cache."""
        from tfguess.engine.bottlenecks import BottleneckCache, compute_features
        from tfguess.guess.journal import file_digest
        from tfguess.training.backbone_ref import LazyExtractor

        digests = []
        for p in paths:
            try:
                digests.append(file_digest(p))
            except OSError as e:
                digests.append(f"unreadable:{p}:{e.strerror}")
        items = [(p, d) for p, d in zip(paths, digests) if not d.startswith("unreadable:")]
        cache = BottleneckCache(self.run.bottlenecks, self.ref.cache_key)
        extractor = LazyExtractor(self.ref, self.build, self.config.engine, self.log)
        result = compute_features(items, cache, extractor, self.ref.input_size, self.ref.resize,
                                  progress=self.progress)
        skipped = dict(result.skipped)
        for d in digests:
            if d.startswith("unreadable:"):
                skipped[d] = "cannot read: " + d.rsplit(":", 1)[1]
        return digests, result.features, skipped

    def load(self) -> None:
        """(Re)read everything: labels, the labelled photos, DIR, the model's scores."""
        with self.lock:
            self.config = run_config(self.run)
            self.ref, self.build = _backbone_source(self.run, self.config)
            self.names, self.digest, self.feats, self.skipped, self.seen = [], {}, {}, {}, {}
            self._read_dir()
            self._load_labelled()
            # The inbox's own head (what "re-train" fits) when there are labelled photos; else the
            # model's, when its labels are the folders'.
            self.head, self.head_labels, self.last = None, [], None
            if len(self.trainable_labels()) >= 2:
                self.retrain()
                return
            if self.run.model.exists():
                from tfguess.engine.model import read_head, read_meta

                labels = list(read_meta(self.run.model)["labels"])
                if labels == self.labels:
                    self.head, self.head_labels = read_head(self.run.model), labels
            self._score()

    def _read_dir(self) -> bool:
        """Read DIR's images that are new or changed since it was last read (by size, time and
        inode), forget the ones that are gone; whether anything changed."""
        images, seen = walk(self.dir, recursive=True).images, {}
        for p in images:
            try:
                st = p.stat()
            except OSError:  # gone since the walk
                continue
            seen[p.relative_to(self.dir).as_posix()] = (st.st_size, st.st_mtime_ns, st.st_ino)
        changed = [n for n, sig in seen.items() if self.seen.get(n) != sig]
        gone = [n for n in self.seen if n not in seen]
        if not changed and not gone:
            return False
        digests, feats, skipped = self._features([self.dir / n for n in changed])
        for n in changed + gone:
            for table in (self.digest, self.feats, self.skipped):
                table.pop(n, None)
        for n, d in zip(changed, digests):
            self.digest[n] = d
            if d in feats:
                self.feats[n] = feats[d]
            elif d in skipped:
                self.skipped[n] = skipped[d]
        self.names, self.seen = list(seen), seen
        return True

    def refresh(self) -> bool:
        """Notice what changed since the inbox was read: photos added to DIR, deleted or replaced
        (read again, the new content scored), rows another server wrote into the journal. Cheap
        when nothing changed (a walk of DIR); whether the list changed."""
        with self.lock:
            if self._read_dir() or self.journal.signature() != self.journal_seen:
                self._score()
                return True
            return False

    def _load_labelled(self) -> None:
        data = self.run.data
        self.labels = sorted(e.name for e in os.scandir(data) if e.is_dir()
                             and not e.name.startswith(".")) if data.is_dir() else []
        paths, ys = [], []
        for i, label in enumerate(self.labels):
            found = walk(data / label, recursive=True).images
            paths += found
            ys += [i] * len(found)
        digests, feats, _ = self._features(paths)
        keep = [j for j, d in enumerate(digests) if d in feats]
        self.lab_digests = {digests[j] for j in keep}
        self.lab_x = (np.stack([feats[digests[j]] for j in keep]).astype(np.float32) if keep
                      else np.zeros((0, 1), np.float32))
        self.lab_y = np.array([ys[j] for j in keep], np.int64)

    def trainable_labels(self) -> list[str]:
        counts = np.bincount(self.lab_y, minlength=len(self.labels))
        return [label for label, n in zip(self.labels, counts) if n > 0]

    # ---- scores

    def pending(self) -> list[str]:
        """The inbox images not labelled yet (nor marked "none of these"), usable ones only."""
        done = {(a.source, a.sha256) for a in self.journal.active()}
        return [n for n in self.names if n in self.feats and (n, self.digest[n]) not in done]

    def _score(self) -> None:
        self.journal_seen = self.journal.signature()
        names = self.pending()
        self.pool_names = names
        if self.head is None or not names:
            self.pool_probs = np.zeros((len(names), len(self.head_labels)))
            return
        x = np.stack([self.feats[n] for n in names]).astype(np.float32)
        self.pool_probs = self.head(x)

    def retrain(self) -> active.Refit:
        """Re-fit the head on every labelled photo of ``data/`` and re-score the inbox."""
        with self.lock:
            self._load_labelled()
            present = self.trainable_labels()
            if len(present) < 2:
                raise InboxError("re-training needs photos of at least 2 labels: label some first")
            names = self.pending()
            pool = (np.stack([self.feats[n] for n in names]).astype(np.float32) if names
                    else np.zeros((0, self.lab_x.shape[1]), np.float32))
            result = active.refit(self.lab_x, self.lab_y, len(self.labels), pool, self.config,
                                  cv=False)
            self.head, self.head_labels, self.last = result.head, list(self.labels), result
            self.since_retrain = 0
            self._score()
            return result

    # ---- figures

    def stats(self) -> dict:
        """The page's counts and figures. ``guesses``: how often the model's guess, shown when a
        person labelled a photo, was that label, and the accuracy it is estimated to have on the
        photos left (:func:`tfguess.curate.active.guess_figures`)."""
        with self.lock:
            rows = self.journal.active()
            counts = np.bincount(self.lab_y, minlength=len(self.labels)) if self.labels else []
            last = self.last
            guesses = [g for g in (a.guessed() for a in rows) if g is not None]
            figures = active.guess_figures(guesses, self.pool_probs)
            return {
                "inbox": len(self.names), "pending": len(self.pool_names),
                "unusable": len(self.skipped),
                "labelled": sum(1 for a in rows if a.action == "copy"),
                "none": sum(1 for a in rows if a.action == "none"),
                "labels": list(self.labels), "model_labels": list(self.head_labels),
                "per_label": {lb: int(n) for lb, n in zip(self.labels, counts)},
                "guesses": figures,
                "remaining_mistakes": figures["remaining_mistakes"],
                "retrain_seconds": None if last is None else round(last.seconds, 2),
                "since_retrain": self.since_retrain, "auto_every": self.auto_every,
                "strategy": self.strategy, "model": self.run.model.exists(),
            }

    # ---- finish

    def model_is_current(self) -> bool:
        """Whether TF_FILES' model was trained on exactly the labelled photos of ``data/`` (then
        "Finish" does not train again, and a second sort resumes the first)."""
        if not self.run.model.exists():
            return False
        try:
            summary = self.run.read_summary()
        except TfguessError:
            return False
        trained = {digest for rows in summary.get("splits", {}).values() for _, _, digest in rows}
        return summary.get("labels") == self.trainable_labels() and trained == self.lab_digests

    def finish(self, dst: str | Path | None = None, *, log: Callable[[str], None] | None = None,
               progress: bool = False):
        """Train TF_FILES' model with the settings of its last run (features cached) and write its
        report, then sort DIR into ``dst`` (default ``TF_FILES/inbox-sorted``) with ``guess_dir``:
        renamed copies and the manifest, resuming an earlier sort."""
        from tfguess.curate.retrain import train_with_report
        from tfguess.guess.predict import guess_dir

        log = log or self.log
        dst = Path(dst) if dst else self.run.root / SORTED_DIRNAME
        with self.lock:
            if self.model_is_current():
                log("The model was trained on the photos of data/ as they are: not trained again")
            else:
                train_with_report(self.run.root, dataclasses.replace(self.config, eval_dir=None),
                                  progress=progress, log=log)
            result = guess_dir(self.run.model, self.dir, dst, recursive=True, progress=progress, log=log)
            self.load()
            return result
