"""What a training run writes besides the run summary: the model, its labels and the history.

The model carries its backbone's description (:func:`backbone_meta`); a warm re-train replaces
only the head arrays of the previous model file (:func:`save_model`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

from tfguess.core.config import TrainConfig
from tfguess.core.fsutil import atomic_write
from tfguess.core.runfolder import RunFolder
from tfguess.engine.features import BackboneRef
from tfguess.engine.runtime import Head
from tfguess.training.backbone_ref import LazyBackbone
from tfguess.training.evaluation import meta_metrics


def backbone_meta(spec, ref: BackboneRef, head: Head, stock_weights_id: str,
                  guess_ref: BackboneRef | None) -> dict:
    """The ``backbone`` block of the model and of the run summary: the features' ref (a
    fine-tuned backbone's weights id differs from ``stock_weights_id``) and the int8 guessing
    engine's precision and calibration (``guess_ref``), if any."""
    meta = {
        "name": spec.name, "input_size": ref.input_size, "resize": ref.resize,
        "preprocessing": spec.preprocessing, "feature_dim": head.feature_dim,
        "weights_id": ref.weights_id,
        "weights_source": spec.weights_source + (", fine-tuned" if ref.weights_id != stock_weights_id
                                                 else ""),
        "precision": ref.precision, "calibration": ref.calibration,
    }
    if guess_ref is not None:
        meta.update(guess_precision=guess_ref.precision, guess_calibration=guess_ref.calibration)
    return meta


def write_labels_and_history(run: RunFolder, labels: list[str], history: list[dict]) -> None:
    """``retrained_labels.txt`` (one label a line) and ``history.csv`` (one row an epoch)."""
    atomic_write(run.labels, "".join(f"{label}\n" for label in labels))
    buf = io.StringIO()
    fields = list(history[0].keys()) if history else ["epoch"]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(history)
    atomic_write(run.history, buf.getvalue())


def _guess_calibration(model: Path) -> str | None:
    """The calibration of the int8 guessing engine the model at ``model`` carries, if any."""
    from tfguess.engine.model import read_meta

    try:
        return read_meta(model)["backbone"].get("guess_calibration")
    except Exception:  # noqa: BLE001 - no previous model, or a damaged one: saved afresh
        return "unreadable"


def save_model(run: RunFolder, ref: BackboneRef, backbone: LazyBackbone, head: Head,
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
        "metrics": meta_metrics(metrics),
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
