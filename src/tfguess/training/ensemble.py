"""The ensemble: a second backbone fine-tuned like the first, their probabilities averaged.

When the time plan holds more than the best recipe (:func:`plan.with_ensemble`), or the time the
first member leaves holds a second one by the first's own time on this machine, the run trains a
second member after the first: EfficientNet-Lite2 at the first member's input size and resize
(what the first run measured on the photos), fine-tuned and refitted like it, in its own run
folder ``TF_FILES/ensemble/member1`` (its cache and summary, what a re-train uses). Two backbones
make different mistakes: on cub_songbirds22 the mean of two fine-tuned backbones' probabilities
got 617 of 660 val photos right, the better one alone 608 (docs/benchmarks.md).

The decision is made on the validation split, with the models that made the other decisions
(before their refits): the ensemble is kept unless the first member alone is clearly better there
(:func:`evaluation.clearly_better`, the sign test on the photos only one gets right); on a small
split one or two photos decide nothing, and the prior is the ensemble, planned for its measured
gain. Kept, the second member's file goes inside the model (:func:`model.save_ensemble`): one
file still, which ``guess``, ``serve`` and every export read as one model. A re-train with
``--head-only`` (the review page's Re-train) refits both heads and puts them together again.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tfguess.core.errors import TfguessError
from tfguess.core.fsutil import display_path
from tfguess.core.runfolder import MODEL_FILENAME, RunFolder
from tfguess.training import unchanged
from tfguess.training.evaluation import (
    FIGURE_FLAGS,
    classification_metrics,
    clearly_better,
    meta_metrics,
)

MEMBERS_DIRNAME = "ensemble"


def member_folder(run: RunFolder, index: int = 1) -> Path:
    """The run folder of the model's member ``index`` (1: the second; the first is the run's own)."""
    return run.root / MEMBERS_DIRNAME / f"member{index}"


def is_ensemble(model: Path) -> bool:
    """Whether the model at ``model`` (if any) is an ensemble."""
    from tfguess.engine.model import ensemble_members, read_meta

    try:
        return bool(ensemble_members(read_meta(model)))
    except Exception:  # noqa: BLE001 - no model or a damaged one: not an ensemble to keep
        return False


def second_member(run: RunFolder, config, result, time_plan, was_ensemble: bool, t0: float,
                  digest: str | None, train_one: Callable, progress: bool,
                  log: Callable[[str], None]):
    """``result`` made an ensemble where the plan holds one (or, ``--head-only``, where the model
    was one): the second member trained in :func:`member_folder`, kept or not on the validation
    split, and the model, metrics and run summary of what was kept. Otherwise ``result``."""
    if was_ensemble:
        return _retrain(run, config, result, t0, digest, train_one, progress, log)
    second = time_plan and (time_plan.second or time_plan.second_if_time)
    if not second:
        return result
    from tfguess.training.plan import Plan

    backbone = result.summary.get("backbone") or {}
    left = config.time_limit - (time.perf_counter() - t0)
    why, timing = _room(time_plan, second, result.summary, left)
    if why:
        log(f"No ensemble: {why}")
        return _record(run, result, {"built": False, "why": why, "time": timing}, None, digest, t0)
    settings = {**second.recipe.settings(), "image_size": backbone["input_size"],
                "resize": backbone["resize"], "time_limit": left, "weights": None,
                "tfhub_module": None}
    member_config = dataclasses.replace(_absolute(config, run), **settings)
    plan = Plan(second, left, time_plan.speed, True, time_plan.images, time_plan.train_images,
                time_plan.eval_images)
    folder = member_folder(run)
    log(f"Ensemble: training the second member ({second.recipe.name}, {backbone['resize']}) in "
        f"{display_path(folder)}, {left:.0f} s left of the time limit")
    t = time.perf_counter()
    try:
        member = train_one(folder, member_config, progress, _prefixed(log), member_plan=plan,
                           member=True)
    except (TfguessError, OSError) as exc:   # e.g. lite2's weights cannot be had offline
        why = f"the second member failed ({exc.__class__.__name__}: {exc}); the model is the first"
        log(f"No ensemble: {why}")
        return _record(run, result, {"built": False, "why": why, "time": timing}, None, digest,
                       t0)
    decision = decide(result.heldout, member.heldout, result.summary, member.summary)
    decision.update(seconds=round(time.perf_counter() - t, 1), time=timing)
    log(("Ensemble kept: " if decision["kept"] else "No ensemble: ") + decision["why"])
    if not decision["kept"]:
        return _record(run, result, {"built": False, **decision}, None, digest, t0)
    return _combine(run, result, member, {"built": True, **decision}, digest, t0, log)


def _room(time_plan, second, first_summary: dict, left: float) -> tuple[str | None, dict]:
    """Why the plan's ``second`` member is not trained now (None: it is), and the time it needs
    against the ``left`` seconds: the plan's estimate where both members fitted it, else the
    first member's own time here, scaled (:func:`plan.second_member_seconds`)."""
    from tfguess.training.plan import second_member_seconds

    needed = second.seconds if time_plan.second else second_member_seconds(
        time_plan, first_summary.get("timings_s") or {})
    timing = {"needed_s": round(needed, 1), "left_s": round(max(0.0, left), 1),
              "by": "the plan's estimate" if time_plan.second else "the first member's time here, "
              "scaled by the two members' estimates"}
    if (first_summary.get("backbone") or {}).get("name") == second.recipe.backbone:
        return f"the first member is {second.recipe.backbone} already", timing   # measured so
    if left < needed:
        return (f"about {needed:.0f} s needed"
                + ("" if time_plan.second else " (the first member's time here, scaled)")
                + f", {max(0.0, left):.0f} s left of the time limit"), timing
    return None, timing


def _retrain(run: RunFolder, config, result, t0: float, digest: str | None, train_one: Callable,
             progress: bool, log: Callable[[str], None]):
    """``--head-only`` on an ensemble: the second member's head too, then both together again."""
    folder = member_folder(run)
    if not (folder / MODEL_FILENAME).is_file():
        why = (f"its second member's run folder {display_path(folder)} is missing: the model now "
               "has its first backbone alone (train without --head-only for the ensemble)")
        log(f"Re-trained the head of the first member only: {why}")
        return _record(run, result, {"built": False, "why": why}, None, digest, t0)
    member = train_one(folder, _absolute(config, run), progress, _prefixed(log), member=True)
    return _combine(run, result, member, {"built": True, "why": "re-trained heads (--head-only) "
                                          "of the ensemble's two members"}, digest, t0, log)


def _absolute(config, run: RunFolder):
    """``config`` for a member's run folder: the same photos and evaluation folder, always
    trained (its inputs are the first member's), no report of its own."""
    image_dir = Path(config.image_dir).expanduser().resolve() if config.image_dir else run.data
    eval_dir = str(Path(config.eval_dir).expanduser().resolve()) if config.eval_dir else None
    return dataclasses.replace(config, image_dir=str(image_dir), eval_dir=eval_dir, force=True,
                               report=False, summaries_dir=None)


def _prefixed(log: Callable[[str], None]) -> Callable[[str], None]:
    return lambda text: log(f"  [second member] {text}")


def _aligned(first: tuple, second: tuple) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
    """The photos both have (their digests, in the first's order), their labels and both
    members' probabilities."""
    keys, y, p1 = first
    where = {k: i for i, k in enumerate(second[0])}
    both = [i for i, k in enumerate(keys) if k in where]
    p2 = second[2][[where[keys[i]] for i in both]] if both else np.zeros((0, p1.shape[1]))
    return [keys[i] for i in both], np.asarray(y)[both], np.asarray(p1)[both], np.asarray(p2)


def decide(first: dict, second: dict, first_summary: dict, second_summary: dict) -> dict:
    """Whether the ensemble is kept, and why: on the validation split (``first``/``second``:
    :attr:`TrainResult.heldout`), the ensemble unless the first member alone is clearly better."""
    if not len(first.get("validation", ((), ()))[1]):
        return {"kept": True, "why": "no validation split to compare it on: the plan's ensemble "
                "stands (--validation-pct 0)"}
    _, y, p1, p2 = _aligned(first["validation"], second["validation"])
    right1, right2 = p1.argmax(1) == y, p2.argmax(1) == y
    right = (p1 + p2).argmax(1) == y
    kept = not clearly_better(right1, right)
    names = [(s.get("backbone") or {}).get("name", "?") for s in (first_summary, second_summary)]
    why = (f"on the {len(y)} validation photos the ensemble got {int(right.sum())} right, "
           f"{names[0]} alone {int(right1.sum())}, {names[1]} alone {int(right2.sum())}; "
           + ("the first alone is not better beyond chance (sign test), so the ensemble stands"
              if kept else "the first alone is clearly better (sign test): it stands alone"))
    return {"kept": kept, "why": why, "validation": {
        "n": len(y), "ensemble": int(right.sum()), "first": int(right1.sum()),
        "second": int(right2.sum())}}


def _combine(run: RunFolder, result, member, decision: dict, digest: str | None, t0: float,
             log: Callable[[str], None]):
    """The second member's model put into the first's file, and the ensemble's metrics (the mean
    of the members' probabilities on each split and the evaluation folder) in the summary."""
    from tfguess.engine.model import save_ensemble
    from tfguess.training.summary import before_refit

    metrics, heldout = dict(result.metrics), {}
    for split, first in result.heldout.items():
        if split in member.heldout and split in metrics:
            keys, y, p1, p2 = _aligned(first, member.heldout[split])
            extra = {k: v for k, v in metrics[split].items() if k in ("folder", "skipped")}
            extra.update({f: True for f in FIGURE_FLAGS   # either member's figure is flagged
                          if metrics[split].get(f) or (member.metrics.get(split) or {}).get(f)})
            metrics[split] = {**classification_metrics(y, (p1 + p2) / 2, result.labels), **extra}
            heldout[split] = (keys, y, (p1 + p2) / 2)
    save_ensemble(result.model_path, [member.model_path], {"decision": decision["why"]},
                  meta_metrics(metrics))
    members = {"members": [result.summary.get("backbone"), member.summary.get("backbone")],
               "member_folder": str(member_folder(run)),
               "first_metrics": {s: (m or {}).get("accuracy") for s, m in result.metrics.items()},
               "member_metrics": {s: (m or {}).get("accuracy") for s, m in member.metrics.items()}}
    log(f"The model averages two fine-tuned backbones: validation {metrics['validation'].get('accuracy')}"
        + (f", {metrics['eval_dir']['folder']} {metrics['eval_dir']['accuracy']}"
           if "eval_dir" in metrics else ""))
    return _record(run, dataclasses.replace(result, metrics=metrics), {**decision, **members},
                   metrics, digest, t0, before_refit(metrics, heldout))


def _record(run: RunFolder, result, ensemble: dict, metrics: dict | None, digest: str | None,
            t0: float, before_refit: dict | None = None):
    """``result`` with ``ensemble`` (and ``metrics``, and the guesses of the splits measured
    before the refits) in its run summary, written again with the model's new stamps (a re-run
    of the same inputs does nothing) and the run's whole time."""
    timings = {**(result.summary.get("timings_s") or {})}
    timings["first_member"] = timings.get("total")
    timings["total"] = round(time.perf_counter() - t0, 3)
    summary = {**result.summary, "ensemble": ensemble, "timings_s": timings}
    if metrics is not None:
        summary = {k: v for k, v in summary.items() if k != "before_refit"}
        summary.update(metrics=metrics, **(before_refit or {}))
    run.write_summary({**summary, "inputs": unchanged.record(run, digest)})
    return dataclasses.replace(result, summary=summary)
