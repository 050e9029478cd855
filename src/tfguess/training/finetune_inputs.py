"""The inputs of fine-tuning: augmented batches of the training images, and the pool of cached views.

:func:`pixel_batches` gives every image a fresh augmented view an epoch (:mod:`tfguess.data.augment`,
decoded by :mod:`tfguess.data.images` like at inference, the next batches decoding meanwhile).
With a cut (:func:`tfguess.training.finetune.cut_layer`) the frozen lower blocks are computed once
instead: :func:`cached_views` pushes ``views`` augmented views of each image through them
(:func:`lower_engine`: a TFLite engine on a CPU, one interpreter per core) and keeps the float16
activations at the cut, within :data:`POOL_BUDGET` (:func:`pool_views`); :func:`cached_batches`
serves epoch ``e`` view ``e`` of every image (modulo the number of views).
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tfguess.core.config import TrainConfig
from tfguess.data.augment import prepare, random_view
from tfguess.data.images import ImageError, decode_image

BATCH_SIZE = 32
# Decoded, resized training images are kept in memory up to this many bytes (else re-decoded).
MEMORY_BUDGET = 1 << 30
# The cached activations at the cut (float16) are kept within this many bytes.
POOL_BUDGET = 3 << 29


def pool_views(requested: int | None, epochs: int, images: int, view_bytes: int,
               budget: int = POOL_BUDGET) -> int:
    """How many views per image the activation pool holds: ``requested`` (None: one per epoch),
    at most ``epochs``, within ``budget`` bytes; 0 when not even one fits."""
    want = epochs if requested is None else min(requested, epochs)
    return max(0, min(want, budget // max(1, images * view_bytes)))


class Images:
    """Training images decoded once (prepared for random crops) while memory allows."""

    def __init__(self, paths: list[Path], size: int) -> None:
        self.paths, self.size = paths, size
        self.kept: dict[int, object] = {}
        self.bytes = 0

    def get(self, i: int):
        im = self.kept.get(i)
        if im is None:
            im = prepare(decode_image(self.paths[i], draft_size=self.size), self.size)
            cost = im.width * im.height * 3
            if self.bytes + cost <= MEMORY_BUDGET:
                self.kept[i] = im
                self.bytes += cost
        return im


def _augmented(images: Images, order: np.ndarray, size: int, policy: str, no_flip: bool,
               seed: int, pool: ThreadPoolExecutor, batch_size: int):
    """Augmented batches ``(index array, pixels)`` in ``order``; the next ones decode meanwhile."""

    def one(i: int, k: int):
        rng = np.random.default_rng([seed, k])
        try:
            return random_view(images.get(int(i)), size, policy, rng, no_flip)
        except (ImageError, OSError):
            return None

    def make(start: int):
        idx = order[start:start + batch_size]
        views = list(pool.map(one, idx, range(start, start + len(idx))))
        keep = [j for j, v in enumerate(views) if v is not None]
        return idx[keep], np.stack([views[j] for j in keep]) if keep else None

    starts = deque(range(0, len(order), batch_size))
    pending = deque()
    with ThreadPoolExecutor(1) as feeder:
        while starts or pending:
            while starts and len(pending) < 2:
                pending.append(feeder.submit(make, starts.popleft()))
            yield pending.popleft().result()


def pixel_batches(images: Images, size: int, config: TrainConfig, pool: ThreadPoolExecutor):
    """``batches(epoch, order)``: a fresh augmented view of every image an epoch."""

    def batches(epoch: int, order: np.ndarray):
        yield from _augmented(images, order, size, config.fine_tune_augment, config.no_flip,
                              config.seed * 1000 + epoch, pool, BATCH_SIZE)

    return batches


def lower_engine(lower, size: int, device: str, folder: Path):
    """A callable ``uint8 pixels [N, size, size, 3] -> activations at the cut``: the lower blocks
    as a float32 TFLite engine (one interpreter per core) on a CPU, else a TensorFlow function."""
    import tensorflow as tf

    if device == "CPU":
        from tfguess.engine.features import convert_to_tflite
        from tfguess.engine.runtime import TFLiteEngine

        try:
            return TFLiteEngine(convert_to_tflite(lower, size, folder / "lower.tflite"))
        except Exception:  # noqa: BLE001 - any converter failure: TensorFlow computes the same
            pass
    fn = tf.function(lambda x: lower(x, training=False), reduce_retracing=True)
    return lambda pixels: np.asarray(fn(tf.constant(pixels, tf.float32)))


def view_pool(engine, images: Images, views: int, shape: tuple, size: int, policy: str,
              no_flip: bool, seed: int, pool: ThreadPoolExecutor, bar, deadline: float | None,
              reuse: tuple | None = None):
    """``(activations float16 [views, N, *shape], ok bool [views, N])``: view ``v`` of image ``i``
    through the lower blocks. Fewer views (maybe none) when ``deadline`` passes: only whole views
    are kept. ``reuse``: an earlier pool of the first images of the same list (same seed and
    lower blocks: the same views), whose activations are copied instead of computed."""
    n = len(images.paths)
    acts = np.zeros((views, n, *shape), np.float16)
    ok = np.zeros((views, n), bool)
    start = 0
    if reuse is not None and reuse[0].shape[0] >= views and reuse[0].shape[2:] == tuple(shape) \
            and reuse[0].shape[1] <= n:
        start = reuse[0].shape[1]
        acts[:, :start], ok[:, :start] = reuse[0][:views], reuse[1][:views]
        bar.update(views * start)
    for v in range(views):
        if deadline is not None and time.perf_counter() > deadline:
            return acts[:v], ok[:v]
        for idx, pixels in _augmented(images, np.arange(start, n), size, policy, no_flip,
                                      seed * 1000 + v + 1, pool, 2 * BATCH_SIZE):
            if pixels is not None:
                acts[v, idx] = engine(pixels)
                ok[v, idx] = True
            bar.update(len(idx))
    return acts, ok


def cached_views(engine, images: Images, views: int, shape: tuple, config: TrainConfig, size: int,
                 pool: ThreadPoolExecutor, progress: bool, deadline: float | None,
                 reuse: tuple | None = None):
    """:func:`view_pool` with a progress bar; the decoded pixels are let go afterwards (the epochs
    only need the activations)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=views * len(images.paths), desc="views for fine-tuning", unit="img",
               disable=not progress, dynamic_ncols=True)
    acts, ok = view_pool(engine, images, views, shape, size, config.fine_tune_augment,
                         config.no_flip, config.seed, pool, bar, deadline, reuse)
    bar.close()
    images.kept.clear()
    return acts, ok


def cached_batches(acts: np.ndarray, ok: np.ndarray):
    """``batches(epoch, order)``: epoch ``e`` trains on cached view ``e`` (modulo their number)."""

    def batches(epoch: int, order: np.ndarray):
        v = (epoch - 1) % len(acts)
        for start in range(0, len(order), BATCH_SIZE):
            idx = order[start:start + BATCH_SIZE]
            idx = idx[ok[v, idx]]
            yield idx, acts[v, idx] if len(idx) else None

    return batches
