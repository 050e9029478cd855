"""``guess`` and ``guess-dir``: classify images with a trained model, loaded once per command."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tfguess.core.config import GuessConfig, configure
from tfguess.core.errors import ConfigError, DatasetError
from tfguess.core.fsutil import display_path, is_inside
from tfguess.data.dataset import Walk, walk
from tfguess.data.images import FORMAT_EXTENSIONS, ImageError, open_regular, sniff
from tfguess.data.pipeline import iter_batches, iter_loaded
from tfguess.engine.runtime import TFLiteClassifier, auto_precision
from tfguess.guess.journal import Entry, Journal, file_digest

MANIFEST_FILENAME = "manifest.csv"  # see tfguess.guess.journal: another name when one is not ours
UNKNOWN_LABEL = "unknown"


@dataclass
class Prediction:
    path: Path
    top: list[tuple[str, float]] = field(default_factory=list)   # best first
    error: str | None = None

    @property
    def label(self) -> str | None:
        return self.top[0][0] if self.top else None

    @property
    def score(self) -> float | None:
        return self.top[0][1] if self.top else None


def guessing_engine(path: Path, meta: dict, ref, precision: str = "auto"):
    """The backbone ref that guessing runs for the float32 model at ``path``: with ``precision``
    ``auto``, the int8 engine the model carries (trained with ``--precision auto``) where the CPU
    has int8 dot-product instructions (docs/benchmarks.md, "Speed": its agreement with float32), else ``ref``.
    Local guessing and the Ray cluster's both choose here, so they give the same answers."""
    from tfguess.engine.model import install_engine

    calibration = meta["backbone"].get("guess_calibration")
    if precision != "auto" or not calibration or auto_precision()["precision"] != "int8":
        return ref
    int8 = dataclasses.replace(ref, precision="int8", calibration=calibration)
    return int8 if install_engine(path, int8) else ref


class Predictor:
    """Pixels -> class probabilities for one model, built once and reused for every image."""

    def __init__(self, labels: list[str], input_size: int, resize: str,
                 probabilities: Callable[[np.ndarray], np.ndarray], engine: str,
                 identity: str | Callable[[], str] = "") -> None:
        self.labels = labels
        self._identity = identity
        self.input_size = input_size
        self.resize = resize
        self.probabilities = probabilities
        self.engine = engine

    @property
    def identity(self) -> str:
        """The model file's content digest (guess-dir's resume key), computed when first asked:
        ``guess`` and ``serve`` never hash the file for it."""
        if callable(self._identity):
            self._identity = self._identity()
        return self._identity

    @classmethod
    def load(cls, model: str | Path, engine: str = "auto", log: Callable = print,
             tta: bool = False, precision: str = "auto") -> Predictor:
        """Load a tfguess model (the ``.keras`` file or its folder) or an exported ``.tflite``.

        A model whose backbone's TFLite twin is cached runs without importing TensorFlow: the
        head is read from the file and the engine from the cache.

        ``precision``: ``auto`` runs the int8 engine a float32 model carries where the CPU has
        int8 dot-product instructions (:func:`runtime.auto_precision`); ``float32`` never does.
        ``tta``: average in the prediction of the mirrored image (test-time augmentation);
        refused for a model trained with ``no_flip`` (mirroring changes the meaning there).
        """
        from tfguess.engine.features import BackboneRef, engine_name, make_extractor
        from tfguess.engine.model import (
            install_engine,
            load_classifier,
            read_head,
            read_meta,
            resolve_model_path,
        )

        path = resolve_model_path(model)
        if path.suffix.lower() == ".tflite":
            tfl = TFLiteClassifier(path)
            return cls(tfl.labels, tfl.input_size, tfl.resize, _with_tta(tfl, tta), "tflite-file",
                       lambda: model_identity(path, tta))
        meta = read_meta(path)
        if tta and meta.get("config", {}).get("no_flip"):
            raise ConfigError(f"{display_path(path)} was trained with --no-flip (mirroring changes "
                              "the meaning): guess without --tta")
        ref = BackboneRef.from_meta(meta["backbone"])
        head = read_head(path)
        if ref.precision != "float32" and engine != "keras":
            install_engine(path, ref)
        elif engine != "keras":
            ref = guessing_engine(path, meta, ref, precision)
        extractor = make_extractor(ref, lambda: load_classifier(path).backbone, engine, log)
        parts = [(head, extractor)] + _member_parts(path, meta, engine, log)

        def probabilities(pixels: np.ndarray) -> np.ndarray:
            if len(parts) == 1:
                return head(extractor(pixels))
            return np.mean([h(x(pixels)) for h, x in parts], axis=0)   # an ensemble

        return cls(list(meta["labels"]), ref.input_size, ref.resize, _with_tta(probabilities, tta),
                   " + ".join(engine_name(x) for _, x in parts), lambda: model_identity(path, tta))

    def predict(self, paths: list[Path], top_k: int = 0, batch_size: int = 32, workers: int = 0,
                progress: bool = False) -> Iterator[Prediction]:
        """Predictions in input order; unreadable files come back with ``error`` set."""
        k = top_k if top_k > 0 else len(self.labels)
        from tqdm.auto import tqdm

        bar = tqdm(total=len(paths), desc="classifying", unit="img", disable=not progress,
                   dynamic_ncols=True)
        for batch in iter_batches(iter_loaded(paths, self.input_size, self.resize, workers), batch_size):
            good = [b for b in batch if b.pixels is not None]
            probs = self.probabilities(np.stack([b.pixels for b in good])) if good else []
            by_index = {b.index: p for b, p in zip(good, probs)}
            for b in batch:
                if b.pixels is None:
                    yield Prediction(b.path, error=b.error)
                else:
                    p = by_index[b.index]
                    order = np.argsort(-p, kind="stable")[:k]
                    yield Prediction(b.path, [(self.labels[i], float(p[i])) for i in order])
            bar.update(len(batch))
        bar.close()


def _member_parts(path: Path, meta: dict, engine: str, log: Callable) -> list[tuple]:
    """``(head, extractor)`` of each other member of an ensemble model (none for one backbone):
    float32, like every fine-tuned model, each backbone's TFLite twin from the cache."""
    from tfguess.engine.features import BackboneRef, make_extractor
    from tfguess.engine.model import ensemble_members, load_classifier, member_file, member_head

    parts = []
    for member in ensemble_members(meta):
        ref = BackboneRef.from_meta(member["backbone"])
        parts.append((member_head(path, member), make_extractor(
            ref, lambda m=member: load_classifier(member_file(path, m)).backbone, engine, log)))
    return parts


def model_identity(path: Path, tta: bool = False) -> str:
    """What identifies the predictions in guess-dir's manifest (its resume key): the model file's
    content digest (and test-time flips)."""
    from tfguess.guess.journal import file_digest

    return "sha256:" + file_digest(path)[:16] + ("+tta" if tta else "")


def _with_tta(probabilities: Callable[[np.ndarray], np.ndarray], tta: bool):
    """``probabilities``, or the mean of it on the images and on their mirror images."""
    if not tta:
        return probabilities

    def averaged(pixels: np.ndarray) -> np.ndarray:
        both = probabilities(np.concatenate([pixels, pixels[:, :, ::-1]]))
        return (both[: len(pixels)] + both[len(pixels):]) / 2

    return averaged


def format_prediction(pred: Prediction) -> list[str]:
    """The classic ``label (score = 0.98765)`` lines."""
    if pred.error:
        return [f"error: {pred.path}: {pred.error}"]
    return [f"{label} (score = {score:.5f})" for label, score in pred.top]


def guess(model: str | Path, images: list[str | Path], config: GuessConfig | None = None, *,
          as_json: bool = False, out: Callable[[str], None] = print, **overrides) -> int:
    """Print the labels with scores for each image. Returns the number of images that failed.

    ``config``'s ``top_k`` (0: every label), ``engine`` and ``tta`` apply; keyword ``overrides``
    replace its fields (:func:`config.configure`). Without a config, every label is printed
    (``top_k=0``)."""
    config = configure(GuessConfig, config if config is not None else GuessConfig(top_k=0),
                       overrides)
    predictor = Predictor.load(model, config.engine, tta=config.tta)
    paths = [Path(p) for p in images]
    failed = 0
    results = []
    for pred in predictor.predict(paths, top_k=config.top_k):
        failed += pred.error is not None
        if as_json:
            results.append({"path": str(pred.path), "error": pred.error,
                            "predictions": [{"label": lb, "score": round(s, 6)} for lb, s in pred.top]})
            continue
        if len(paths) > 1:
            out(f"{pred.path}:")
        for line in format_prediction(pred):
            out(("  " if len(paths) > 1 else "") + line)
    if as_json:
        out(json.dumps(results if len(paths) > 1 else results[0], indent=2))
    return failed


@dataclass
class GuessDirResult:
    copied: list[dict]
    skipped: list[dict]
    manifest: Path
    seconds: float
    resumed: int = 0  # sources already copied by an earlier run (same content, same model)

    @property
    def images_per_second(self) -> float:
        n = len(self.copied) + len(self.skipped)
        return n / self.seconds if self.seconds else 0.0


def guess_dir(
    model: str | Path,
    src: str | Path,
    dst: str | Path,
    config: GuessConfig | None = None,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    predictor: Predictor | None = None,
    **overrides,
) -> GuessDirResult:
    """Copy every image of ``src`` into ``dst`` as ``<label>-<score>.<ext>``.

    ``config`` (default :class:`GuessConfig`'s defaults) says how; keyword ``overrides`` replace
    its fields (``guess_dir(m, s, d, recursive=True)``; an unknown name is a ConfigError).
    Sources are only read. Nothing in ``dst`` is ever overwritten: a name already taken gets a
    ``-N`` suffix. ``dst`` is a journal (:mod:`tfguess.guess.journal`): ``manifest.csv`` records source,
    destination, label, score, the top-k, the source's sha256 and the model's identity, a row
    with each copy, and whatever interrupts a run, every copy under a final name is whole and has
    its row. A re-run resumes: sources recorded with the same content and model are not copied
    again (``again`` copies them again, under new names). Below ``min_score`` the label is
    ``unknown`` (``_unknown`` when the model has a label of that name). An extensionless source's
    copy gets the extension of its format. ``predictor``: one already loaded (e.g. the Ray
    cluster's, :class:`distributed.RayPredictor`) instead of loading ``model``.

    One run at a time writes into ``dst`` (a lock file in it, held for the run): a second one
    waits for the first, saying so, or with ``wait=False`` stops with :class:`locks.FolderBusyError`.
    """
    config = configure(GuessConfig, config, overrides)
    src, dst = _check_folders(src, dst)
    if predictor is not None and config.tta:
        raise ConfigError("--tta is not available with --ray: leave out one of them")
    predictor = predictor or Predictor.load(model, config.engine, log, tta=config.tta)
    predictor.identity  # noqa: B018 - the digest of the file just loaded, before the walk
    start = time.perf_counter()
    dst.mkdir(parents=True, exist_ok=True)
    journal = Journal(dst, log, wait=config.wait)
    try:
        found = _walk_sources(src, dst, journal, config)
        skipped = [{"path": display_path(s.path), "reason": s.reason} for s in found.skipped]
        todo, resumed = _not_yet_copied(found.images, journal, predictor.identity, config.again,
                                        skipped)
        if resumed:
            log(f"{resumed} image(s) already copied into {display_path(dst)} by an earlier run "
                "(same content, same model): skipped (--again copies them again)")
        copied = _classify_and_copy(todo, dst, journal, predictor, config, progress, skipped)
    except BaseException:
        try:
            journal.close()
        except OSError:
            pass  # the first error is the one to report
        raise
    journal.close()
    result = GuessDirResult(copied, skipped, journal.manifest, time.perf_counter() - start, resumed)
    _log_summary(result, dst, log)
    return result


def _check_folders(src: str | Path, dst: str | Path) -> tuple[Path, Path]:
    """``(src, dst)`` resolved, once ``src`` is a folder and ``dst`` a folder (or nothing yet)
    other than ``src``."""
    src, dst = Path(src).expanduser().resolve(), Path(dst).expanduser().resolve()
    if not src.is_dir():
        raise DatasetError(f"source folder not found: {display_path(src)}: check the path")
    if dst == src:
        raise ConfigError(f"the destination must differ from the source folder: {display_path(src)}")
    if dst.exists() and not dst.is_dir():
        raise ConfigError(f"the destination {display_path(dst)} is a file, not a folder: "
                          "choose a folder")
    return src, dst


def _walk_sources(src: Path, dst: Path, journal: Journal, config: GuessConfig) -> Walk:
    """The images of ``src``. DST inside SRC: DST is not scanned. SRC inside DST: the copies DST
    holds (and its manifest) are not."""
    outputs = {p.resolve() for p in journal.destinations} | {journal.manifest}
    return walk(src, recursive=config.recursive, exclude=dst if is_inside(dst, src) else None,
                exclude_files=outputs if is_inside(src, dst) else frozenset(),
                follow_links=config.follow_links)


def _not_yet_copied(images: list[Path], journal: Journal, identity: str, again: bool,
                    skipped: list[dict]) -> tuple[list[Path], int]:
    """``(todo, resumed)``: the images to classify, and how many the journal already has (same
    content, same model; ``again``: none). Only sources the journal names are hashed here; one
    that cannot be read is appended to ``skipped``."""
    todo, resumed = [], 0
    for path in images:
        if not again and str(path) in journal.sources:
            try:
                digest = file_digest(path)
            except OSError as e:
                skipped.append({"path": display_path(path), "reason": f"cannot read: {e.strerror}"})
                continue
            if journal.done(str(path), digest, identity):
                resumed += 1
                continue
        todo.append(path)
    return todo, resumed


def _classify_and_copy(todo: list[Path], dst: Path, journal: Journal, predictor: Predictor,
                       config: GuessConfig, progress: bool, skipped: list[dict]) -> list[dict]:
    """Classify ``todo`` and copy each image into ``dst`` (``DST/<label>/`` with ``by_label``)
    through the journal, in input order. The copies made; what fails is appended to ``skipped``."""
    bucket = UNKNOWN_LABEL if UNKNOWN_LABEL not in predictor.labels else "_" + UNKNOWN_LABEL
    copied = []
    for pred in predictor.predict(todo, top_k=config.top_k, batch_size=config.batch_size,
                                  workers=config.workers, progress=progress):
        if pred.error:
            skipped.append({"path": display_path(pred.path), "reason": pred.error})
            continue
        label, score = pred.label, pred.score
        if score < config.min_score:
            label = bucket
        try:
            entry = _copy(pred, label, dst / label if config.by_label else dst, journal,
                          predictor.identity)
        except ImageError as e:
            skipped.append({"path": display_path(pred.path), "reason": e.reason})
            continue
        copied.append({"source": display_path(pred.path), "destination":
                       display_path(entry.destination), "label": label, "score": score})
    return copied


def _copy(pred: Prediction, label: str, folder: Path, journal: Journal, identity: str) -> Entry:
    """Copy ``pred``'s source into ``folder`` as ``<label>-<score><ext>``, with its manifest row.
    ImageError when the source is no longer a regular file."""
    score = pred.score
    ext = pred.path.suffix or FORMAT_EXTENSIONS.get(sniff(pred.path) or "", "")
    top = ";".join(f"{lb}:{s:.5f}" for lb, s in pred.top)
    fd, _ = open_regular(pred.path)
    try:
        return journal.copy(
            pred.path, fd, folder, f"{label}-{score:.5f}", ext,
            lambda target, sha: Entry(str(pred.path), str(target), label, f"{score:.5f}", top, sha,
                                      identity))
    finally:
        os.close(fd)


def _log_summary(result: GuessDirResult, dst: Path, log: Callable[[str], None]) -> None:
    log(f"Copied {len(result.copied)} image(s) into {display_path(dst)} "
        f"({result.images_per_second:.1f} images/s); manifest: {display_path(result.manifest)}")
    if result.skipped:
        log(f"Skipped {len(result.skipped)} file(s):")
        for s in result.skipped:
            log(f"  {s['path']}: {s['reason']}")
