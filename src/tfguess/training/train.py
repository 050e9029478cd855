"""``train``: from a folder of labelled photos to a self-describing model in TF_FILES.

The stages, each in its own module: scan and split the photos (``dataset``), features from the
cache or the backbone (``bottlenecks`` with an extractor from ``features``), fit the head
(``head``), score the splits and an optional evaluation folder (``evaluation``), save the model
(``model``) and the run summary into the run folder (``runfolder``).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfguess.core.config import TrainConfig
from tfguess.core.errors import DatasetError, WeightsUnavailableError
from tfguess.core.fsutil import atomic_write, display_path
from tfguess.core.locks import locked_run
from tfguess.core.runfolder import RunFolder
from tfguess.data.dataset import SPLITS, DatasetScan, Item, label_folders, scan_dataset
from tfguess.data.pipeline import iter_loaded
from tfguess.engine.bottlenecks import BottleneckCache, FeatureResult, compute_features
from tfguess.engine.features import (
    BackboneRef,
    calibration_digest,
    choose_calibration,
    engine_name,
    make_extractor,
)
from tfguess.engine.runtime import Head, auto_precision, runtime_name
from tfguess.training.evaluation import classification_metrics, evaluate_folder
from tfguess.training.head import fit_head


@dataclass
class TrainResult:
    model_path: Path
    labels: list[str]
    metrics: dict
    summary: dict
    summary_path: Path


def resolve_backbone(config: TrainConfig):
    from tfguess.engine.backbones import get_backbone, tfhub_backbone

    if config.tfhub_module:
        return tfhub_backbone(config.tfhub_module, input_size=config.image_size)
    return get_backbone(config.backbone, config.image_size)


class _LazyBackbone:
    """The backbone's Keras model, built (and TensorFlow imported) the first time it is needed:
    never in a warm re-train whose features are all cached."""

    def __init__(self, spec, weights: str | None) -> None:
        self.spec, self.weights, self.model = spec, weights, None
        self.seconds = 0.0

    def __call__(self):
        if self.model is None:
            from tfguess.core.quiet import import_tensorflow

            t = time.perf_counter()
            import_tensorflow()
            self.model = self.spec.build(weights=self.weights)
            self.seconds = time.perf_counter() - t
        return self.model

    @property
    def built(self) -> bool:
        return self.model is not None


class _LazyExtractor:
    """Builds the feature extractor the first time features must be computed (never when every
    feature is cached)."""

    def __init__(self, ref: BackboneRef, backbone: _LazyBackbone, engine: str,
                 log: Callable[[str], None], calibration=None) -> None:
        self.ref, self.backbone, self.engine, self.log = ref, backbone, engine, log
        self.calibration = calibration
        self.extractor = None

    def __call__(self):
        if self.extractor is None:
            self.extractor = make_extractor(self.ref, self.backbone, self.engine, self.log,
                                            self.calibration)
        return self.extractor

    @property
    def name(self) -> str:
        return engine_name(self.extractor) if self.extractor else "none (all cached)"


def _calibration_images(run: RunFolder, scan: DatasetScan, ref: BackboneRef) -> list[str]:
    """The digests of the int8 calibration images: the previous run's when all of them are still
    in the folder (so adding photos keeps the cache warm), else a new choice among the training
    photos."""
    present = {item.digest for item in scan.items}
    try:
        previous = run.read_summary() if run.summary.exists() else {}
    except Exception:  # noqa: BLE001 - a damaged summary only means a new calibration
        previous = {}
    old = previous.get("calibration_images") or []
    old_ref = previous.get("backbone") or {}
    same_backbone = (old_ref.get("name"), old_ref.get("weights_id"), old_ref.get("precision")) == (
        ref.name, ref.weights_id, "int8")
    if old and same_backbone and set(old) <= present:
        return sorted(old)
    return choose_calibration([it.digest for it in scan.items if it.split == "train"])


def _calibration_pixels(scan: DatasetScan, digests: list[str], ref: BackboneRef):
    """A function giving the calibration images' pixels (decoded when the converter asks)."""
    wanted = set(digests)
    paths = {}
    for item in scan.items:
        if item.digest in wanted:
            paths.setdefault(item.digest, item.path)

    def pixels():
        for loaded in iter_loaded([paths[d] for d in sorted(paths)], ref.input_size, ref.resize,
                                  reject_placeholders=True):
            if loaded.pixels is not None:
                yield loaded.pixels

    return pixels


def _write_history(path: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    fields = list(history[0].keys()) if history else ["epoch"]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(history)
    atomic_write(path, buf.getvalue())


def _usable_items(scan: DatasetScan, feats: FeatureResult, config: TrainConfig, image_dir: Path,
                  log: Callable[[str], None]) -> tuple[list[Item], list[dict]]:
    """The images that have features, and every skipped file with its reason."""
    skipped = [{"path": display_path(s.path), "reason": s.reason} for s in scan.skipped]
    usable = []
    for item in scan.items:
        if item.digest in feats.skipped:
            skipped.append({"path": display_path(item.path), "reason": feats.skipped[item.digest]})
        else:
            usable.append(item)
    if skipped:
        log(f"Skipped {len(skipped)} file(s):")
        for s in skipped:
            log(f"  {s['path']}: {s['reason']}")
    if len(usable) < len(scan.items):
        log(f"Usable: {len(usable)} of the {len(scan.items)} images found")
    per_label = {label: sum(1 for it in usable if it.label == label) for label in scan.labels}
    too_few = [f"{label} ({n})" for label, n in per_label.items() if n < config.min_per_label]
    if too_few:
        raise DatasetError(
            f"too few usable images for label(s) {', '.join(too_few)} in {image_dir}: "
            f"each label needs at least {config.min_per_label}. Add images or remove the folder."
        )
    return usable, skipped


def _tensorboard_writer(summaries_dir: str | None):
    """A per-epoch callback writing TensorBoard scalars, and a function that closes it."""
    if not summaries_dir:
        return None, lambda: None
    from tfguess.core.quiet import import_tensorflow

    tf = import_tensorflow()
    writer = tf.summary.create_file_writer(summaries_dir)

    def on_epoch(row: dict) -> None:
        with writer.as_default(step=row["epoch"]):
            for k, v in row.items():
                if k != "epoch":
                    tf.summary.scalar(k, v)

    return on_epoch, writer.close


@locked_run("train")  # one run at a time writes the cache, the model and the summary
def train(
    tf_files: str | Path,
    config: TrainConfig | None = None,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train a classifier on ``TF_FILES/data/<label>/*`` (or ``config.image_dir``).

    Writes into ``tf_files``: the model, ``retrained_labels.txt``, ``run_summary.json``,
    ``history.csv`` and the bottleneck cache (``bottlenecks/``).
    """
    config = config or TrainConfig()
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    run = RunFolder.at(tf_files)
    auto_backbone = None
    time_plan = None
    if config.time_limit:  # the recipe that fits the budget, said before any heavy work
        from tfguess.training.plan import plan_run

        config, time_plan = plan_run(config, Path(config.image_dir).expanduser().resolve()
                                     if config.image_dir else run.data, run.summary, log)
    if config.backbone == "auto":  # tries the offline backbones on cached features
        from tfguess.training.choices import choose_backbone

        auto_dir = Path(config.image_dir).expanduser().resolve() if config.image_dir else run.data
        if not auto_dir.is_dir():
            raise DatasetError(
                f"image folder not found: {auto_dir}. Put your photos in {auto_dir}/<label>/ "
                "(one sub-folder per label) or pass --image-dir"
            )
        config, auto_backbone = choose_backbone(auto_dir, run.bottlenecks, config, progress, log)
        timings["choose_backbone"] = time.perf_counter() - t0
    spec = resolve_backbone(config)  # an unknown backbone name is reported first
    image_dir = Path(config.image_dir).expanduser().resolve() if config.image_dir else run.data
    if not image_dir.is_dir():
        raise DatasetError(
            f"image folder not found: {image_dir}. Put your photos in {image_dir}/<label>/ "
            "(one sub-folder per label) or pass --image-dir"
        )
    label_folders(image_dir)  # a label name that cannot be used is refused before any work
    run.root.mkdir(parents=True, exist_ok=True)

    # The weights first: a missing weights file is reported before any other work. The Keras
    # model is only built when features must be computed or the model cannot be saved without it.
    backbone = _LazyBackbone(spec, config.weights)
    try:
        weights_id = spec.weights_id(config.weights)
    except WeightsUnavailableError:
        backbone()  # a backbone that downloads its weights fetches them now, or says why not
        weights_id = spec.weights_id(config.weights)

    t = time.perf_counter()
    scan = scan_dataset(image_dir, validation_pct=config.validation_pct, test_pct=config.test_pct,
                        min_per_label=config.min_per_label, decode_check=False, progress=progress,
                        follow_links=config.follow_links)
    timings["scan"] = time.perf_counter() - t
    labels = scan.labels
    passed = f" ({len(scan.skipped)} other file(s) skipped, listed below)" if scan.skipped else ""
    log(f"Found {len(scan.items)} images in {len(labels)} labels ({', '.join(labels)}) in "
        f"{display_path(image_dir)}{passed}")
    for note in scan.notes:
        log(f"  note: {note}")

    resize, auto_resize = config.resize or spec.resize, None
    if resize == "auto":  # squash or crop, by the shapes of the photos
        from tfguess.training.choices import choose_resize

        t = time.perf_counter()
        resize, auto_resize = choose_resize(scan, log)
        timings["choose_resize"] = time.perf_counter() - t
    # "auto" extracts float32 features; its int8 engine is for guessing only (_guess_engine).
    ref = BackboneRef(spec.name, weights_id, spec.input_size, resize,
                      "int8" if config.precision == "int8" else "float32")
    calibration, calibration_images = None, []
    if config.precision == "int8":
        calibration_images = _calibration_images(run, scan, ref)
        ref = dataclasses.replace(ref, calibration=calibration_digest(calibration_images))
        calibration = _calibration_pixels(scan, calibration_images, ref)
    cache = BottleneckCache(run.bottlenecks, ref.cache_key)
    extractor = _LazyExtractor(ref, backbone, config.engine, log, calibration)
    compute = functools.partial(compute_features, keep_placeholders=config.keep_placeholders)
    if config.ray:
        from tfguess.guess.distributed import RayFeatureComputer

        compute = RayFeatureComputer(ref, backbone, config.ray, config.ray_workers, log)
    feats = compute([(item.path, item.digest) for item in scan.items], cache, extractor,
                    ref.input_size, ref.resize, workers=config.workers, progress=progress)
    timings["features"] = feats.seconds
    log(f"Bottlenecks: {feats.computed} computed, {feats.cached} from the cache "
        f"({feats.seconds:.1f} s, engine: {'tflite (ray)' if config.ray else extractor.name})")

    usable, skipped = _usable_items(scan, feats, config, image_dir, log)
    index = {label: i for i, label in enumerate(labels)}
    splits = {split: [it for it in usable if it.split == split] for split in SPLITS}

    def xy(items: list[Item]) -> tuple[np.ndarray, np.ndarray]:
        x = (np.stack([feats.features[it.digest] for it in items]).astype(np.float32) if items
             else np.zeros((0, 1), np.float32))
        return x, np.array([index[it.label] for it in items], np.int64)

    data = {split: xy(items) for split, items in splits.items()}

    # Accuracy beyond a frozen backbone: augmented views, a hidden layer, fine-tuning.
    from tfguess.training import choices as accuracy

    t = time.perf_counter()
    fit_x, fit_y = accuracy.with_views(*data["train"], splits["train"], config, ref, run.bottlenecks,
                                       extractor, progress, log)
    if len(fit_y) != len(data["train"][1]):
        timings["views"] = time.perf_counter() - t
    t = time.perf_counter()
    on_epoch, close_writer = _tensorboard_writer(config.summaries_dir)
    try:
        fit = fit_head(fit_x, fit_y, len(labels), config, data["validation"], progress=progress,
                       on_epoch=on_epoch)
    finally:
        close_writer()
    head = fit.head
    timings["train_head"] = time.perf_counter() - t
    log(f"Trained the head: best epoch {fit.best_epoch} of {len(fit.history)}")
    fine_tuned = None
    if config.fine_tune:
        from tfguess.training.finetune import fine_tune

        t = time.perf_counter()

        def pairs(split: str) -> list[tuple[Path, int]]:
            return [(it.path, index[it.label]) for it in splits[split]]

        deadline = None
        if time_plan:
            from tfguess.training.plan import fine_tune_deadline

            per_image = (feats.seconds / feats.computed if feats.computed >= 20
                         else time_plan.chosen.recipe.extract_cost / time_plan.speed.extract)
            deadline = fine_tune_deadline(t0, config.time_limit, len(usable) + time_plan.eval_images,
                                          per_image, time_plan.speed.slowdown)
        fine_tuned = fine_tune(backbone(), head, pairs("train"), pairs("validation"), len(labels),
                               config, ref.input_size, ref.resize, progress, log, deadline=deadline)
        head = fine_tuned.head
        timings["fine_tune"] = time.perf_counter() - t
        if fine_tuned.weights_id:
            # The fine-tuned backbone is another backbone: its own engine and feature cache.
            ref = dataclasses.replace(ref, weights_id=fine_tuned.weights_id)
            cache = BottleneckCache(run.bottlenecks, ref.cache_key)
            extractor = _LazyExtractor(ref, backbone, config.engine, log, calibration)
            compute = functools.partial(compute_features, keep_placeholders=config.keep_placeholders)
            feats = compute([(it.path, it.digest) for it in usable], cache, extractor,
                            ref.input_size, ref.resize, workers=config.workers, progress=progress)
            missing = [it for it in usable if it.digest not in feats.features]
            if missing:
                raise DatasetError(f"the fine-tuned backbone could not read {display_path(missing[0].path)} "
                                   "(it was read before): check the file and train again")
            data = {split: xy(items) for split, items in splits.items()}
            timings["fine_tune_features"] = feats.seconds

    metrics = {}
    for split, (x, y) in data.items():
        probs = head(x) if len(y) else np.zeros((0, len(labels)))
        metrics[split] = classification_metrics(y, probs, labels)
    if config.eval_dir:
        metrics["eval_dir"] = evaluate_folder(
            Path(config.eval_dir).expanduser().resolve(), labels, head, cache, extractor,
            ref.input_size, ref.resize, workers=config.workers, progress=progress, compute=compute)
        log(f"Accuracy on {config.eval_dir}: {metrics['eval_dir']['accuracy']} "
            f"(n={metrics['eval_dir']['n']})")

    t = time.perf_counter()
    guess_ref, precision = _guess_engine(scan, ref, backbone, config, log)
    backbone_meta = {
        "name": spec.name, "input_size": ref.input_size, "resize": ref.resize,
        "preprocessing": spec.preprocessing, "feature_dim": head.feature_dim,
        "weights_id": ref.weights_id,
        "weights_source": spec.weights_source + (", fine-tuned" if ref.weights_id != weights_id else ""),
        "precision": ref.precision, "calibration": ref.calibration,
    }
    if guess_ref is not None:
        backbone_meta.update(guess_precision=guess_ref.precision,
                             guess_calibration=guess_ref.calibration)
    timings["guess_engine"] = time.perf_counter() - t
    model_path = _save_model(run, ref, backbone, head, labels, config, backbone_meta, metrics, log,
                             guess_ref)
    timings["backbone"] = backbone.seconds
    atomic_write(run.labels, "".join(f"{label}\n" for label in labels))
    _write_history(run.history, fit.history)
    timings["save"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0

    summary = {
        "image_dir": run.store(image_dir),
        "config": config.to_dict(),
        "mode": config.mode,
        "fine_tune": accuracy.fine_tune_summary(fine_tuned),
        "time_limit": time_plan.summary() if time_plan else None,
        "auto_backbone": auto_backbone,
        "auto_resize": auto_resize,
        "backbone": backbone_meta,
        "engine": "tflite (ray)" if config.ray and feats.computed else extractor.name,
        "precision": precision,
        "runtime": runtime_name(),
        "bottleneck_key": cache.key,
        "calibration_images": calibration_images,
        "labels": labels,
        "counts": {label: {split: sum(1 for it in splits[split] if it.label == label) for split in SPLITS}
                   for label in labels},
        "features": {"computed": feats.computed, "cached": feats.cached},
        "skipped": [{**s, "path": run.store(s["path"])} for s in skipped],
        "duplicates": [[run.store(a), run.store(b)] for a, b in scan.duplicates],
        "conflicts": [{"digest": d, "paths": [run.store(p) for p in ps], "labels": ls}
                      for d, ps, ls in scan.conflicts],
        "notes": scan.notes,
        "splits": {split: [[run.store(it.path), it.label, it.digest] for it in items]
                   for split, items in splits.items()},
        "best_epoch": fit.best_epoch,
        "epochs_run": len(fit.history),
        "metrics": metrics,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "platform": {"python": platform.python_version(), "machine": platform.machine(),
                     "system": platform.system()},
    }
    summary_path = run.write_summary(summary)
    acc = {s: metrics[s].get("accuracy") for s in SPLITS}
    log(f"Mode: {config.mode}")
    log(f"Accuracy: train {acc['train']}, validation {acc['validation']}, test {acc['test']} "
        f"(test n={metrics['test']['n']})")
    if not config.fine_tune and not config.time_limit:
        from tfguess.training.plan import weak_features_hint

        hint = weak_features_hint(acc["train"], acc["validation"], len(usable), len(splits["train"]),
                                  run.summary)
        if hint:
            log(hint)
    log(f"Wrote {model_path}, {run.labels}, {run.summary.name}, {run.history.name} "
        f"in {timings['total']:.1f} s")
    sys.stdout.flush()
    return TrainResult(model_path, labels, metrics, summary, summary_path)


def _guess_engine(scan: DatasetScan, ref: BackboneRef, backbone: _LazyBackbone,
                  config: TrainConfig, log: Callable[[str], None]) -> tuple[BackboneRef | None, dict]:
    """``--precision auto``: the features stay float32 (int8 features cost accuracy on some data
    sets, README "Speed"); where the CPU has int8 dot-product instructions the model also carries
    an int8 engine, calibrated on 100 training photos (the smallest content digests), which
    ``guess``, ``guess-dir`` and ``serve`` run. Returns that engine's ref (or None) and what the
    run summary records."""
    info = {"setting": config.precision, "features": ref.precision, "guess": ref.precision}
    if config.precision != "auto":
        return None, info
    decision = auto_precision()
    info["cpu"] = decision["reason"]
    if decision["precision"] != "int8" or config.engine == "keras" or config.ray or config.fine_tune:
        return None, info
    digests = choose_calibration([it.digest for it in scan.items if it.split == "train"])
    int8 = dataclasses.replace(ref, precision="int8", calibration=calibration_digest(digests))
    if not int8.engine_file.exists():
        from tfguess.engine.features import make_extractor

        try:
            make_extractor(int8, backbone, "tflite", log, _calibration_pixels(scan, digests, int8))
        except Exception as exc:  # noqa: BLE001 - a converter failure costs only the faster guessing
            log(f"  note: no int8 engine for guessing ({exc.__class__.__name__}: {exc}); "
                "guessing runs float32")
            return None, info
    return int8, {**info, "guess": "int8"}


def _guess_calibration(model: Path) -> str | None:
    """The calibration of the int8 guessing engine the model at ``model`` carries, if any."""
    from tfguess.engine.model import read_meta

    try:
        return read_meta(model)["backbone"].get("guess_calibration")
    except Exception:  # noqa: BLE001 - no previous model, or a damaged one: saved afresh
        return "unreadable"


def _save_model(run: RunFolder, ref: BackboneRef, backbone: _LazyBackbone, head: Head,
                labels: list[str], config: TrainConfig, backbone_meta: dict, metrics: dict,
                log: Callable[[str], None], guess_ref: BackboneRef | None = None) -> Path:
    """Save the model; when the run folder's previous model has the same backbone (a fine-tuned
    one has its own weights id) and head layout (hidden layer included) and the backbone was not
    needed, the new file is the previous one with the new head (no
    TensorFlow)."""
    from tfguess.engine.model import (
        build_classifier,
        same_layout,
        save_classifier,
        save_classifier_with_head,
        set_head,
    )

    meta = {
        "backbone": backbone_meta,
        "config": config.to_dict(),
        "mode": config.mode,
        "metrics": {s: {"accuracy": m.get("accuracy"), "n": m.get("n")} for s, m in metrics.items()},
    }
    engine = ref.engine_file if ref.precision == "int8" and ref.engine_file.exists() else None
    if guess_ref is not None and engine is None:
        engine = guess_ref.engine_file
    if (not backbone.built and same_layout(run.model, ref, len(labels), config)
            and _guess_calibration(run.model) == backbone_meta.get("guess_calibration")):
        previous = save_classifier_with_head(run.model, run.model, head, labels, meta)
    else:
        classifier = build_classifier(backbone(), len(labels), config.dropout, config.l2,
                                      head.hidden_units)
        set_head(classifier, head)
        previous = save_classifier(run.model, classifier, labels, meta, engine_file=engine)
    if previous:
        log(f"Kept the previous {run.model.name} as {previous.name} (one generation is kept)")
    return run.model
