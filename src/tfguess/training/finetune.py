"""Fine-tuning: after the head has converged on cached features, train the top of the backbone too.

The classifier (backbone + the trained head) is trained end to end on augmented views
(:mod:`tfguess.data.augment`, a fresh one per image and epoch, decoded by :mod:`tfguess.data.images` like at
inference), with only the top ``blocks`` blocks of the backbone and its final 1x1 convolution
unfrozen. BatchNorm layers stay frozen (inference mode: their statistics never change), the
learning rate warms up over the first epoch and then decays (cosine; Adam). The result is the
average of the weights of the second half of the epochs, unless the head-only start is better on
the validation split beyond chance (:func:`clearly_better`). Runs on a GPU when TensorFlow sees
one, else on the CPU.

The frozen lower blocks are computed once, not at every epoch (they are fixed, BatchNorm is frozen
and the blocks have no dropout, so their output is the same every time): each training image gets
a pool of ``views`` augmented views (by default one per epoch: epoch ``e`` trains on view ``e`` of
every image, so the recipe is the one of fresh views every epoch), pushed once through the lower
blocks as a TFLite engine (the one the frozen features use, one interpreter per core) and stored
as float16 activations at the cut; the epochs then run forwards and backwards through the top
blocks alone (:class:`_ActivationPool`). When the pool does not fit :data:`POOL_BUDGET` it holds
fewer views, which the epochs share; ``views=0`` trains on the pixels of a fresh view every epoch.

The fine-tuned backbone gets a new weights id (a digest of its weights): bottleneck caches and the
cached TFLite twin used by ``guess`` are keyed by it, never by the stock backbone's.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tfguess.core.errors import ConfigError
from tfguess.data.augment import prepare, random_view
from tfguess.data.images import ImageError, decode_image, load_image
from tfguess.data.pipeline import default_workers
from tfguess.engine.runtime import Head

BATCH_SIZE = 32
# The head arrives trained to convergence (over-confident on its training images): smoothed labels
# and a learning rate that warms up over the first epoch keep the first steps from wrecking it.
LABEL_SMOOTHING = 0.1
# Decoded, resized training images are kept in memory up to this many bytes (else re-decoded).
MEMORY_BUDGET = 1 << 30
# The cached activations at the cut (float16) are kept within this many bytes.
POOL_BUDGET = 3 << 29


@dataclass
class FineTuneResult:
    head: Head
    weights_id: str | None   # None: the head-only start won, the backbone is unchanged
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    images_per_second: float = 0.0
    unfrozen: list[str] = field(default_factory=list)
    device: str = "CPU"
    augment: str = ""
    epochs_averaged: int = 0  # > 0: the weights are the mean of the epochs up to best_epoch
    cached_views: int = 0     # > 0: the epochs trained the top blocks on this many cached views
    views_seconds: float = 0.0  # the time of computing the cached views (part of ``seconds``)
    stopped_early: bool = False  # the deadline ended the schedule before its last epoch


def block_groups(backbone) -> list[str]:
    """The backbone's trainable groups, input to output: ``stem``, ``block0`` ... ``head``."""
    groups: list[str] = []
    for layer in backbone.layers:
        m = re.match(r"(stem|block\d+|head)_", layer.name)
        if m and m.group(1) not in groups:
            groups.append(m.group(1))
    return groups


def unfreeze_top(backbone, blocks: int) -> list[str]:
    """Make the top ``blocks`` blocks and the head convolution trainable, BatchNorm excepted.

    Returns the names of the layers that now have trainable weights.
    """
    import keras

    groups = block_groups(backbone)
    if not groups:
        raise ConfigError(f"backbone {backbone.name!r} has no named blocks to fine-tune "
                         "(fine-tuning supports the EfficientNet-Lite backbones)")
    top = set(groups[-(blocks + 1):]) if blocks >= 0 else set()  # + the "head" group
    backbone.trainable = True
    unfrozen = []
    for layer in backbone.layers:
        m = re.match(r"(stem|block\d+|head)_", layer.name)
        train = bool(m and m.group(1) in top and not isinstance(layer, keras.layers.BatchNormalization))
        layer.trainable = train
        if train and layer.weights:
            unfrozen.append(layer.name)
    return unfrozen


def cut_layer(backbone, blocks: int):
    """The first layer of the part that :func:`unfreeze_top` trains (its input is the cut), or
    None when every group trains."""
    groups = block_groups(backbone)
    first = groups[-(blocks + 1):][0] if groups else None
    if first is None or first == groups[0]:
        return None
    return next(layer for layer in backbone.layers if layer.name.startswith(first + "_"))


def pool_views(requested: int | None, epochs: int, images: int, view_bytes: int,
               budget: int = POOL_BUDGET) -> int:
    """How many views per image the activation pool holds: ``requested`` (None: one per epoch),
    at most ``epochs``, within ``budget`` bytes; 0 when not even one fits."""
    want = epochs if requested is None else min(requested, epochs)
    return max(0, min(want, budget // max(1, images * view_bytes)))


def lr_schedule(peak: float, warmup: int, total: int) -> Callable[[int], float]:
    """The learning rate of step ``k`` (from 0): linear warm-up to ``peak`` over ``warmup`` steps,
    then a cosine decay to ``peak / 20`` at step ``total``."""

    def rate(k: int) -> float:
        if k < warmup:
            return peak * (k + 1) / warmup
        t = min(1.0, (k - warmup) / max(1, total - warmup))
        return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))

    return rate


def weights_digest(model) -> str:
    """A short digest of every weight of ``model`` (names, shapes, values)."""
    h = hashlib.sha256()
    for w in model.weights:
        a = np.ascontiguousarray(np.asarray(w.numpy() if hasattr(w, "numpy") else w))
        h.update(f"{w.path}|{a.shape}|{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def clearly_better(a: np.ndarray, b: np.ndarray, p_value: float = 0.05) -> bool:
    """Whether the model with per-image results ``a`` (True: right) beats the one with ``b`` on
    the same images beyond chance: a one-sided sign test on the images only one of them gets right.

    A validation split is small (tens of images), and the head-only start was early-stopped on it,
    so its score there is optimistic: a difference of an image or two says nothing."""
    wins, losses = int(np.sum(a & ~b)), int(np.sum(~a & b))
    if wins <= losses:
        return False
    n = wins + losses
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n < p_value


def _scored(row: dict, result: tuple | None) -> dict:
    """``row`` with the validation loss and accuracy of ``result`` (if there is a validation split)."""
    if result:
        row.update(val_loss=round(result[0], 6), val_accuracy=round(result[1], 6))
    return row


class _RunningMean:
    """The running mean of lists of weight arrays (BatchNorm is frozen, so averaging the weights
    of several epochs gives a valid model: stochastic weight averaging)."""

    def __init__(self) -> None:
        self.mean: list[np.ndarray] | None = None
        self.count = 0

    def add(self, weights: list) -> None:
        self.count += 1
        if self.mean is None:
            self.mean = [np.array(w, dtype=np.float32, copy=True) for w in weights]
        else:
            for m, w in zip(self.mean, weights, strict=True):
                m += (np.asarray(w, np.float32) - m) / self.count


class _Images:
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


def _batches(images: _Images, order: np.ndarray, size: int, policy: str, no_flip: bool,
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


def _lower_engine(lower, size: int, device: str, folder: Path):
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


def _top_model(model, upper, hidden: bool):
    """The classifier from the cut on: ``upper`` (the top of the backbone), then the layers of
    ``model``'s head, shared (one set of weights with ``model``)."""
    import keras

    inputs = keras.Input(tuple(upper.input.shape[1:]), name="activations")
    x = model.get_layer("dropout")(upper(inputs))
    if hidden:
        x = model.get_layer("hidden_dropout")(model.get_layer("hidden")(x))
    return keras.Model(inputs, model.get_layer("head")(x), name="top")


def _view_pool(engine, images: _Images, views: int, shape: tuple, size: int, policy: str,
               no_flip: bool, seed: int, pool: ThreadPoolExecutor, bar, deadline: float | None):
    """``(activations float16 [views, N, *shape], ok bool [views, N])``: view ``v`` of image ``i``
    through the lower blocks. Fewer views (maybe none) when ``deadline`` passes: only whole views
    are kept."""
    n = len(images.paths)
    acts = np.zeros((views, n, *shape), np.float16)
    ok = np.zeros((views, n), bool)
    for v in range(views):
        if deadline is not None and time.perf_counter() > deadline:
            return acts[:v], ok[:v]
        for idx, pixels in _batches(images, np.arange(n), size, policy, no_flip,
                                    seed * 1000 + v + 1, pool, 2 * BATCH_SIZE):
            if pixels is not None:
                acts[v, idx] = engine(pixels)
                ok[v, idx] = True
            bar.update(len(idx))
    return acts, ok


def fine_tune(
    backbone,
    head: Head,
    train_items: list[tuple[Path, int]],
    val_items: list[tuple[Path, int]],
    num_classes: int,
    config,
    size: int,
    resize: str,
    progress: bool = True,
    log: Callable[[str], None] = print,
    max_steps: int | None = None,
    deadline: float | None = None,
) -> FineTuneResult:
    """Fine-tune ``backbone`` (changed in place) with ``head`` on top; see the module docstring.

    ``train_items``/``val_items``: ``(path, label index)``. ``max_steps``: stop after this many
    batches in all (tests). ``deadline`` (a ``time.perf_counter()`` value): no epoch starts that
    would end after it and none goes on past it; the schedule's average so far is kept. Returns
    the best head weights and the backbone's new weights id; the backbone holds the best weights
    on return.
    """
    import tempfile

    import keras
    import tensorflow as tf
    from tqdm.auto import tqdm

    from tfguess.engine.model import Classifier, build_classifier, set_head

    start_time = time.perf_counter()
    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    model = build_classifier(backbone, num_classes, config.dropout, config.l2, head.hidden_units)
    set_head(model, head)
    unfrozen = unfreeze_top(backbone, config.fine_tune_blocks)
    augment = config.fine_tune_augment + (", no mirroring" if config.no_flip else "")
    epochs = config.fine_tune_epochs
    cut = cut_layer(backbone, config.fine_tune_blocks)
    views = 0
    if cut is not None and getattr(config, "fine_tune_views", None) != 0:
        shape = tuple(int(d) for d in cut.input.shape[1:])
        views = pool_views(getattr(config, "fine_tune_views", None), epochs, len(train_items),
                           2 * int(np.prod(shape)))
    how = (f"{views} cached view(s) an image through the top blocks" if views
           else "fresh views through the whole backbone")
    log(f"Fine-tuning the top {config.fine_tune_blocks} blocks of {backbone.name} "
        f"({len(unfrozen)} layers with weights; BatchNorm frozen) on the {device}, "
        f"augmentation {augment}, {how}")

    y_train = np.array([y for _, y in train_items], np.int64)
    counts = np.bincount(y_train, minlength=num_classes).astype(np.float32)
    class_w = (len(y_train) / (num_classes * np.maximum(counts, 1)) if config.class_weights
               else np.ones(num_classes, np.float32)).astype(np.float32)

    optimizer = keras.optimizers.Adam(config.fine_tune_lr)
    variables = model.trainable_variables
    if views:
        lower = keras.Model(backbone.input, cut.input, name="lower")
        upper = keras.Model(cut.input, backbone.output, name="upper")
        net = _top_model(model, upper, bool(head.hidden_units))
    else:
        net = model

    @tf.function(reduce_retracing=True)
    def train_step(x, y, w):
        with tf.GradientTape() as tape:
            probs = net(x, training=True)
            log_probs = tf.math.log(tf.maximum(probs, 1e-7))
            picked = tf.gather(log_probs, y, axis=1, batch_dims=1)
            per_image = -((1 - LABEL_SMOOTHING) * picked
                          + LABEL_SMOOTHING * tf.reduce_mean(log_probs, axis=1))
            loss = tf.reduce_sum(w * per_image) / tf.reduce_sum(w)
            total = loss + tf.add_n(model.losses) if model.losses else loss
        grads = tape.gradient(total, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    predict = tf.function(lambda x: net(x, training=False), reduce_retracing=True)

    val_x, val_y = [], []
    for path, y in val_items:
        try:
            val_x.append(load_image(path, size, resize))
            val_y.append(y)
        except (ImageError, OSError):
            pass
    val_x = np.stack(val_x) if val_x else np.zeros((0, size, size, 3), np.uint8)
    val_y = np.array(val_y, np.int64)

    scratch = tempfile.TemporaryDirectory(prefix="tfguess-finetune-")
    engine = _lower_engine(lower, size, device, Path(scratch.name)) if views else None
    if engine is not None and len(val_x):  # the validation images are fixed: their cut too
        val_x = np.concatenate([engine(val_x[i:i + 64]) for i in range(0, len(val_x), 64)])

    def evaluate() -> tuple[float, float, np.ndarray] | None:
        """Validation loss, accuracy and which images are right."""
        if not len(val_y):
            return None
        probs = np.concatenate([np.asarray(predict(val_x[i:i + 64].astype(np.float32)))
                                for i in range(0, len(val_x), 64)])
        loss = -np.log(np.maximum(probs[np.arange(len(val_y)), val_y], 1e-7)).mean()
        right = probs.argmax(1) == val_y
        return float(loss), float(right.mean()), right

    def snapshot():
        return [np.array(v) for v in model.get_weights()]

    first = evaluate()
    history = [_scored({"epoch": 0}, first)]
    start_weights = snapshot()
    if first:
        log(f"  before fine-tuning: validation accuracy {first[1]:.4f} (n={len(val_y)})")

    average = _RunningMean()
    images = _Images([p for p, _ in train_items], size)
    rng = np.random.default_rng(config.seed)
    steps, trained, train_seconds, views_seconds, stopped = 0, 0, 0.0, 0.0, False
    per_epoch = max(1, -(-len(train_items) // BATCH_SIZE))
    schedule = lr_schedule(config.fine_tune_lr, warmup=per_epoch, total=epochs * per_epoch)
    try:
        with ThreadPoolExecutor(config.workers or default_workers()) as pool:
            if views:
                t = time.perf_counter()
                bar = tqdm(total=views * len(train_items), desc="views for fine-tuning", unit="img",
                           disable=not progress, dynamic_ncols=True)
                acts, ok = _view_pool(engine, images, views, shape, size, config.fine_tune_augment,
                                      config.no_flip, config.seed, pool, bar, deadline)
                bar.close()
                views_seconds = time.perf_counter() - t
                views = len(acts)
                stopped = views == 0  # the deadline passed before the first view
                images.kept.clear()  # the pixels are no longer needed

            def pixel_batches(epoch: int, order: np.ndarray):
                yield from _batches(images, order, size, config.fine_tune_augment, config.no_flip,
                                    config.seed * 1000 + epoch, pool, BATCH_SIZE)

            def cached_batches(epoch: int, order: np.ndarray):
                v = (epoch - 1) % views
                for start in range(0, len(order), BATCH_SIZE):
                    idx = order[start:start + BATCH_SIZE]
                    idx = idx[ok[v, idx]]
                    yield idx, acts[v, idx] if len(idx) else None

            bar = tqdm(total=epochs * len(train_items), desc="fine-tuning", unit="img",
                       disable=not progress, dynamic_ncols=True)
            last_epoch_seconds = 0.0
            for epoch in range(1, epochs + 1):
                if stopped or deadline is not None and (
                        time.perf_counter() + last_epoch_seconds > deadline):
                    stopped = True
                    break
                t_epoch, n_epoch, losses = time.perf_counter(), 0, []
                order = rng.permutation(len(train_items))
                batches = cached_batches if views else pixel_batches
                for idx, x in batches(epoch, order):
                    if x is not None:
                        optimizer.learning_rate.assign(schedule(steps))
                        loss = train_step(tf.constant(x, tf.float32), tf.constant(y_train[idx]),
                                          tf.constant(class_w[y_train[idx]]))
                        losses.append(float(loss))
                        n_epoch += len(idx)
                    bar.update(len(idx))
                    bar.set_postfix(epoch=epoch, loss=f"{np.mean(losses):.3f}" if losses else "-",
                                    refresh=False)
                    steps += 1
                    if max_steps is not None and steps >= max_steps:
                        break
                    if deadline is not None and time.perf_counter() > deadline:
                        stopped = True
                        break
                seconds = time.perf_counter() - t_epoch
                train_seconds += seconds
                trained += n_epoch
                rate = n_epoch / seconds if seconds else 0.0
                row = {"epoch": epoch, "loss": round(float(np.mean(losses)), 6) if losses else None,
                       "images_per_second": round(rate, 1)}
                result = evaluate()
                history.append(_scored(row, result))
                last_epoch_seconds = time.perf_counter() - t_epoch
                if not progress:
                    log(f"  epoch {epoch}: loss {row['loss']}, validation accuracy "
                        f"{row.get('val_accuracy')}, {row['images_per_second']} images/s")
                bar.set_postfix(epoch=epoch, loss=row["loss"], val_acc=row.get("val_accuracy"),
                                refresh=True)
                if epoch > epochs // 2:  # the second half of the schedule is averaged
                    average.add(model.get_weights())
                if stopped or (max_steps is not None and steps >= max_steps):
                    break
            bar.close()
    finally:
        scratch.cleanup()
    if stopped:
        log(f"  the time limit stopped fine-tuning after {len(history) - 1} of {epochs} epochs")
    last = len(history) - 1
    if average.count > 1:
        model.set_weights(average.mean)
        result = evaluate()
        history.append(_scored({"epoch": "average", "epochs_averaged": average.count}, result))
        final = f"the average of epochs {last - average.count + 1}-{last}"
    else:
        result = evaluate()
        final = f"epoch {last}"
    # One epoch's score on a small validation split is mostly chance: only the head-only start
    # competes with the end of the schedule, and it is kept only when clearly better.
    kept = last == 0 or bool(first and result and clearly_better(first[2], result[2]))
    if kept:
        model.set_weights(start_weights)
    averaged = 0 if kept or average.count < 2 else average.count
    best_epoch = 0 if kept else last
    accuracy = first[1] if kept and first else result[1] if result else None
    backbone.trainable = False
    chosen = ("the head-only start kept" + (" (clearly better on validation)" if last else "")
              if kept else final)
    log(f"Fine-tuned in {time.perf_counter() - start_time:.1f} s; {chosen}"
        + (f" (validation accuracy {accuracy:.4f})" if accuracy is not None else ""))
    return FineTuneResult(
        head=Classifier(model, [], {}).head(),
        weights_id=f"ft-{weights_digest(backbone)}" if best_epoch else None,
        history=history,
        best_epoch=best_epoch,
        epochs_averaged=averaged,
        seconds=time.perf_counter() - start_time,
        images_per_second=trained / train_seconds if train_seconds else 0.0,
        unfrozen=unfrozen,
        device=device,
        augment=augment,
        cached_views=views,
        views_seconds=views_seconds,
        stopped_early=stopped,
    )
