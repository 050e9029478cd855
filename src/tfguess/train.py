"""``train``: from a folder of labelled photos to a self-describing model in TF_FILES."""

from __future__ import annotations

import csv
import io
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bottlenecks import BottleneckCache, cache_key, compute_features
from .config import TrainConfig
from .dataset import SPLITS, DatasetError, Item, scan_dataset
from .model import LABELS_FILENAME, MODEL_FILENAME, atomic_write_text

SUMMARY_FILENAME = "run_summary.json"
HISTORY_FILENAME = "history.csv"


class TrainError(RuntimeError):
    pass


@dataclass
class SplitData:
    items: list[Item]
    x: np.ndarray
    y: np.ndarray


@dataclass
class TrainResult:
    model_path: Path
    labels: list[str]
    metrics: dict
    summary: dict
    summary_path: Path


def resolve_backbone(config: TrainConfig):
    from .backbones import get_backbone, tfhub_backbone

    if config.tfhub_module:
        return tfhub_backbone(config.tfhub_module, input_size=config.image_size)
    return get_backbone(config.backbone)


class _Adam:
    """The Adam update (Keras defaults), for numpy arrays updated in place."""

    def __init__(self, params: list[np.ndarray], lr: float) -> None:
        self.params, self.lr, self.t = params, lr, 0
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]

    def step(self, grads: list[np.ndarray], b1=0.9, b2=0.999, eps=1e-7) -> None:
        self.t += 1
        lr = self.lr * np.sqrt(1 - b2**self.t) / (1 - b1**self.t)
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m += (1 - b1) * (g - m)
            v += (1 - b2) * (g * g - v)
            p -= lr * m / (np.sqrt(v) + eps)


def _loss_accuracy(x: np.ndarray, y: np.ndarray, kernel: np.ndarray, bias: np.ndarray):
    from .model import softmax

    probs = softmax(x @ kernel + bias)
    loss = -np.log(np.maximum(probs[np.arange(len(y)), y], 1e-12)).mean()
    return float(loss), float((probs.argmax(1) == y).mean())


def fit_head(
    train: SplitData,
    val: SplitData | None,
    num_classes: int,
    config: TrainConfig,
    progress: bool = True,
    summaries_dir: str | None = None,
):
    """Train dropout + softmax on cached features; early stopping on validation loss.

    Plain numpy (the head is one matrix): mini-batch Adam on the class-weighted cross-entropy
    with L2 on the kernel and dropout on the features. Returns (kernel, bias, history rows,
    best epoch).
    """
    from tqdm.auto import tqdm

    from .model import softmax

    rng = np.random.default_rng(config.seed)
    n, dim = train.x.shape
    limit = np.sqrt(6 / (dim + num_classes))  # Glorot uniform, as Keras' Dense
    kernel = rng.uniform(-limit, limit, (dim, num_classes)).astype(np.float32)
    bias = np.zeros(num_classes, np.float32)
    adam = _Adam([kernel, bias], config.learning_rate)

    counts = np.bincount(train.y, minlength=num_classes).astype(np.float32)
    class_w = (len(train.y) / (num_classes * np.maximum(counts, 1)) if config.class_weights
               else np.ones(num_classes, np.float32))
    sample_w = class_w[train.y].astype(np.float32)
    targets = np.eye(num_classes, dtype=np.float32)[train.y]
    if config.label_smoothing:
        targets = targets * (1 - config.label_smoothing) + config.label_smoothing / num_classes
    keep = 1.0 - config.dropout
    has_val = val is not None and len(val.y) > 0

    writer = None
    if summaries_dir:
        from ._quiet import import_tensorflow

        tf = import_tensorflow()
        writer = tf.summary.create_file_writer(summaries_dir)
    best = (np.inf, 0, kernel.copy(), bias.copy())
    history = []
    bar = tqdm(range(1, config.epochs + 1), desc="training", unit="epoch", disable=not progress,
               dynamic_ncols=True)
    for epoch in bar:
        order = rng.permutation(n)
        for start in range(0, n, config.batch_size):
            idx = order[start:start + config.batch_size]
            xb = train.x[idx]
            if config.dropout:
                xb = xb * (rng.random(xb.shape, dtype=np.float32) < keep) / keep
            w = sample_w[idx] / sample_w[idx].sum()
            grad_logits = (softmax(xb @ kernel + bias) - targets[idx]) * w[:, None]
            adam.step([xb.T @ grad_logits + 2 * config.l2 * kernel, grad_logits.sum(0)])
        loss, acc = _loss_accuracy(train.x, train.y, kernel, bias)
        row = {"epoch": epoch, "loss": round(loss, 6), "accuracy": round(acc, 6)}
        if has_val:
            vloss, vacc = _loss_accuracy(val.x, val.y, kernel, bias)
            row.update(val_loss=round(vloss, 6), val_accuracy=round(vacc, 6))
        history.append(row)
        if writer:
            with writer.as_default(step=epoch):
                for k, v in row.items():
                    if k != "epoch":
                        tf.summary.scalar(k, v)
        bar.set_postfix({k: v for k, v in row.items() if k != "epoch"}, refresh=False)
        monitored = row.get("val_loss", row["loss"])
        if monitored < best[0] - 1e-5:
            best = (monitored, epoch, kernel.copy(), bias.copy())
        elif epoch - best[1] >= config.patience:
            break
    bar.close()
    if writer:
        writer.close()
    return best[2], best[3], history, best[1]


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, per-label precision/recall/F1 and the confusion matrix (rows: true label)."""
    k = len(labels)
    if len(y_true) == 0:
        return {"n": 0, "accuracy": None}
    pred = probs.argmax(axis=1)
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (y_true, pred), 1)
    per_label = {}
    for i, label in enumerate(labels):
        tp = confusion[i, i]
        p = tp / confusion[:, i].sum() if confusion[:, i].sum() else 0.0
        r = tp / confusion[i, :].sum() if confusion[i, :].sum() else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        per_label[label] = {"precision": round(float(p), 4), "recall": round(float(r), 4),
                            "f1": round(float(f1), 4), "support": int(confusion[i, :].sum())}
    return {
        "n": int(len(y_true)),
        "accuracy": round(float((pred == y_true).mean()), 4),
        "per_label": per_label,
        "confusion": confusion.tolist(),
    }


def _write_history(path: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    fields = list(history[0].keys()) if history else ["epoch"]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buf.getvalue())


def _evaluate_folder(folder, labels, head, cache, make_extractor, size, resize, config,
                     progress) -> dict:
    """Metrics of the trained head on every image of a labelled folder (e.g. a held-out set)."""
    from .model import head_probabilities

    scan = scan_dataset(folder, validation_pct=0, test_pct=0, min_per_label=1,
                        decode_check=False, progress=progress)
    unknown = sorted(set(scan.labels) - set(labels))
    if unknown:
        raise DatasetError(
            f"{folder} has label folder(s) the model does not know: {', '.join(unknown)} "
            f"(trained labels: {', '.join(labels)})"
        )
    feats = compute_features([(it.path, it.digest) for it in scan.items], cache, make_extractor,
                             size, resize, workers=config.workers, progress=progress)
    items = [it for it in scan.items if it.digest in feats.features]
    index = {label: i for i, label in enumerate(labels)}
    y = np.array([index[it.label] for it in items], np.int64)
    dim = len(head.get("hidden_kernel", head["kernel"]))
    x = np.stack([feats.features[it.digest] for it in items]) if items else np.zeros((0, dim))
    result = classification_metrics(y, head_probabilities(x, head), labels)
    result["folder"] = str(folder)
    result["skipped"] = [{"path": str(s.path), "reason": s.reason} for s in scan.skipped] + [
        {"path": str(it.path), "reason": feats.skipped[it.digest]}
        for it in scan.items if it.digest in feats.skipped
    ]
    return result


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
    tf_files = Path(tf_files).expanduser().resolve()
    auto_backbone = None
    if config.backbone == "auto":  # tries the offline backbones on cached features
        from .accuracy import choose_backbone

        config, auto_backbone = choose_backbone(tf_files, config, progress, log)
        timings["choose_backbone"] = time.perf_counter() - t0
    spec = resolve_backbone(config)  # an unknown backbone name is reported first
    image_dir = Path(config.image_dir).expanduser().resolve() if config.image_dir else tf_files / "data"
    if not image_dir.is_dir():
        raise DatasetError(
            f"image folder not found: {image_dir}. Put your photos in {image_dir}/<label>/ "
            "(one sub-folder per label) or pass --image-dir"
        )
    tf_files.mkdir(parents=True, exist_ok=True)

    # The backbone first: a missing weights file is reported before any other work.
    backbone = spec.build(weights=config.weights)
    weights_id = spec.weights_id(config.weights)
    size, resize = spec.input_size, spec.resize
    timings["backbone"] = time.perf_counter() - t0

    t = time.perf_counter()
    scan = scan_dataset(
        image_dir,
        validation_pct=config.validation_pct,
        test_pct=config.test_pct,
        min_per_label=config.min_per_label,
        decode_check=False,
        progress=progress,
    )
    timings["scan"] = time.perf_counter() - t
    labels = scan.labels
    log(f"Found {len(scan.items)} images in {len(labels)} labels ({', '.join(labels)}) in {image_dir}")
    for note in scan.notes:
        log(f"  note: {note}")

    cache = BottleneckCache(tf_files / "bottlenecks", cache_key(spec.name, weights_id, size, resize))
    engine_used: dict = {"name": "none (all cached)"}

    def make_extractor():
        from .engine import make_engine

        if "extractor" not in engine_used:
            engine_used["extractor"] = make_engine(
                backbone, size, f"{spec.name}|{weights_id}|{size}", config.engine, log
            )
            engine_used["name"] = engine_used["extractor"].name
        return engine_used["extractor"]

    feats = compute_features(
        [(item.path, item.digest) for item in scan.items], cache, make_extractor, size, resize,
        workers=config.workers, progress=progress,
    )
    timings["features"] = feats.seconds
    log(f"Bottlenecks: {feats.computed} computed, {feats.cached} from the cache "
        f"({feats.seconds:.1f} s, engine: {engine_used['name']})")

    skipped = [{"path": str(s.path), "reason": s.reason} for s in scan.skipped]
    usable = []
    for item in scan.items:
        if item.digest in feats.skipped:
            skipped.append({"path": str(item.path), "reason": feats.skipped[item.digest]})
        else:
            usable.append(item)
    if skipped:
        log(f"Skipped {len(skipped)} file(s):")
        for s in skipped:
            log(f"  {s['path']}: {s['reason']}")
    index = {label: i for i, label in enumerate(labels)}
    per_label = {label: sum(1 for it in usable if it.label == label) for label in labels}
    too_few = [f"{label} ({n})" for label, n in per_label.items() if n < config.min_per_label]
    if too_few:
        raise DatasetError(
            f"too few usable images for label(s) {', '.join(too_few)} in {image_dir}: "
            f"each label needs at least {config.min_per_label}. Add images or remove the folder."
        )

    def split_data(split: str) -> SplitData:
        items = [it for it in usable if it.split == split]
        x = np.stack([feats.features[it.digest] for it in items]) if items else np.zeros((0, 1), np.float32)
        return SplitData(items, x.astype(np.float32), np.array([index[it.label] for it in items], np.int64))

    data = {split: split_data(split) for split in SPLITS}

    # --- accuracy beyond a frozen backbone: augmented views, hidden layer, fine-tuning ---
    from . import accuracy

    t = time.perf_counter()
    fit_train = accuracy.with_views(data["train"], config, spec.name, weights_id, size, resize,
                                    tf_files / "bottlenecks", make_extractor, progress, log)
    if fit_train is not data["train"]:
        timings["views"] = time.perf_counter() - t
    t = time.perf_counter()
    head, history, best_epoch = accuracy.fit_any_head(
        fit_train, data["validation"], len(labels), config, progress, config.summaries_dir
    )
    timings["train_head"] = time.perf_counter() - t
    log(f"Trained the head: best epoch {best_epoch} of {len(history)}")
    fine_tuned = None
    if config.fine_tune:
        t = time.perf_counter()
        fine_tuned = accuracy.fine_tune_backbone(backbone, head, data, index, len(labels), config,
                                                 size, resize, progress, log)
        head, weights_id = fine_tuned.head, fine_tuned.weights_id or weights_id
        timings["fine_tune"] = time.perf_counter() - t
        # Features of the fine-tuned backbone (a cache of their own) for the metrics and the report.
        cache = BottleneckCache(tf_files / "bottlenecks", cache_key(spec.name, weights_id, size, resize))
        engine_used.pop("extractor", None)
        feats = compute_features([(it.path, it.digest) for it in usable], cache, make_extractor,
                                 size, resize, workers=config.workers, progress=progress)
        usable = [it for it in usable if it.digest in feats.features]
        data = {split: split_data(split) for split in SPLITS}
        timings["fine_tune_features"] = feats.seconds

    from .model import build_classifier, head_probabilities, save_classifier

    metrics = {}
    for split in SPLITS:
        d = data[split]
        probs = head_probabilities(d.x, head) if len(d.y) else np.zeros((0, len(labels)))
        metrics[split] = classification_metrics(d.y, probs, labels)

    if config.eval_dir:
        metrics["eval_dir"] = _evaluate_folder(
            Path(config.eval_dir).expanduser().resolve(), labels, head, cache,
            make_extractor, size, resize, config, progress,
        )
        log(f"Accuracy on {config.eval_dir}: {metrics['eval_dir']['accuracy']} "
            f"(n={metrics['eval_dir']['n']})")

    t = time.perf_counter()
    classifier = build_classifier(backbone, len(labels), config.dropout, config.l2,
                                  config.hidden_units)
    accuracy.set_head(classifier, head)
    meta = {
        "backbone": {
            "name": spec.name, "input_size": size, "resize": resize,
            "preprocessing": spec.preprocessing, "feature_dim": len(head.get("hidden_kernel", head["kernel"])),
            "weights_id": weights_id,
            "weights_source": spec.weights_source + (", fine-tuned" if fine_tuned else ""),
        },
        "config": config.to_dict(),
        "mode": config.mode,
        "metrics": {s: {"accuracy": m.get("accuracy"), "n": m.get("n")} for s, m in metrics.items()},
    }
    model_path = tf_files / MODEL_FILENAME
    previous = save_classifier(model_path, classifier, labels, meta)
    if previous:
        log(f"Kept the previous {model_path.name} as {previous.name} (one generation is kept)")
    atomic_write_text(tf_files / LABELS_FILENAME, "".join(f"{label}\n" for label in labels))
    _write_history(tf_files / HISTORY_FILENAME, history)
    timings["save"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0

    summary = {
        "tf_files": str(tf_files),
        "image_dir": str(image_dir),
        "config": config.to_dict(),
        "mode": config.mode,
        "fine_tune": accuracy.fine_tune_summary(fine_tuned),
        "auto_backbone": auto_backbone,
        "backbone": meta["backbone"],
        "engine": engine_used["name"],
        "bottleneck_dir": str(cache.dir),
        "labels": labels,
        "counts": {label: {split: sum(1 for it in data[split].items if it.label == label) for split in SPLITS}
                   for label in labels},
        "features": {"computed": feats.computed, "cached": feats.cached},
        "skipped": skipped,
        "duplicates": [[str(a), str(b)] for a, b in scan.duplicates],
        "conflicts": [{"digest": d, "paths": [str(p) for p in ps], "labels": ls} for d, ps, ls in scan.conflicts],
        "notes": scan.notes,
        "splits": {split: [[str(it.path), it.label, it.digest] for it in data[split].items] for split in SPLITS},
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "metrics": metrics,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "platform": {"python": platform.python_version(), "machine": platform.machine(),
                     "system": platform.system()},
    }
    summary_path = tf_files / SUMMARY_FILENAME
    atomic_write_text(summary_path, json.dumps(summary, indent=2))
    acc = {s: metrics[s].get("accuracy") for s in SPLITS}
    log(f"Mode: {config.mode}")
    log(f"Accuracy: train {acc['train']}, validation {acc['validation']}, test {acc['test']} "
        f"(test n={metrics['test']['n']})")
    log(f"Wrote {model_path}, {tf_files / LABELS_FILENAME}, {summary_path.name}, {HISTORY_FILENAME} "
        f"in {timings['total']:.1f} s")
    sys.stdout.flush()
    return TrainResult(model_path, labels, metrics, summary, summary_path)
