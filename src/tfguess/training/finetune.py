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
blocks alone (:mod:`tfguess.training.finetune_inputs`). When the pool does not fit its budget it
holds fewer views, which the epochs share; ``views=0`` trains on the pixels of a fresh view every
epoch.

:func:`fine_tune` builds the networks (:func:`_networks`) and the training step
(:func:`build_step`), runs the epochs (:func:`run_epochs`, one :meth:`_Epochs.run` each, until
the schedule ends, ``max_steps`` or the deadline) and chooses the result (:func:`choose_result`).

The fine-tuned backbone gets a new weights id (a digest of its weights): bottleneck caches and the
cached TFLite twin used by ``guess`` are keyed by it, never by the stock backbone's.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tfguess.core.config import TrainConfig
from tfguess.core.errors import ConfigError
from tfguess.data.images import ImageError, load_image
from tfguess.data.pipeline import default_workers
from tfguess.engine.runtime import Head
from tfguess.training.evaluation import clearly_better
from tfguess.training.finetune_inputs import (
    BATCH_SIZE,
    Images,
    cached_batches,
    cached_views,
    lower_engine,
    pixel_batches,
    pool_views,
)
from tfguess.training.head import class_weights

# The head arrives trained to convergence (over-confident on its training images): smoothed labels
# and a learning rate that warms up over the first epoch keep the first steps from wrecking it.
LABEL_SMOOTHING = 0.1


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
    # (activations, ok) of the cached views, for a refit on these images and more (refit.py)
    views_cache: tuple | None = field(default=None, repr=False)


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


def _top_model(model, upper, hidden: bool):
    """The classifier from the cut on: ``upper`` (the top of the backbone), then the layers of
    ``model``'s head, shared (one set of weights with ``model``)."""
    import keras

    inputs = keras.Input(tuple(upper.input.shape[1:]), name="activations")
    x = model.get_layer("dropout")(upper(inputs))
    if hidden:
        x = model.get_layer("hidden_dropout")(model.get_layer("hidden")(x))
    return keras.Model(inputs, model.get_layer("head")(x), name="top")


@dataclass
class _Networks:
    """What fine-tuning trains. ``model``: the whole classifier (its weights are the result);
    ``net``: what the epochs run, the classifier itself or, with ``views`` cached views an image,
    the top blocks and the head on the activations (of ``shape``) that ``lower``, the frozen
    blocks below the cut, computes once."""

    model: object
    net: object
    unfrozen: list[str]
    lower: object = None
    views: int = 0
    shape: tuple = ()


def _networks(backbone, head: Head, num_classes: int, config: TrainConfig, images: int) -> _Networks:
    """The classifier of ``backbone`` and ``head`` with the top ``config.fine_tune_blocks`` blocks
    unfrozen, and what the epochs train: the top blocks on cached views when there is a cut and
    at least one view of the ``images`` training images fits the pool (:func:`pool_views`)."""
    import keras

    from tfguess.engine.model import build_classifier, set_head

    model = build_classifier(backbone, num_classes, config.dropout, config.l2, head.hidden_units,
                             seed=config.seed)
    set_head(model, head)
    unfrozen = unfreeze_top(backbone, config.fine_tune_blocks)
    cut = cut_layer(backbone, config.fine_tune_blocks)
    if cut is None or config.fine_tune_views == 0:
        return _Networks(model, model, unfrozen)
    shape = tuple(int(d) for d in cut.input.shape[1:])
    views = pool_views(config.fine_tune_views, config.fine_tune_epochs, images,
                       2 * int(np.prod(shape)))
    if not views:
        return _Networks(model, model, unfrozen)
    lower = keras.Model(backbone.input, cut.input, name="lower")
    upper = keras.Model(cut.input, backbone.output, name="upper")
    return _Networks(model, _top_model(model, upper, bool(head.hidden_units)), unfrozen, lower,
                     views, shape)


def build_step(net, model, learning_rate: float) -> Callable[..., float]:
    """The training step of ``net``: ``step(x, y, w, lr)`` makes one Adam update at the learning
    rate ``lr`` on the batch ``x`` (labels ``y``, loss weights ``w``) and returns its loss, the
    weighted cross-entropy with :data:`LABEL_SMOOTHING`; ``model``'s regularisation losses are
    added to what the gradients minimise."""
    import keras
    import tensorflow as tf

    optimizer = keras.optimizers.Adam(learning_rate)
    variables = model.trainable_variables

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

    def step(x: np.ndarray, y: np.ndarray, w: np.ndarray, lr: float) -> float:
        optimizer.learning_rate.assign(lr)
        return float(train_step(tf.constant(x, tf.float32), tf.constant(y), tf.constant(w)))

    return step


class _Validation:
    """The validation images, fixed (as activations at the cut when ``engine``, the lower blocks,
    is given), and ``net``'s scores on them: calling it gives the loss, the accuracy and which
    images are right, or None without validation images."""

    def __init__(self, net, items: list[tuple[Path, int]], size: int, resize: str,
                 engine=None) -> None:
        import tensorflow as tf

        self.predict = tf.function(lambda x: net(x, training=False), reduce_retracing=True)
        x, y = [], []
        for path, label in items:
            try:
                x.append(load_image(path, size, resize))
                y.append(label)
            except (ImageError, OSError):
                pass
        self.x = np.stack(x) if x else np.zeros((0, size, size, 3), np.uint8)
        self.y = np.array(y, np.int64)
        if engine is not None and len(self.x):
            self.x = np.concatenate([engine(self.x[i:i + 64]) for i in range(0, len(self.x), 64)])

    def __len__(self) -> int:
        return len(self.y)

    def __call__(self) -> tuple[float, float, np.ndarray] | None:
        if not len(self.y):
            return None
        probs = np.concatenate([np.asarray(self.predict(self.x[i:i + 64].astype(np.float32)))
                                for i in range(0, len(self.x), 64)])
        loss = -np.log(np.maximum(probs[np.arange(len(self.y)), self.y], 1e-7)).mean()
        right = probs.argmax(1) == self.y
        return float(loss), float(right.mean()), right


class _Epochs:
    """Runs the epochs' batches through ``step`` on the learning-rate ``schedule`` and keeps what
    the stop conditions read: ``max_steps`` batches in all, or the ``deadline`` (it passes within
    an epoch, or the next epoch, as long as the last one, would end after it: ``stopped``)."""

    def __init__(self, step, schedule: Callable[[int], float], y: np.ndarray, class_w: np.ndarray,
                 max_steps: int | None, deadline: float | None) -> None:
        self.step, self.schedule, self.y, self.class_w = step, schedule, y, class_w
        self.max_steps, self.deadline = max_steps, deadline
        self.steps, self.trained, self.seconds, self.stopped = 0, 0, 0.0, False

    @property
    def out_of_steps(self) -> bool:
        return self.max_steps is not None and self.steps >= self.max_steps

    def no_time_for(self, seconds: float) -> bool:
        return self.deadline is not None and time.perf_counter() + seconds > self.deadline

    def run(self, epoch: int, batches, bar) -> dict:
        """One epoch over ``batches`` (``(index array, inputs or None)``); its history row."""
        t, n, losses = time.perf_counter(), 0, []
        for idx, x in batches:
            if x is not None:
                y = self.y[idx]
                losses.append(self.step(x, y, self.class_w[y], self.schedule(self.steps)))
                n += len(idx)
            bar.update(len(idx))
            bar.set_postfix(epoch=epoch, loss=f"{np.mean(losses):.3f}" if losses else "-",
                            refresh=False)
            self.steps += 1
            if self.out_of_steps:
                break
            if self.no_time_for(0.0):
                self.stopped = True
                break
        seconds = time.perf_counter() - t
        self.seconds += seconds
        self.trained += n
        return {"epoch": epoch, "loss": round(float(np.mean(losses)), 6) if losses else None,
                "images_per_second": round(n / seconds if seconds else 0.0, 1)}


def run_epochs(loop: _Epochs, batches, images: int, epochs: int, seed: int, validation: _Validation,
               model, history: list[dict], average: _RunningMean, progress: bool,
               log: Callable[[str], None]) -> None:
    """Epochs 1 to ``epochs`` (each on ``batches(epoch, shuffled order)``) until one of
    ``loop``'s stop conditions; each scored on ``validation`` into ``history``, the second half of
    the schedule added to ``average``."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    bar = tqdm(total=epochs * images, desc="fine-tuning", unit="img", disable=not progress,
               dynamic_ncols=True)
    last_epoch_seconds = 0.0
    for epoch in range(1, epochs + 1):
        if loop.stopped or loop.no_time_for(last_epoch_seconds):
            loop.stopped = True
            break
        t = time.perf_counter()
        row = _scored(loop.run(epoch, batches(epoch, rng.permutation(images)), bar), validation())
        history.append(row)
        last_epoch_seconds = time.perf_counter() - t
        scored = {"val_acc": row["val_accuracy"]} if "val_accuracy" in row else {}  # a refit: none
        if not progress:
            log(f"  epoch {epoch}: loss {row['loss']}"
                + (f", validation accuracy {scored['val_acc']}" if scored else "")
                + f", {row['images_per_second']} images/s")
        bar.set_postfix(epoch=epoch, loss=row["loss"], **scored, refresh=True)
        if epoch > epochs // 2:  # the second half of the schedule is averaged
            average.add(model.get_weights())
        if loop.stopped or loop.out_of_steps:
            break
    bar.close()


def choose_result(model, validation: _Validation, history: list[dict], first: tuple | None,
                  start_weights: list, average: _RunningMean) -> tuple[int, int, float | None, str]:
    """Set ``model`` to the weights fine-tuning ends with: the average of the epochs of the second
    half (else the last epoch), unless no epoch ran or the head-only start (``start_weights``,
    scored ``first``) is clearly better on validation. Returns ``(best epoch, epochs averaged,
    validation accuracy, what was chosen)``."""
    last = len(history) - 1
    if average.count > 1:
        model.set_weights(average.mean)
        result = validation()
        history.append(_scored({"epoch": "average", "epochs_averaged": average.count}, result))
        final = f"the average of epochs {last - average.count + 1}-{last}"
    else:
        result = validation()
        final = f"epoch {last}"
    # One epoch's score on a small validation split is mostly chance: only the head-only start
    # competes with the end of the schedule, and it is kept only when clearly better.
    kept = last == 0 or bool(first and result and clearly_better(first[2], result[2]))
    if kept:
        model.set_weights(start_weights)
    averaged = 0 if kept or average.count < 2 else average.count
    accuracy = first[1] if kept and first else result[1] if result else None
    chosen = ("the head-only start kept" + (" (clearly better on validation)" if last else "")
              if kept else final)
    return 0 if kept else last, averaged, accuracy, chosen


def fine_tune(backbone, head: Head, train_items: list[tuple[Path, int]],
              val_items: list[tuple[Path, int]], num_classes: int, config: TrainConfig, size: int,
              resize: str, progress: bool = True, log: Callable[[str], None] = print,
              max_steps: int | None = None, deadline: float | None = None,
              views_from: tuple | None = None) -> FineTuneResult:
    """Fine-tune ``backbone`` (changed in place) with ``head`` on top; see the module docstring.

    ``train_items``/``val_items``: ``(path, label index)``. ``max_steps``: stop after this many
    batches in all (tests). ``deadline`` (a ``time.perf_counter()`` value): no epoch starts that
    would end after it and none goes on past it; the schedule's average so far is kept. Returns
    the best head weights and the backbone's new weights id; the backbone holds the best weights
    on return. ``views_from``: the cached views of an earlier fine-tuning whose training images
    were the first of ``train_items`` (a refit: the same views, not computed again).
    """
    import tempfile

    import tensorflow as tf

    from tfguess.engine.model import Classifier

    start_time = time.perf_counter()
    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    nets = _networks(backbone, head, num_classes, config, len(train_items))
    augment = config.fine_tune_augment + (", no mirroring" if config.no_flip else "")
    how = (f"{nets.views} cached view(s) an image through the top blocks" if nets.views
           else "fresh views through the whole backbone")
    log(f"Fine-tuning the top {config.fine_tune_blocks} blocks of {backbone.name} "
        f"({len(nets.unfrozen)} layers with weights; BatchNorm frozen) on the {device}, "
        f"augmentation {augment}, {how}")

    y_train = np.array([y for _, y in train_items], np.int64)
    epochs = config.fine_tune_epochs
    per_epoch = max(1, -(-len(train_items) // BATCH_SIZE))
    loop = _Epochs(build_step(nets.net, nets.model, config.fine_tune_lr),
                   lr_schedule(config.fine_tune_lr, warmup=per_epoch, total=epochs * per_epoch),
                   y_train, class_weights(y_train, num_classes, config.class_weights),
                   max_steps, deadline)
    scratch = tempfile.TemporaryDirectory(prefix="tfguess-finetune-")
    try:
        engine = lower_engine(nets.lower, size, device, Path(scratch.name)) if nets.views else None
        validation = _Validation(nets.net, val_items, size, resize, engine)
        first = validation()
        history = [_scored({"epoch": 0}, first)]
        start_weights = [np.array(v) for v in nets.model.get_weights()]
        if first:
            log(f"  before fine-tuning: validation accuracy {first[1]:.4f} (n={len(validation)})")
        average = _RunningMean()
        images = Images([p for p, _ in train_items], size)
        views, views_seconds = nets.views, 0.0
        with ThreadPoolExecutor(config.workers or default_workers()) as pool:
            batches = pixel_batches(images, size, config, pool)
            if views:
                t = time.perf_counter()
                acts, ok = cached_views(engine, images, views, nets.shape, config, size, pool,
                                        progress, deadline, views_from)
                views_seconds, views = time.perf_counter() - t, len(acts)
                loop.stopped = views == 0  # the deadline passed before the first view
                batches = cached_batches(acts, ok)
            run_epochs(loop, batches, len(train_items), epochs, config.seed, validation,
                       nets.model, history, average, progress, log)
    finally:
        scratch.cleanup()
    if loop.stopped:
        log(f"  the time limit stopped fine-tuning after {len(history) - 1} of {epochs} epochs")
    best_epoch, averaged, accuracy, chosen = choose_result(nets.model, validation, history, first,
                                                           start_weights, average)
    backbone.trainable = False
    log(f"Fine-tuned in {time.perf_counter() - start_time:.1f} s; {chosen}"
        + (f" (validation accuracy {accuracy:.4f})" if accuracy is not None else ""))
    return FineTuneResult(
        head=Classifier(nets.model, [], {}).head(),
        weights_id=f"ft-{weights_digest(backbone)}" if best_epoch else None, history=history,
        best_epoch=best_epoch, epochs_averaged=averaged, seconds=time.perf_counter() - start_time,
        images_per_second=loop.trained / loop.seconds if loop.seconds else 0.0,
        unfrozen=nets.unfrozen, device=device, augment=augment, cached_views=views,
        views_seconds=views_seconds, stopped_early=loop.stopped,
        views_cache=(acts, ok) if views else None)
