"""``guess`` and ``guess-dir``: classify images with a trained model, loaded once per command."""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .engine import iter_batches, iter_loaded

MANIFEST_FILENAME = "manifest.csv"
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


class Predictor:
    """Pixels -> class probabilities for one model, built once and reused for every image."""

    def __init__(self, labels: list[str], input_size: int, resize: str,
                 probabilities: Callable[[np.ndarray], np.ndarray], engine: str) -> None:
        self.labels = labels
        self.input_size = input_size
        self.resize = resize
        self.probabilities = probabilities
        self.engine = engine

    @classmethod
    def load(cls, model: str | Path, engine: str = "auto", log: Callable = print,
             tta: bool = False) -> Predictor:
        """Load a tfguess model (the ``.keras`` file or its folder) or an exported ``.tflite``.

        ``tta``: average in the prediction of the mirrored image (test-time augmentation);
        refused for a model trained with ``no_flip`` (mirroring changes the meaning there).
        """
        from .model import head_probabilities, read_head_arrays, read_meta, resolve_model_path

        path = resolve_model_path(model)
        if path.suffix.lower() == ".tflite":
            from .export import TFLiteClassifier

            tfl = TFLiteClassifier(path)
            return cls(tfl.labels, tfl.input_size, tfl.resize, _with_tta(tfl, tta), "tflite-file")
        meta = read_meta(path)
        if tta and meta.get("config", {}).get("no_flip"):
            raise ValueError(f"{path} was trained with --no-flip (mirroring changes the meaning): "
                             "guess without --tta")
        b = meta["backbone"]
        size, resize = int(b["input_size"]), b["resize"]
        key = f"{b['name']}|{b['weights_id']}|{size}"
        from .engine import TFLiteEngine, engine_cache_tflite, make_engine

        cached = engine_cache_tflite(key)
        if engine != "keras" and cached.exists():
            # Fast path: the backbone's TFLite twin is cached; the head is read from the file.
            extractor = TFLiteEngine(cached)
            head = read_head_arrays(path)
        else:
            from .model import load_classifier

            classifier = load_classifier(path)
            extractor = make_engine(classifier.backbone, size, key, engine, log)
            head = classifier.head_arrays()

        def probabilities(pixels: np.ndarray) -> np.ndarray:
            return head_probabilities(extractor(pixels), head)

        return cls(list(meta["labels"]), size, resize, _with_tta(probabilities, tta), extractor.name)

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


def guess(model: str | Path, images: list[str | Path], top_k: int = 0, as_json: bool = False,
          engine: str = "auto", out: Callable[[str], None] = print, tta: bool = False) -> int:
    """Print the labels with scores for each image. Returns the number of images that failed."""
    predictor = Predictor.load(model, engine, tta=tta)
    paths = [Path(p) for p in images]
    failed = 0
    results = []
    for pred in predictor.predict(paths, top_k=top_k):
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


def _claim(dst_dir: Path, stem: str, ext: str) -> tuple[Path, int]:
    """Create a new, empty file named ``stem+ext`` (or ``stem-N+ext``) that did not exist before."""
    n = 0
    while True:
        name = f"{stem}{ext}" if n == 0 else f"{stem}-{n}{ext}"
        target = dst_dir / name
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            return target, fd
        except FileExistsError:
            n += 1


@dataclass
class GuessDirResult:
    copied: list[dict]
    skipped: list[dict]
    manifest: Path
    seconds: float

    @property
    def images_per_second(self) -> float:
        n = len(self.copied) + len(self.skipped)
        return n / self.seconds if self.seconds else 0.0


def guess_dir(
    model: str | Path,
    src: str | Path,
    dst: str | Path,
    *,
    recursive: bool = False,
    by_label: bool = False,
    min_score: float = 0.0,
    top_k: int = 3,
    engine: str = "auto",
    batch_size: int = 32,
    workers: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
    tta: bool = False,
) -> GuessDirResult:
    """Copy every image of ``src`` into ``dst`` as ``<label>-<score>.<ext>``.

    Sources are only read. Nothing in ``dst`` is ever overwritten: a name already taken gets a
    ``-N`` suffix. A CSV manifest (``dst/manifest.csv``, appended to across runs) records source,
    destination, label, score and the top-k.
    """
    from .dataset import non_image_reason, walk_files

    src, dst = Path(src).expanduser().resolve(), Path(dst).expanduser().resolve()
    if not src.is_dir():
        raise FileNotFoundError(f"source folder not found: {src}")
    if dst == src:
        raise ValueError(f"the destination must differ from the source folder: {src}")
    predictor = Predictor.load(model, engine, log, tta=tta)
    start = time.perf_counter()
    paths, others = walk_files(src, recursive=recursive, exclude=dst)
    dst.mkdir(parents=True, exist_ok=True)
    manifest = dst / MANIFEST_FILENAME
    new_manifest = not manifest.exists()
    copied = []
    skipped = [{"path": str(p), "reason": non_image_reason(p)} for p in others]
    with open(manifest, "a", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if new_manifest:
            writer.writerow(["source", "destination", "label", "score", "top_k"])
        for pred in predictor.predict(paths, top_k=top_k, batch_size=batch_size, workers=workers,
                                      progress=progress):
            if pred.error:
                skipped.append({"path": str(pred.path), "reason": pred.error})
                continue
            label, score = pred.label, pred.score
            if score < min_score:
                label = UNKNOWN_LABEL
            folder = dst / label if by_label else dst
            folder.mkdir(exist_ok=True)
            target, fd = _claim(folder, f"{label}-{score:.5f}", pred.path.suffix)
            with os.fdopen(fd, "wb") as out_f, open(pred.path, "rb") as in_f:
                shutil.copyfileobj(in_f, out_f)
            shutil.copystat(pred.path, target)
            top = ";".join(f"{lb}:{s:.5f}" for lb, s in pred.top)
            writer.writerow([str(pred.path), str(target), label, f"{score:.5f}", top])
            copied.append({"source": str(pred.path), "destination": str(target), "label": label,
                           "score": score})
    seconds = time.perf_counter() - start
    result = GuessDirResult(copied, skipped, manifest, seconds)
    log(f"Copied {len(copied)} image(s) into {dst} ({result.images_per_second:.1f} images/s); "
        f"manifest: {manifest}")
    if skipped:
        log(f"Skipped {len(skipped)} file(s):")
        for s in skipped:
            log(f"  {s['path']}: {s['reason']}")
    return result
