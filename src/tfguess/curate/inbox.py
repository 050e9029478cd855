"""The inbox: a folder of unlabelled photos sorted by a person with the model's help.

Every image of the inbox folder (DIR) is classified from cached features (the same cache and
extractor as ``train``: ``TF_FILES/bottlenecks``), listed by uncertainty, and labelled with one
action: a labelled image is **copied** into ``TF_FILES/data/<label>/`` (DIR is only read, never
modified), under its own name or ``<stem>-N<ext>`` when that is taken (never overwriting). Each
action is a row of ``TF_FILES/inbox-journal.csv`` and can be undone: the undo deletes the copy
it made (only when its content is still the one copied) and is journalled too. A re-train
(:func:`tfguess.curate.active.refit`: seconds, no TensorFlow) re-orders the rest. "Finish" trains
TF_FILES' model with the settings of its last run and sorts DIR with ``guess_dir`` (renamed
copies, manifest, resume).

Start from nothing: :func:`create_label` and :func:`add_photo` fill ``data/<label>/``;
:func:`train_from_nothing` trains once every label has :data:`MIN_PHOTOS_PER_LABEL` photos.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tfguess.core.config import TrainConfig
from tfguess.core.errors import TfguessError
from tfguess.core.fsutil import display_path
from tfguess.core.runfolder import RunFolder
from tfguess.curate import active
from tfguess.data.dataset import label_name_problem, walk
from tfguess.guess.journal import claim_name

JOURNAL_FILENAME = "inbox-journal.csv"
SORTED_DIRNAME = "inbox-sorted"        # "Finish": the guess-dir layout of DIR
FIELDS = ["id", "time", "action", "source", "sha256", "destination", "label", "undoes"]
MIN_PHOTOS_PER_LABEL = 5               # start from nothing: photos each label needs to train
NONE_LABEL = ""                        # the journal's label of "none of these"
TOP_K = 3


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


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


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


def _backbone_source(run: RunFolder, config: TrainConfig):
    """``(BackboneRef, build)`` of TF_FILES' model, or of its settings when it has none yet."""
    from tfguess.engine.features import BackboneRef

    if run.model.exists():
        from tfguess.engine.model import load_classifier, read_meta

        ref = BackboneRef.from_meta(read_meta(run.model)["backbone"])
        return ref, lambda: load_classifier(run.model).backbone
    from tfguess.training.train import resolve_backbone

    spec = resolve_backbone(config)
    resize = getattr(config, "resize", None) or spec.resize
    ref = BackboneRef(spec.name, spec.weights_id(config.weights), spec.input_size,
                      spec.resize if resize == "auto" else resize)
    return ref, lambda: spec.build(weights=config.weights)


def run_config(run: RunFolder) -> TrainConfig:
    """The settings of TF_FILES' last run (the defaults before the first)."""
    try:
        return TrainConfig.from_dict(run.read_summary().get("config", {}))
    except TfguessError:
        return TrainConfig()


class Inbox:
    """The inbox of one TF_FILES: its images, features, scores, journal; safe across threads."""

    def __init__(self, tf_files: str | Path, inbox_dir: str | Path, *, auto_every: int = 20,
                 strategy: str = active.DEFAULT_STRATEGY, log: Callable[[str], None] = print,
                 progress: bool = False) -> None:
        self.run = RunFolder.at(tf_files)
        self.dir = Path(inbox_dir).expanduser().resolve()
        if not self.dir.is_dir():
            raise InboxError(f"inbox folder not found: {display_path(self.dir)}: check the path")
        if _inside(self.dir, self.run.root) or _inside(self.run.root, self.dir):
            raise InboxError(f"the inbox {display_path(self.dir)} and TF_FILES {self.run.root} must "
                             "not be inside one another: choose a folder outside TF_FILES")
        if strategy not in active.STRATEGIES:
            raise InboxError(f"unknown strategy {strategy!r}: one of {', '.join(active.STRATEGIES)}")
        self.auto_every, self.strategy, self.log, self.progress = auto_every, strategy, log, progress
        self.journal = InboxJournal(self.run.root / JOURNAL_FILENAME)
        self.lock = threading.RLock()
        self.since_retrain = 0
        self.last: active.Refit | None = None
        self.load()

    # ---- features

    def _features(self, paths: list[Path]) -> tuple[list[str], dict[str, np.ndarray], dict[str, str]]:
        """(digests, features by digest, skipped reason by digest) of ``paths`` from the cache."""
        from tfguess.engine.bottlenecks import BottleneckCache, compute_features
        from tfguess.engine.features import make_extractor
        from tfguess.guess.journal import file_digest

        digests = []
        for p in paths:
            try:
                digests.append(file_digest(p))
            except OSError as e:
                digests.append(f"unreadable:{p}:{e.strerror}")
        items = [(p, d) for p, d in zip(paths, digests) if not d.startswith("unreadable:")]
        cache = BottleneckCache(self.run.bottlenecks, self.ref.cache_key)
        built: dict = {}

        def extractor():
            if "e" not in built:
                built["e"] = make_extractor(self.ref, self.build, self.config.engine, self.log)
            return built["e"]

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
            self.images = walk(self.dir, recursive=True).images
            digests, feats, skipped = self._features(self.images)
            self.names = [p.relative_to(self.dir).as_posix() for p in self.images]
            self.digest = dict(zip(self.names, digests))
            self.skipped = {n: skipped[d] for n, d in self.digest.items() if d in skipped}
            self.feats = {n: feats[d] for n, d in self.digest.items() if d in feats}
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
        done = {a.source for a in self.journal.active()}
        return [n for n in self.names if n in self.feats and n not in done]

    def _score(self) -> None:
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
            result = active.refit(self.lab_x, self.lab_y, len(self.labels), pool, self.config)
            self.head, self.head_labels, self.last = result.head, list(self.labels), result
            self.since_retrain = 0
            self._score()
            return result

    def items(self, by: str = "uncertainty", seed: int = 0) -> list[dict]:
        """The pending images in the order asked: ``uncertainty`` (the default strategy), margin,
        entropy, label, score, random."""
        with self.lock:
            probs = self.pool_probs
            if len(probs) and probs.shape[1]:
                if by == "uncertainty":
                    order = self._uncertainty_order(len(probs))
                else:
                    order = active.order(probs, by, self.head_labels, seed)
            else:
                order = np.arange(len(self.pool_names))
            margins = active.margins(probs) if len(probs) and probs.shape[1] else None
            out = []
            for i in order:
                row = {"name": self.pool_names[i], "top": []}
                if margins is not None:
                    top = np.argsort(-probs[i], kind="stable")[:TOP_K]
                    row["top"] = [[self.head_labels[j], round(float(probs[i, j]), 5)] for j in top]
                    row["margin"] = round(float(margins[i]), 5)
                out.append(row)
            return out

    def _uncertainty_order(self, n: int) -> np.ndarray:
        """The default strategy's next batch first, then the rest by margin."""
        first = active.select(self.strategy, self.pool_probs, min(n, max(self.auto_every, 1)),
                              self._pool_x(), self.lab_x)
        rest = [i for i in active.order(self.pool_probs, "margin") if i not in set(first.tolist())]
        return np.concatenate([first, np.array(rest, np.int64)]).astype(np.int64)

    def _pool_x(self) -> np.ndarray:
        return (np.stack([self.feats[n] for n in self.pool_names]).astype(np.float32)
                if self.pool_names else np.zeros((0, 1), np.float32))

    def suggest(self, n: int = 50, strategy: str | None = None, seed: int = 0) -> list[dict]:
        """The ``n`` most informative pending images (``strategy``: margin, entropy,
        kcenter-margin, random), best first, with their scores."""
        strategy = strategy or self.strategy
        if strategy not in active.STRATEGIES:
            raise InboxError(f"unknown strategy {strategy!r}: one of {', '.join(active.STRATEGIES)}")
        with self.lock:
            if self.head is None:
                raise InboxError(f"no model to rank the inbox with: label photos of at least 2 "
                                 f"labels in {self.run.data} or train first: tfguess train {self.run.root}")
            probs = self.pool_probs
            pick = active.select(strategy, probs, n, self._pool_x(), self.lab_x, seed=seed)
            margins, ent = active.margins(probs), active.entropy(probs)
            rows = []
            for rank, i in enumerate(pick, 1):
                top = np.argsort(-probs[i], kind="stable")[:TOP_K]
                rows.append({"rank": rank, "path": str(self.dir / self.pool_names[i]),
                             "predicted": self.head_labels[top[0]],
                             "score": f"{probs[i, top[0]]:.5f}", "margin": f"{margins[i]:.5f}",
                             "entropy": f"{ent[i]:.5f}",
                             "top_k": ";".join(f"{self.head_labels[j]}:{probs[i, j]:.5f}" for j in top)})
            return rows

    # ---- actions

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

    # ---- figures

    def stats(self) -> dict:
        with self.lock:
            rows = self.journal.active()
            counts = np.bincount(self.lab_y, minlength=len(self.labels)) if self.labels else []
            last = self.last
            remaining = active.remaining_mistakes(self.pool_probs,
                                                  last.calibration if last else 1.0)
            return {
                "inbox": len(self.names), "pending": len(self.pool_names),
                "unusable": len(self.skipped),
                "labelled": sum(1 for a in rows if a.action == "copy"),
                "none": sum(1 for a in rows if a.action == "none"),
                "labels": list(self.labels), "model_labels": list(self.head_labels),
                "per_label": {lb: int(n) for lb, n in zip(self.labels, counts)},
                "cv_accuracy": None if last is None else last.cv_accuracy,
                "remaining_mistakes": round(remaining, 1),
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
        """Train TF_FILES' model with the settings of its last run (features cached), then sort
        DIR into ``dst`` (default ``TF_FILES/inbox-sorted``) with ``guess_dir``: renamed copies and
        the manifest, resuming an earlier sort."""
        from tfguess.guess.predict import guess_dir
        from tfguess.training.train import train

        log = log or self.log
        dst = Path(dst) if dst else self.run.root / SORTED_DIRNAME
        with self.lock:
            if self.model_is_current():
                log("The model was trained on the photos of data/ as they are: not trained again")
            else:
                train(self.run.root, dataclasses.replace(self.config, report=False, eval_dir=None),
                      progress=progress, log=log)
            result = guess_dir(self.run.model, self.dir, dst, recursive=True, progress=progress, log=log)
            self.load()
            return result


# ---- start from nothing

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
    name = os.path.basename(filename.replace("\\", "/")) or "photo.jpg"
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
    """Train an ordinary TF_FILES from the photos given on the page (default settings)."""
    from tfguess.training.train import train

    missing = ready_to_train(tf_files)
    if missing:
        raise InboxError(f"not ready to train: {missing}")
    return train(tf_files, TrainConfig(report=False), progress=progress, log=log)


def write_suggestions(rows: list[dict], out: str | Path | None) -> str:
    """The suggestions as CSV text; written to ``out`` when given (never over an existing file)."""
    import io

    buf = io.StringIO()
    fields = ["rank", "path", "predicted", "score", "margin", "entropy", "top_k"]
    writer = csv.DictWriter(buf, fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    text = buf.getvalue()
    if out is not None:
        out = Path(out)
        try:
            with open(out, "x", encoding="utf-8", newline="") as f:
                f.write(text)
        except FileExistsError:
            raise InboxError(f"{out} exists already: choose another --out (nothing is overwritten)") from None
    return text
