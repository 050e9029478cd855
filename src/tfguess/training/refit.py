"""The fine-tuning again on every labelled photo, once the decisions are made.

The validation split is held out to make the run's decisions: when to stop the head, and whether
the fine-tuned backbone beats the head-only start; the test split, to measure the model that made
them. Once both are done, their photos are more training data: on cub_songbirds22 (647 photos),
training on 90 % of the photos instead of 80 % gave 599 of 660 val photos right instead of 592,
and on all of them 608. Under a time plan, when the fine-tuning was kept and the time left allows
it (the first fine-tuning's measured time, scaled by the photos, plus the features of the new
backbone, within the limit), the same recipe is fine-tuned again from the stock backbone on the
training, validation and test photos, and that model is saved. Its held-out figures are those of
the first model, measured before the refit and recorded as such (``before_refit`` in the
metrics): an honest estimate of a model that then learned from more photos, not a figure of the
saved model on photos it has seen. ``--hold-out-test`` keeps the test photos out of the refit (the
test figure is then the saved model's own); ``--eval-dir`` photos never train.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

from tfguess.core.config import TrainConfig
from tfguess.core.runfolder import RunFolder
from tfguess.training.backbone_ref import LazyBackbone
from tfguess.training.evaluation import classification_metrics
from tfguess.training.extraction import Features, SplitData, refeature

MARGIN_S = 10.0   # building the second backbone, the head's scores, saving


def refit_epochs(first, seconds: dict[str, float], n_train: int, n_val: int, config: TrainConfig,
                 left: float) -> tuple[int, float]:
    """The epochs of the first fine-tuning when their estimate fits ``left`` seconds, and that
    estimate; ``(0, the estimate)`` when it does not. The same schedule on more photos, or none:
    a shorter one replaced a longer one at a loss (brain_mri4: 4 epochs after 9, 4 val photos
    fewer right). The estimate: the first fine-tuning's epochs, measured, scaled by the photos, the
    views of the validation photos (those of the training photos are reused) or of all when the
    first kept none, plus the new backbone's features and a margin."""
    scale = (n_train + n_val) / max(1, n_train)
    ran = max(1, sum(isinstance(h["epoch"], int) and h["epoch"] > 0 for h in first.history)) \
        if first is not None else 1
    views = getattr(first, "views_seconds", 0.0) if first is not None else 0.0
    per_epoch = max(0.0, seconds.get("fine_tune", 0.0) - views) / ran
    reused = first is not None and getattr(first, "views_cache", None) is not None
    fixed = ((scale - 1 if reused else scale) * views + seconds.get("fine_tune_features", 0.0)
             + MARGIN_S)

    def needed(epochs: int) -> float:
        return fixed + scale * per_epoch * epochs

    epochs = config.fine_tune_epochs
    return (epochs if needed(epochs) <= left else 0), needed(epochs)


@dataclasses.dataclass
class Refit:
    fine_tuned: object | None      # the second FineTuneResult; None: not refitted
    features: Features
    data: SplitData
    summary: dict                  # what run_summary.json records under "refit"
    # the first model's metrics (marked before_refit) and probabilities, photo by photo, on each
    # split the refit trained on: the validation split, and the test split unless --hold-out-test
    before: dict[str, tuple[dict, object]] = dataclasses.field(default_factory=dict)
    backbone: LazyBackbone | None = None     # the second fine-tuned backbone: the model's


def refit(run: RunFolder, spec, config: TrainConfig, start_head, stock: tuple[Features, SplitData],
          tuned: tuple[Features, SplitData, object], t0: float, seconds: dict[str, float],
          progress: bool, log: Callable[[str], None]) -> Refit:
    """``tuned`` (the fine-tuned features, data and FineTuneResult) again on the training,
    validation and (unless ``--hold-out-test``) test photos when there is time (see the module
    docstring); else ``tuned`` as it is.
    ``stock``: the stock backbone's features and data; ``seconds``: the run's timings so far."""
    features, data, first = tuned
    val, train = data.splits["validation"], data.splits["train"]
    test = [] if config.hold_out_test else data.splits["test"]
    left = config.time_limit - (time.perf_counter() - t0)
    epochs, needed = refit_epochs(first, seconds, len(train), len(val) + len(test), config, left)
    if not val or not epochs or features.ref.precision != "float32":
        why = ("no validation split" if not val else "int8 features (--precision int8)"
               if features.ref.precision != "float32" else
               f"about {needed:.0f} s needed, {max(0.0, left):.0f} s left of the time limit")
        log(f"Not fine-tuned again on the held-out photos too: {why}")
        return Refit(None, features, data, {"done": False, "why": why})
    before = {s: _measured(first, data, s) for s in ("validation", "test") if s != "test" or test}
    photos = "training, validation and test" if test else "training and validation"
    log(f"Fine-tuning again on the {photos} photos ({len(train) + len(val) + len(test)}; the "
        f"decisions are made and measured), {epochs} epochs: about {needed:.0f} s of the "
        f"{left:.0f} s left")
    from tfguess.training.finetune import fine_tune
    from tfguess.training.plan import fine_tune_deadline

    stock_features, stock_data = stock
    merged = dataclasses.replace(stock_data, splits={
        **stock_data.splits, "train": train + val + test, "validation": [],
        **({"test": []} if test else {})})
    per_image = seconds.get("fine_tune_features", 0.0) / max(1, len(data.usable))
    deadline = fine_tune_deadline(t0, config.time_limit, len(data.usable), per_image)
    backbone = LazyBackbone(spec, config.weights)   # from the stock weights again
    t = time.perf_counter()
    second = fine_tune(backbone(), start_head, merged.pairs("train"), [], len(data.labels),
                       dataclasses.replace(config, fine_tune_epochs=epochs),
                       stock_features.ref.input_size, stock_features.ref.resize, progress, log,
                       deadline=deadline, views_from=first.views_cache)
    first.views_cache = second.views_cache = None   # the activations are let go
    if not second.weights_id:   # nothing ran before the deadline: the first model stands
        return Refit(None, features, data, {"done": False, "why": "no epoch fitted the time left"})
    new_features, new_data = refeature(run, stock_features, second.weights_id, backbone, stock_data,
                                       config, progress, log)
    summary = {"done": True, "photos": len(train) + len(val) + len(test),
               "test_photos": len(test), "seconds": round(time.perf_counter() - t, 1),
               "weights_id": second.weights_id,
               "epochs_run": sum(isinstance(h["epoch"], int) and h["epoch"] > 0
                                 for h in second.history),
               **{f"{split}_accuracy_before": m["accuracy"] for split, (m, _) in before.items()}}
    return Refit(second, new_features, new_data, summary, before=before, backbone=backbone)


def _measured(first, data: SplitData, split: str) -> tuple[dict, object]:
    """The first model's metrics on ``split`` (marked ``before_refit``) and its probabilities
    there, photo by photo."""
    x, y = data.arrays[split]
    probs = first.head(x)
    return {**classification_metrics(y, probs, data.labels), "before_refit": True}, probs


def held_out_figures(refitted: Refit | None, metrics: dict, heldout: dict,
                     head_only_model: Path | None) -> bool:
    """``metrics`` and ``heldout`` (:attr:`TrainResult.heldout`) with, in place, the figures and
    probabilities of the model before ``refitted``'s refit on the splits it trained on; with
    ``head_only_model`` (``--head-only``), its test figure marked ``seen_by_backbone`` when that
    model's backbone was refitted on the test photos. Returns whether the backbone of the model
    being saved has trained on the test photos (its description records it)."""
    for split, (before, probs) in (refitted.before if refitted else {}).items():
        metrics[split] = before
        heldout[split] = (*heldout[split][:2], probs)
    if refitted and "test" in refitted.before:
        return True
    if head_only_model is None:
        return False
    from tfguess.engine.model import read_meta

    if not read_meta(head_only_model)["backbone"].get("fine_tuned_on_test"):
        return False
    metrics["test"] = {**metrics["test"], "seen_by_backbone": True}
    return True
