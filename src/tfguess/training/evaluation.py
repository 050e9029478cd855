"""Evaluation: metrics of a head's predictions, and scoring a labelled folder.

Used by ``train`` (splits and ``--eval-dir``) and by the report. The metrics are computed in
numpy (no scikit-learn import on the training path); ``tests/training/test_head.py`` checks them
against scikit-learn.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tfguess.core.errors import DatasetError
from tfguess.data.dataset import scan_dataset
from tfguess.engine.bottlenecks import BottleneckCache, compute_features
from tfguess.engine.runtime import Head


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, per-label precision/recall/F1 and the confusion matrix (rows: true label)."""
    k = len(labels)
    if len(y_true) == 0:
        return {"n": 0, "accuracy": None}
    pred = np.asarray(probs).argmax(axis=1)
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


def evaluate_folder(
    folder: Path,
    labels: list[str],
    head: Head,
    cache: BottleneckCache,
    make_extractor: Callable,
    size: int,
    resize: str,
    *,
    workers: int = 0,
    progress: bool = True,
    compute: Callable = compute_features,
    probs_out: dict | None = None,
) -> dict:
    """Metrics of the trained head on every image of a labelled folder (e.g. a held-out set).

    ``compute``: :func:`bottlenecks.compute_features` or a function with its signature (the Ray
    cluster's, :class:`distributed.RayFeatureComputer`). ``probs_out``: gets ``eval_dir``:
    ``(the photos' digests, their labels, the probabilities)``."""
    scan = scan_dataset(folder, validation_pct=0, test_pct=0, min_per_label=1,
                        decode_check=False, progress=progress)
    unknown = sorted(set(scan.labels) - set(labels))
    if unknown:
        raise DatasetError(
            f"{folder} has label folder(s) the model does not know: {', '.join(unknown)} "
            f"(trained labels: {', '.join(labels)})"
        )
    feats = compute([(it.path, it.digest) for it in scan.items], cache, make_extractor,
                    size, resize, workers=workers, progress=progress)
    items = [it for it in scan.items if it.digest in feats.features]
    index = {label: i for i, label in enumerate(labels)}
    y = np.array([index[it.label] for it in items], np.int64)
    x = (np.stack([feats.features[it.digest] for it in items]) if items
         else np.zeros((0, head.feature_dim), np.float32))
    probs = head(x) if len(x) else np.zeros((0, len(labels)))
    result = classification_metrics(y, probs, labels)
    if probs_out is not None:
        probs_out["eval_dir"] = ([it.digest for it in items], y, probs)
    result["folder"] = str(folder)
    result["skipped"] = [{"path": str(s.path), "reason": s.reason} for s in scan.skipped] + [
        {"path": str(it.path), "reason": feats.skipped[it.digest]}
        for it in scan.items if it.digest in feats.skipped
    ]
    return result


def clearly_better(a: np.ndarray, b: np.ndarray, p_value: float = 0.05) -> bool:
    """Whether the model with per-image results ``a`` (True: right) beats the one with ``b`` on
    the same images beyond chance: a one-sided sign test on the images only one of them gets right.

    A validation split is small (tens of images), and the head-only start was early-stopped on it,
    so its score there is optimistic: a difference of an image or two says nothing."""
    wins, losses = int(np.sum(a & ~b)), int(np.sum(~a & b))
    if wins <= losses:
        return False
    n = wins + losses
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n < p_value


# What a split's figure is when it is not the saved model's on photos it never saw: measured before
# the last refit, which trained on them too (refit.py); or the backbone was fine-tuned on them.
FIGURE_FLAGS = ("before_refit", "seen_by_backbone")


def meta_metrics(metrics: dict) -> dict:
    """What the model's description keeps of each split's metrics: the accuracy, the photos and
    the :data:`FIGURE_FLAGS` it has."""
    return {s: {"accuracy": m.get("accuracy"), "n": m.get("n"),
                **{f: True for f in FIGURE_FLAGS if m.get(f)}} for s, m in metrics.items()}


def figure_note(metrics: dict | None) -> str:
    """What a person is told beside a split's figure that is not the saved model's on photos it
    never saw (:data:`FIGURE_FLAGS`); empty for a plain held-out figure."""
    metrics = metrics or {}
    if metrics.get("before_refit"):
        return ("measured with the model before its last refit, which then trained on these "
                "photos too")
    if metrics.get("seen_by_backbone"):
        return "the backbone was fine-tuned on these photos: not a held-out figure"
    return ""


def top_guesses(probs: np.ndarray, y: np.ndarray) -> list[tuple[int, float | None, float | None]]:
    """Each photo's guess (its top label; -1 where none of its probabilities is finite), the
    guess's probability and that of the photo's own label ``y`` (None where not finite)."""
    out = []
    for p, label in zip(np.asarray(probs, np.float64), y, strict=True):
        finite = np.isfinite(p)
        guess = int(np.nanargmax(p)) if finite.any() else -1
        out.append((guess, float(p[guess]) if guess >= 0 else None,
                    float(p[label]) if finite[label] else None))
    return out
