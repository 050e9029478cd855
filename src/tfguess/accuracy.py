"""The training steps beyond a frozen backbone and a softmax head, as ``train`` calls them.

Augmented views on the frozen path (:mod:`tfguess.augment`), the hidden-layer head
(:mod:`tfguess.hidden_head`) and fine-tuning (:mod:`tfguess.finetune`). A head is a dict of
arrays (:func:`tfguess.model.head_arrays`) whatever its shape.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np


def with_views(train, config, backbone_name: str, weights_id: str, size: int, resize: str,
               cache_root: Path, make_extractor, progress: bool, log: Callable[[str], None]):
    """``train`` plus the features of ``config.views`` fixed augmented views of each image.

    Each view recipe has its own bottleneck cache, so a re-run computes nothing.
    """
    if not config.views or not len(train.y):
        return train
    from .augment import view_features
    from .bottlenecks import BottleneckCache, cache_key
    from .train import SplitData

    def cache_for(recipe: str):
        return BottleneckCache(cache_root, cache_key(backbone_name, weights_id, size, f"{resize}|{recipe}"))

    feats, computed, cached = view_features(
        [(it.path, it.digest) for it in train.items], config.views, config.augment, config.no_flip,
        cache_for, make_extractor, size, resize, workers=config.workers, progress=progress,
    )
    log(f"Augmented views ({config.views} per image, {config.augment}"
        f"{', no mirroring' if config.no_flip else ''}): {computed} computed, {cached} from the cache")
    xs, ys, items = [train.x], [train.y], list(train.items)
    for it, y in zip(train.items, train.y):
        for f in feats.get(it.digest, []):
            xs.append(f[None].astype(np.float32))
            ys.append(np.array([y], np.int64))
            items.append(it)
    return SplitData(items, np.concatenate(xs), np.concatenate(ys))


def fit_any_head(train, val, num_classes: int, config, progress: bool, summaries_dir: str | None):
    """The softmax head, or the hidden-layer head with ``config.hidden_units``."""
    if config.hidden_units:
        from .hidden_head import fit_hidden_head

        return fit_hidden_head(train, val, num_classes, config, progress)
    from .train import fit_head

    kernel, bias, history, best_epoch = fit_head(train, val, num_classes, config, progress, summaries_dir)
    return {"kernel": kernel, "bias": bias}, history, best_epoch


def set_head(classifier, head: dict[str, np.ndarray]) -> None:
    """Put the head's weights into a model from ``build_classifier``."""
    if "hidden_kernel" in head:
        classifier.get_layer("hidden").set_weights([head["hidden_kernel"], head["hidden_bias"]])
    classifier.get_layer("head").set_weights([head["kernel"], head["bias"]])


def fine_tune_backbone(backbone, head, data, index, num_classes, config, size, resize, progress, log):
    """Fine-tune ``backbone`` in place on the train split, early stopping on the validation split."""
    from .finetune import fine_tune

    def pairs(split: str):
        return [(it.path, index[it.label]) for it in data[split].items]

    return fine_tune(backbone, head, pairs("train"), pairs("validation"), num_classes, config,
                     size, resize, progress, log)


def fine_tune_summary(result) -> dict | None:
    """What run_summary.json records of a fine-tuning run."""
    if result is None:
        return None
    return {
        "device": result.device,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history) - 1,
        "seconds": round(result.seconds, 1),
        "images_per_second": round(result.images_per_second, 1),
        "unfrozen_layers": len(result.unfrozen),
        "weights_id": result.weights_id,
        "history": result.history,
    }
