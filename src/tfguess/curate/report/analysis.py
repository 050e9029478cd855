"""The report's analysis: what the model gets wrong and which data is suspect, as plain data.

Reads what ``train`` left in the run folder (the summary, the head inside the model, the cached
features) and returns what ``report.json`` holds. Needs no TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tfguess.core.errors import ReportError
from tfguess.core.fsutil import atomic_write, display_path
from tfguess.core.runfolder import RunFolder
from tfguess.data import hygiene
from tfguess.engine.bottlenecks import BottleneckCache
from tfguess.engine.features import BackboneRef
from tfguess.engine.model import (
    backbone_names,
    ensemble_members,
    member_head,
    read_head,
    read_meta,
)
from tfguess.training.evaluation import top_guesses
from tfguess.training.summary import decisions

ATYPICAL_MAX = 12  # items per gallery in the page (the CSV and JSON hold all)
HYGIENE_FILENAME = "hygiene.json"   # in the run's bottlenecks folder: the data checks, remembered
HYGIENE_VERSION = 1


@dataclass
class Row:
    path: Path
    label: str
    digest: str
    split: str


def _load_features(rows: list[Row], cache: BottleneckCache, run: RunFolder) -> np.ndarray:
    feats = []
    for row in rows:
        hit = cache.get(row.digest)
        if not isinstance(hit, np.ndarray):
            raise ReportError(f"cached features of {display_path(row.path)} are missing (in "
                              f"{display_path(cache.dir)}); "
                              f"train again to rebuild them: tfguess train {run.root}")
        feats.append(hit.astype(np.float32))
    return np.stack(feats) if feats else np.zeros((0, 1), np.float32)


def _cache_of(run: RunFolder, summary: dict) -> BottleneckCache:
    """The feature cache of the model in ``run``; a clear error when the summary and the model
    disagree (a model copied in from elsewhere, or trained with another backbone since)."""
    ref = BackboneRef.from_meta(read_meta(run.require_model())["backbone"])
    if summary.get("bottleneck_key") not in (None, ref.cache_key) or (
            summary.get("backbone", {}).get("weights_id") not in (None, ref.weights_id)):
        raise ReportError(f"{run.summary} does not belong to {run.model} (another backbone or "
                          f"weights): train again: tfguess train {run.root}")
    return BottleneckCache(run.bottlenecks, ref.cache_key)


def _eval_split(summary: dict) -> str:
    for split in ("test", "validation", "train"):
        if summary.get("metrics", {}).get(split, {}).get("n"):
            return split
    return "test"


def _data_hygiene(rows: list[Row], x: np.ndarray, y: np.ndarray, labels: list[str],
                  finite: np.ndarray, folds: int, threshold: float | None) -> dict:
    """Suspected label errors, atypical images and near-duplicates: these depend on the features
    and labels only (not on the head), so a re-train on the same data reuses them
    (:func:`_cached_hygiene`) instead of paying for scikit-learn and cleanlab again."""
    timings = {}
    # Suspected label errors: out-of-sample predictions on all usable images.
    t = time.perf_counter()
    good = np.flatnonzero(finite)
    suspects, oos_accuracy, folds_used = [], None, 0
    present = np.unique(y[good]) if len(good) else np.zeros(0, int)
    counts_good = np.bincount(y[good], minlength=len(labels)) if len(good) else np.zeros(len(labels))
    if len(present) >= 2 and counts_good[present].min() >= 2:
        # Labels with fewer than two usable images cannot be cross-validated: leave them out.
        keep = good[np.isin(y[good], present)]
        remap = {c: i for i, c in enumerate(present)}
        yk = np.array([remap[c] for c in y[keep]])
        folds_used = max(2, min(folds, int(counts_good[present].min())))
        probs = hygiene.out_of_sample_probs(x[keep], yk, len(present), folds_used)
        oos_accuracy = float((probs.argmax(1) == yk).mean())
        for s in hygiene.find_suspects(yk, probs):
            r = rows[keep[s.index]]
            suspects.append({
                "rank": len(suspects) + 1, "path": str(r.path), "digest": r.digest, "split": r.split,
                "given": r.label, "suggested": labels[present[s.suggested]],
                "self_confidence": round(s.self_confidence, 4),
                "suggested_prob": round(s.suggested_prob, 4),
            })
    timings["suspects"] = time.perf_counter() - t

    # The most atypical images (junk, placeholders, something else entirely).
    t = time.perf_counter()
    limit = min(ATYPICAL_MAX, max(3, len(good) // 100))
    outliers = [{"rank": n + 1, "path": str(rows[good[i]].path), "digest": rows[good[i]].digest,
                 "label": rows[good[i]].label, "split": rows[good[i]].split, "score": round(score, 4)}
                for n, (i, score) in enumerate(hygiene.atypical(x[good], limit))]
    timings["atypical"] = time.perf_counter() - t

    # Near-duplicates (different files, near-identical features) and leaks across splits.
    t = time.perf_counter()
    near = []
    if threshold is None:
        threshold = hygiene.calibrate_threshold(x[good]) if len(good) else hygiene.NEAR_DUPLICATE_THRESHOLD
    for i, j, sim in hygiene.near_duplicates(x[good], threshold) if len(good) else []:
        a, b = rows[good[i]], rows[good[j]]
        splits = {a.split, b.split}
        near.append({
            "a": str(a.path), "a_digest": a.digest, "a_label": a.label, "a_split": a.split,
            "b": str(b.path), "b_digest": b.digest, "b_label": b.label, "b_split": b.split,
            "similarity": round(sim, 4),
            "cross_split": len(splits) > 1 and "train" in splits,
            "label_conflict": a.label != b.label,
        })
    timings["near_duplicates"] = time.perf_counter() - t

    return {"suspects": suspects, "oos_accuracy": oos_accuracy, "folds_used": folds_used,
            "good": int(len(good)), "outliers": outliers, "near": near, "threshold": threshold,
            "timings": timings}


def _cached_hygiene(run: RunFolder, rows: list[Row], x: np.ndarray, y: np.ndarray,
                    labels: list[str], finite: np.ndarray, folds: int,
                    threshold: float | None) -> dict:
    """:func:`_data_hygiene`, remembered in ``bottlenecks/hygiene.json`` under a digest of
    everything it depends on (features, labels, paths, splits, settings)."""
    h = hashlib.sha256(f"v{HYGIENE_VERSION}|{folds}|{threshold}|{labels}".encode())
    for r in rows:  # a file name's own bytes, whether UTF-8 or not
        h.update(os.fsencode(r.path) + f"|{r.label}|{r.digest}|{r.split}\n".encode())
    h.update(np.ascontiguousarray(x).tobytes())
    key = h.hexdigest()
    path = run.bottlenecks / HYGIENE_FILENAME
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("key") == key:
            return {**cached["result"], "timings": {"cached": 0.0}}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    result = _data_hygiene(rows, x, y, labels, finite, folds, threshold)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps({"key": key, "result": result}))
    except OSError:
        pass  # only a cache
    return result


def analyse(tf_files: str | Path, threshold: float | None = None,
            folds: int = hygiene.CV_FOLDS) -> dict:
    """Everything the report shows, as plain data (what ``report.json`` holds).

    ``threshold``: cosine similarity for near-duplicates (default: calibrated on the data,
    :func:`hygiene.calibrate_threshold`).
    """
    run = RunFolder.at(tf_files)
    t0 = time.perf_counter()
    summary = run.read_summary()
    labels: list[str] = summary["labels"]
    rows, x, y, finite, warnings_ = _load_rows(run, summary)
    timings = {"load": time.perf_counter() - t0}
    split = _eval_split(summary)
    metrics = summary.get("metrics", {}).get(split, {"n": 0, "accuracy": None})
    meta = read_meta(run.model)
    recorded = (summary.get("before_refit") or {}).get(split)
    guesses = (_recorded_guesses(recorded) if recorded else
               _model_guesses(_model_probs(run, meta, rows, x), rows, y, split))
    misclassified = _misclassified(guesses, rows, y, labels, split)
    hyg = _cached_hygiene(run, rows, x, y, labels, finite, folds, threshold)
    timings.update(hyg["timings"])
    near = hyg["near"]
    imbalance = _imbalance(summary, labels)
    worst = _worst_label(metrics)
    timings["total"] = time.perf_counter() - t0
    return {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tf_files": str(run.root),
        "image_dir": str(run.image_dir(summary)),
        "backbone": backbone_names(meta),
        "mode": summary.get("mode", "frozen"),
        "labels": labels,
        "eval_split": split,
        "metrics": metrics,
        "worst_label": worst,
        "all_metrics": {s: {"n": m.get("n"), "accuracy": m.get("accuracy")}
                        for s, m in summary.get("metrics", {}).items()},
        "eval_dir": summary.get("metrics", {}).get("eval_dir"),
        "precision": summary.get("precision"),   # what guessing runs, and why
        "decisions": decisions(summary),          # the recipe, resize, fine-tuning, guessing
        "best_epoch": summary.get("best_epoch"),
        "imbalance": imbalance,
        "misclassified": misclassified,
        "suspects": hyg["suspects"],
        "suspect_method": _suspect_method(hyg),
        "atypical": hyg["outliers"],
        "exact_duplicates": [{"kept": str(run.resolve(a)), "duplicate": str(run.resolve(b))}
                             for a, b in summary.get("duplicates", [])],
        "conflicts": summary.get("conflicts", []),
        "near_duplicates": {"threshold": hyg["threshold"], "pairs": near,
                            "cross_split": sum(p["cross_split"] for p in near)},
        "skipped": _skipped(run, summary),
        "notes": summary.get("notes", []),
        "warnings": warnings_,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }


def _load_rows(run: RunFolder, summary: dict):
    """The images of the run's splits (:class:`Row`), their cached features ``x``, label indices
    ``y``, which feature vectors are ``finite``, and the warnings about them."""
    index = {label: i for i, label in enumerate(summary["labels"])}
    rows = [Row(path, label, digest, split) for split, path, label, digest in run.split_rows(summary)]
    x = _load_features(rows, _cache_of(run, summary), run)
    y = np.array([index[r.label] for r in rows], dtype=np.int64)
    finite = np.isfinite(x).all(axis=1) if len(rows) else np.zeros(0, bool)
    warnings_ = []
    if len(rows) and not finite.all():
        warnings_.append(f"{int((~finite).sum())} of {len(rows)} cached feature vectors are not finite "
                         "(NaN/inf): the backbone produced invalid features; suspects and near-duplicates "
                         "leave them out. Delete TF_FILES/bottlenecks and train again.")
    return rows, x, y, finite, warnings_


def _model_probs(run: RunFolder, meta: dict, rows: list[Row], x: np.ndarray) -> np.ndarray:
    """The model's probabilities on ``rows`` (cached features ``x``): its head's, and for an
    ensemble the mean with its other members' heads (those in the file), each on its own cached
    features (its run folder's cache)."""
    from tfguess.training.ensemble import member_folder

    members = ensemble_members(meta)
    probs = read_head(run.model)(x)
    for index, member in enumerate(members, start=1):
        folder = RunFolder.at(member_folder(run, index))
        cache = BottleneckCache(folder.bottlenecks,
                                BackboneRef.from_meta(member["backbone"]).cache_key)
        probs = probs + member_head(run.model, member)(_load_features(rows, cache, folder))
    return probs / (1 + len(members))


def _misclassified(guesses: dict[str, tuple], rows: list[Row], y: np.ndarray, labels: list[str],
                   split: str) -> list[dict]:
    """The wrong guesses on the evaluation ``split``, the most confident first. ``guesses``: a
    photo's digest to its guess, the guess's probability and its label's
    (:func:`~tfguess.training.evaluation.top_guesses`)."""
    out = []
    for i, row in enumerate(rows):
        guess = guesses.get(row.digest) if row.split == split else None
        if guess is None or guess[0] == y[i]:
            continue
        pred, score, label_score = guess
        out.append({"path": str(row.path), "digest": row.digest, "label": row.label,
                    "predicted": labels[pred] if pred >= 0 else None, "score": score,
                    "label_score": label_score})
    return sorted(out, key=lambda m: -(m["score"] or 0))


def _model_guesses(probs: np.ndarray, rows: list[Row], y: np.ndarray,
                   split: str) -> dict[str, tuple]:
    """The saved model's guesses on the ``split`` photos (``probs``: on every row)."""
    sel = [i for i, r in enumerate(rows) if r.split == split]
    return dict(zip([rows[i].digest for i in sel], top_guesses(probs[sel], y[sel]), strict=True))


def _recorded_guesses(recorded: dict) -> dict[str, tuple]:
    """The guesses of the model before its last refit (:mod:`tfguess.training.refit`), as the run
    summary recorded them (the saved model trained on those photos too)."""
    return dict(zip(recorded["digests"], zip(recorded["guess"], recorded["score"],
                                             recorded["label_score"], strict=True), strict=True))


def _suspect_method(hyg: dict) -> dict:
    """How the suspected label errors were found."""
    oos_accuracy = hyg["oos_accuracy"]
    return {
        "model": "logistic regression on L2-normalised cached features",
        "folds": hyg["folds_used"],
        "images": hyg["good"],
        "out_of_sample_accuracy": None if oos_accuracy is None else round(oos_accuracy, 4),
        "ranking": "cleanlab.filter.find_label_issues, ranked by self-confidence",
    }


def _imbalance(summary: dict, labels: list[str]) -> dict:
    """Images per label and split, per label, and the largest over the smallest label."""
    counts = summary.get("counts", {})
    totals = {label: int(sum(counts.get(label, {}).values())) for label in labels}
    nonzero = [n for n in totals.values() if n]
    return {"counts": counts, "totals": totals,
            "ratio": round(max(nonzero) / min(nonzero), 2) if nonzero else None}


def _worst_label(metrics: dict) -> str | None:
    """The measured label with the lowest F1 (by name on a tie)."""
    per_label = metrics.get("per_label", {})
    measured = [k for k, v in per_label.items() if v["support"]]
    return min(measured, key=lambda k: (per_label[k]["f1"], k)) if measured else None


def _skipped(run: RunFolder, summary: dict) -> list[dict]:
    """The files training skipped, then those of the evaluation folder."""
    return [{**s, "path": str(run.resolve(s["path"]))} for s in summary.get("skipped", [])] + [
        {**s, "reason": f"{s['reason']} (evaluation folder)"}
        for s in summary.get("metrics", {}).get("eval_dir", {}).get("skipped", [])]
