"""Fine-tuning: after the head has converged on cached features, train the top of the backbone too.

The classifier (backbone + the trained head) is trained end to end on augmented views
(:mod:`tfguess.augment`, a fresh one per image and epoch, decoded by :mod:`tfguess.images` like at
inference), with only the top ``blocks`` blocks of the backbone and its final 1x1 convolution
unfrozen. BatchNorm layers stay frozen (inference mode: their statistics never change), the
learning rate warms up over the first epoch and then decays (cosine; Adam). The result is the
average of the weights of the second half of the epochs, unless the head-only start is better on
the validation split beyond chance (:func:`clearly_better`). Runs on a GPU when TensorFlow sees
one, else on the CPU.

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

from .augment import prepare, random_view
from .errors import ConfigError
from .images import ImageError, decode_image, load_image
from .pipeline import default_workers
from .runtime import Head

BATCH_SIZE = 32
# The head arrives trained to convergence (over-confident on its training images): smoothed labels
# and a learning rate that warms up over the first epoch keep the first steps from wrecking it.
LABEL_SMOOTHING = 0.1
# Decoded, resized training images are kept in memory up to this many bytes (else re-decoded).
MEMORY_BUDGET = 1 << 30


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
) -> FineTuneResult:
    """Fine-tune ``backbone`` (changed in place) with ``head`` on top; see the module docstring.

    ``train_items``/``val_items``: ``(path, label index)``. ``max_steps``: stop after this many
    batches in all (tests). Returns the best head weights and the backbone's new weights id;
    the backbone holds the best weights on return.
    """
    import keras
    import tensorflow as tf
    from tqdm.auto import tqdm

    from .model import Classifier, build_classifier, set_head

    start_time = time.perf_counter()
    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    model = build_classifier(backbone, num_classes, config.dropout, config.l2, head.hidden_units)
    set_head(model, head)
    unfrozen = unfreeze_top(backbone, config.fine_tune_blocks)
    augment = config.fine_tune_augment + (", no mirroring" if config.no_flip else "")
    log(f"Fine-tuning the top {config.fine_tune_blocks} blocks of {backbone.name} "
        f"({len(unfrozen)} layers with weights; BatchNorm frozen) on the {device}, "
        f"augmentation {augment}")

    y_train = np.array([y for _, y in train_items], np.int64)
    counts = np.bincount(y_train, minlength=num_classes).astype(np.float32)
    class_w = (len(y_train) / (num_classes * np.maximum(counts, 1)) if config.class_weights
               else np.ones(num_classes, np.float32)).astype(np.float32)

    optimizer = keras.optimizers.Adam(config.fine_tune_lr)
    variables = model.trainable_variables

    @tf.function(reduce_retracing=True)
    def train_step(x, y, w):
        with tf.GradientTape() as tape:
            probs = model(x, training=True)
            log_probs = tf.math.log(tf.maximum(probs, 1e-7))
            picked = tf.gather(log_probs, y, axis=1, batch_dims=1)
            per_image = -((1 - LABEL_SMOOTHING) * picked
                          + LABEL_SMOOTHING * tf.reduce_mean(log_probs, axis=1))
            loss = tf.reduce_sum(w * per_image) / tf.reduce_sum(w)
            total = loss + tf.add_n(model.losses) if model.losses else loss
        grads = tape.gradient(total, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    predict = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    val_x, val_y = [], []
    for path, y in val_items:
        try:
            val_x.append(load_image(path, size, resize))
            val_y.append(y)
        except (ImageError, OSError):
            pass
    val_x = np.stack(val_x) if val_x else np.zeros((0, size, size, 3), np.uint8)
    val_y = np.array(val_y, np.int64)

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
    epochs = config.fine_tune_epochs
    bar = tqdm(total=epochs * len(train_items), desc="fine-tuning", unit="img",
               disable=not progress, dynamic_ncols=True)
    steps, trained, train_seconds = 0, 0, 0.0
    per_epoch = max(1, -(-len(train_items) // BATCH_SIZE))
    schedule = lr_schedule(config.fine_tune_lr, warmup=per_epoch, total=epochs * per_epoch)
    with ThreadPoolExecutor(config.workers or default_workers()) as pool:
        for epoch in range(1, epochs + 1):
            t_epoch, n_epoch, losses = time.perf_counter(), 0, []
            order = rng.permutation(len(train_items))
            for idx, pixels in _batches(images, order, size, config.fine_tune_augment, config.no_flip,
                                        config.seed * 1000 + epoch, pool, BATCH_SIZE):
                if pixels is not None:
                    optimizer.learning_rate.assign(schedule(steps))
                    loss = train_step(tf.constant(pixels, tf.float32), tf.constant(y_train[idx]),
                                      tf.constant(class_w[y_train[idx]]))
                    losses.append(float(loss))
                    n_epoch += len(idx)
                bar.update(len(idx))
                bar.set_postfix(epoch=epoch, loss=f"{np.mean(losses):.3f}" if losses else "-",
                                refresh=False)
                steps += 1
                if max_steps is not None and steps >= max_steps:
                    break
            seconds = time.perf_counter() - t_epoch
            train_seconds += seconds
            trained += n_epoch
            rate = n_epoch / seconds if seconds else 0.0
            row = {"epoch": epoch, "loss": round(float(np.mean(losses)), 6) if losses else None,
                   "images_per_second": round(rate, 1)}
            result = evaluate()
            history.append(_scored(row, result))
            if not progress:
                log(f"  epoch {epoch}: loss {row['loss']}, validation accuracy "
                    f"{row.get('val_accuracy')}, {row['images_per_second']} images/s")
            bar.set_postfix(epoch=epoch, loss=row["loss"], val_acc=row.get("val_accuracy"),
                            refresh=True)
            if epoch > epochs // 2:  # the second half of the schedule is averaged
                average.add(model.get_weights())
            if max_steps is not None and steps >= max_steps:
                break
    bar.close()
    last = len(history) - 1
    if average.count > 1:
        model.set_weights(average.mean)
        result = evaluate()
        history.append(_scored({"epoch": "average", "epochs_averaged": average.count}, result))
        final = f"the average of epochs {last - average.count + 1}-{last}"
    else:
        final = f"epoch {last}"
    # One epoch's score on a small validation split is mostly chance: only the head-only start
    # competes with the end of the schedule, and it is kept only when clearly better.
    kept = bool(first and result and clearly_better(first[2], result[2]))
    if kept:
        model.set_weights(start_weights)
    averaged = 0 if kept or average.count < 2 else average.count
    best_epoch = 0 if kept else last
    accuracy = first[1] if kept else result[1] if result else None
    backbone.trainable = False
    chosen = "the head-only start kept (clearly better on validation)" if kept else final
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
    )
