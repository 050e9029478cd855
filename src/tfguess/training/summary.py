"""What ``run_summary.json`` records of a training run (:func:`run_summary`), and what the end of a
run says (:func:`report`)."""

from __future__ import annotations

import math
import platform
from collections.abc import Callable
from pathlib import Path

from tfguess.core.config import TrainConfig
from tfguess.core.runfolder import RunFolder
from tfguess.data.dataset import SPLITS, DatasetScan
from tfguess.engine.runtime import runtime_name
from tfguess.training.evaluation import top_guesses
from tfguess.training.extraction import Features, SplitData
from tfguess.training.head import FitResult
from tfguess.training.plan import HEADROOM, RECIPES, Recipe, estimate, format_seconds
from tfguess.training.throughput import Speed, speed


def fine_tune_summary(result) -> dict | None:
    """What run_summary.json records of a fine-tuning run."""
    if result is None:
        return None
    return {
        "device": result.device,
        "augment": result.augment,
        "best_epoch": result.best_epoch,
        "epochs_averaged": result.epochs_averaged,
        "epochs_run": sum(isinstance(h["epoch"], int) and h["epoch"] > 0 for h in result.history),
        "seconds": round(result.seconds, 1),
        "images_per_second": round(result.images_per_second, 1),
        "cached_views": getattr(result, "cached_views", 0),
        "views_seconds": round(getattr(result, "views_seconds", 0.0), 1),
        "stopped_early": getattr(result, "stopped_early", False),
        "unfrozen_layers": len(result.unfrozen),
        "weights_id": result.weights_id,
        "history": result.history,
    }


def run_summary(run: RunFolder, config: TrainConfig, image_dir: Path, scan: DatasetScan,
                data: SplitData, features: Features, fit: FitResult, fine_tuned, metrics: dict, *,
                choices: dict, backbone: dict, precision: dict, calibration_images: list[str],
                timings: dict[str, float]) -> dict:
    """The run summary. ``features``: those the metrics were computed on (the fine-tuned
    backbone's, if any); ``choices``: the summaries of ``time_limit``, ``auto_backbone`` and
    ``auto_resize`` (None: not chosen); ``backbone``: the model's backbone block."""
    feats, splits, labels = features.result, data.splits, data.labels
    return {
        "image_dir": run.store(image_dir),
        "config": config.to_dict(),
        "mode": config.mode,
        "fine_tune": fine_tune_summary(fine_tuned),
        "time_limit": choices["time_limit"],
        "auto_backbone": choices["auto_backbone"],
        "auto_resize": choices["auto_resize"],
        "backbone": backbone,
        "engine": "tflite (ray)" if config.ray and feats.computed else features.extractor.name,
        "precision": precision,
        "runtime": runtime_name(),
        "bottleneck_key": features.cache.key,
        "calibration_images": calibration_images,
        "labels": labels,
        "counts": {label: {split: sum(1 for it in splits[split] if it.label == label) for split in SPLITS}
                   for label in labels},
        "features": {"computed": feats.computed, "cached": feats.cached},
        "skipped": [{**s, "path": run.store(s["path"])} for s in data.skipped],
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


def before_refit(metrics: dict, heldout: dict) -> dict:
    """What the run summary keeps of the splits whose figures are the model's before its refit
    (:mod:`refit`; ``before_refit`` in their metrics): each photo's guess, its probability and
    that of the photo's label, so that the report shows that model's mistakes (the saved one has
    trained on those photos). ``heldout``: :attr:`TrainResult.heldout`."""
    out = {}
    for split, m in metrics.items():
        if not (m or {}).get("before_refit") or split not in heldout:
            continue
        digests, y, probs = heldout[split]
        guesses = top_guesses(probs, y)
        out[split] = {"digests": list(digests), "guess": [g for g, _, _ in guesses],
                      "score": [_rounded(s) for _, s, _ in guesses],
                      "label_score": [_rounded(s) for _, _, s in guesses]}
    return {"before_refit": out} if out else {}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def decisions(summary: dict) -> list[dict]:
    """What the run chose and why, from its summary: the recipe, the backbone, the resize,
    fine-tuning's result, the ensemble and the guessing engine (``{"what", "chosen", "why"}`` each; the report lists them)."""
    config = summary.get("config") or {}
    plan, out, picked = summary.get("time_limit"), [], summary.get("auto_backbone")
    if plan:
        total = (summary.get("timings_s") or {}).get("total")
        two = plan.get("ensemble")   # planned; the "ensemble" decision below says if it was kept
        both = two and not two.get("if_time_left")   # both fit by the estimate
        then = (f", then {two['second']}" + ("" if both else " if the time left holds it")
                if two else "")
        moved = picked and picked.get("prior") not in (None, picked.get("chosen"))
        out.append({"what": "recipe", "chosen": plan.get("recipe") + then, "why": (
            ("its backbone and size measured on the photos (below), the rest of " if moved else "")
            + f"the most accurate recipe on the development sets that fits "
            f"{plan.get('limit_s', 0) / 60:g} min here (estimated "
            f"{two['estimated_s'] if both else plan.get('estimated_s')} s"
            + (f", took {total:.0f} s" if total else "") + ")")})
    else:
        why = ("--head-only: the head again on the model's own backbone" if config.get("head_only")
               else "--quick" if config.get("quick") else "the settings given (no time plan)")
        out.append({"what": "recipe", "chosen": summary.get("mode"), "why": why})
    if picked:   # the time plan's backbone measured on the photos, or --backbone auto
        out.append({"what": "backbone", "chosen": picked["chosen"], "why": picked.get("why") or (
            "--backbone auto: the best cross-validated accuracy of the offline backbones")})
    elif plan and plan.get("unmeasured"):
        out.append({"what": "backbone", "chosen": "the plan's", "why": plan["unmeasured"]})
    auto = summary.get("auto_resize")
    resize = (summary.get("backbone") or {}).get("resize")
    out.append({"what": "resize", "chosen": resize,
                "why": (auto.get("why") or auto.get("rule")) if auto else "--resize given"})
    ft = summary.get("fine_tune")
    if ft:
        rows = [h for h in ft.get("history") or [] if "val_accuracy" in h]
        start = next((h["val_accuracy"] for h in rows if h.get("epoch") == 0), None)
        end = rows[-1]["val_accuracy"] if rows else None
        kept = ft.get("weights_id") is None
        out.append({"what": "fine-tuning",
                    "chosen": "the head-only start kept" if kept else "the fine-tuned backbone",
                    "why": f"validation accuracy {start} before fine-tuning, {end} after; the "
                           "start is kept only when clearly better (a sign test, p < 0.05)"})
    again = summary.get("refit")
    if again:
        test = again.get("test_photos")
        out.append({"what": "fine-tuning again on the held-out photos too",
                    "chosen": "done" if again.get("done") else "not done",
                    "why": (f"{again.get('photos')} photos, {again.get('seconds')} s; "
                            + (f"the {test} test photos too: the test figure is the model's before "
                               "this refit (--hold-out-test keeps them out)" if test else
                               "the test split stays held out") if again.get("done")
                            else again.get("why"))})
    ensemble = summary.get("ensemble")
    if ensemble:
        spent, why = ensemble.get("time"), ensemble.get("why")
        if spent and ensemble.get("built"):   # a refusal says its time in its why already
            why = (f"about {spent['needed_s']:.0f} s needed by {spent['by']}, "
                   f"{spent['left_s']:.0f} s left; {why}")
        out.append({"what": "ensemble",
                    "chosen": "two backbones, probabilities averaged" if ensemble.get("built")
                    else "one backbone", "why": why})
    precision = summary.get("precision") or {}
    if precision:
        out.append({"what": "guessing", "chosen": precision.get("guess", "float32"),
                    "why": (precision.get("int8_check") or {}).get("why") or precision.get("cpu")
                    or f"--precision {precision.get('setting')}"})
    return out


def report(run: RunFolder, config: TrainConfig, data: SplitData, metrics: dict, model_path: Path,
           seconds: float, log: Callable[[str], None]) -> None:
    """The end of a run: the mode, the accuracy of each split, the hint that fine-tuning would
    help when the frozen features look weak, and what was written."""
    acc = {s: metrics[s].get("accuracy") for s in SPLITS}
    log(f"Mode: {config.mode}")
    seen = [s for s in ("validation", "test") if metrics[s].get("before_refit")]
    log(f"Accuracy: train {acc['train']}, validation {acc['validation']}, test {acc['test']} "
        f"(test n={metrics['test']['n']}" + (f"; {' and '.join(seen)}: the model before its last "
                                             "refit, which trained on those photos too)" if seen
                                             else ")"))
    if not config.fine_tune and not config.plans:
        hint = weak_features_hint(acc["train"], acc["validation"], len(data.usable),
                                  len(data.splits["train"]), run.summary)
        if hint:
            log(hint)
    log(f"Wrote {model_path}, {run.labels}, {run.summary.name}, {run.history.name} "
        f"in {seconds:.1f} s")


# The frozen features are weak (the end of a run says what fine-tuning would add) when validation
# accuracy is this far below the training accuracy.
WEAK_GAP = 0.05


def fine_tune_hint(train_accuracy: float | None, val_accuracy: float | None, images: int,
                   train_images: int, speed: Speed) -> str | None:
    """What fine-tuning would likely add when the frozen features are weak (validation accuracy
    well below the training accuracy), and how long it would take; None otherwise."""
    if not _weak(train_accuracy, val_accuracy):
        return None
    default = next(r for r in RECIPES if not r.fine_tune and r.image_size == 224 and r.views == 2)
    ft = next(r for r in RECIPES if r.fine_tune and r.backbone == "efficientnet_lite0" and r.image_size == 224)
    best = max(RECIPES, key=lambda r: r.value)
    t_ft = estimate(ft, images, train_images, 0, speed).seconds
    t_best = estimate(best, images, train_images, 0, speed).seconds

    def gain(r: Recipe) -> str:
        return f"{100 * (r.scores[0] - default.scores[0]):.1f} points"

    return (f"The frozen features are weak here (validation accuracy {val_accuracy:.3f} against "
            f"{train_accuracy:.3f} on the training images). --fine-tune added {gain(ft)} on a "
            f"fine-grained development set (cub_songbirds22) and would take about "
            f"{format_seconds(t_ft)} here; --fine-tune --image-size {best.image_size} added "
            f"{gain(best)} there, about {format_seconds(t_best)}. Without --quick, train plans the best recipe that "
            f"fits a time budget (5 min unless --time-limit says otherwise; e.g. --time-limit "
            f"{math.ceil(t_best / HEADROOM / 60)}m for that one).")


def _weak(train_accuracy: float | None, val_accuracy: float | None) -> bool:
    return (train_accuracy is not None and val_accuracy is not None
            and train_accuracy - val_accuracy >= WEAK_GAP)


def weak_features_hint(train_accuracy, val_accuracy, images: int, train_images: int,
                       summary_path: Path) -> str | None:
    """:func:`fine_tune_hint` with this machine's throughput (measured only when the features are
    weak: it samples the machine for half a second)."""
    if not _weak(train_accuracy, val_accuracy):
        return None
    return fine_tune_hint(train_accuracy, val_accuracy, images, train_images, speed(summary_path))
