"""Augmented views on the frozen path: ``config.views`` fixed augmented views of each training image
(:mod:`tfguess.data.augment`), their features cached beside the plain ones, added to the head's
training data.
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
