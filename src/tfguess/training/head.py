"""The trainable head on cached features: dropout + one softmax layer, trained in numpy.

Plain numpy on purpose (measured): the head is one matrix, and mini-batch Adam over a few
thousand cached feature vectors takes about a second, while ``keras.Model.fit`` would first cost
the TensorFlow import (~7 s) and graph building, which dominated a warm re-train.
The update rule is Keras' Adam with its defaults; the loss is class-weighted cross-entropy with
L2 on the kernel. ``tests/training/test_head.py`` checks the result against scikit-learn's
``LogisticRegression`` on the same data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tfguess.core.config import TrainConfig
from tfguess.engine.runtime import Head, softmax


class Adam:
    """The Adam update (Keras defaults), for numpy arrays updated in place."""

    def __init__(self, params: list[np.ndarray], lr: float) -> None:
        self.params, self.lr, self.t = params, lr, 0
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]

    def step(self, grads: list[np.ndarray], b1=0.9, b2=0.999, eps=1e-7) -> None:
        self.t += 1
        lr = self.lr * np.sqrt(1 - b2**self.t) / (1 - b1**self.t)
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m += (1 - b1) * (g - m)
            v += (1 - b2) * (g * g - v)
            p -= lr * m / (np.sqrt(v) + eps)


def loss_accuracy(x: np.ndarray, y: np.ndarray, head: Head) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``head`` on features ``x`` with labels ``y``."""
    probs = head(x)
    loss = -np.log(np.maximum(probs[np.arange(len(y)), y], 1e-12)).mean()
    return float(loss), float((probs.argmax(1) == y).mean())


def _record_epoch(epoch, x, y, val, head, history, on_epoch, bar) -> float:
    """Scores ``head`` after an epoch, appends the history row, reports it; returns the loss that
    early stopping watches (validation loss, else training loss)."""
    loss, acc = loss_accuracy(x, y, head)
    row = {"epoch": epoch, "loss": round(loss, 6), "accuracy": round(acc, 6)}
    if val is not None:
        vloss, vacc = loss_accuracy(val[0], val[1], head)
        row.update(val_loss=round(vloss, 6), val_accuracy=round(vacc, 6))
    history.append(row)
    if on_epoch:
        on_epoch(row)
    bar.set_postfix({k: v for k, v in row.items() if k != "epoch"}, refresh=False)
    return row.get("val_loss", row["loss"])


@dataclass
class FitResult:
    head: Head
    history: list[dict]
    best_epoch: int


def class_weights(y: np.ndarray, num_classes: int, balanced: bool) -> np.ndarray:
    """The loss weight of each class (float32): ``n / (num_classes * count)``, so that every class
    weighs as much as the others in all, when ``balanced`` (``--class-weights``); else ones."""
    if not balanced:
        return np.ones(num_classes, np.float32)
    counts = np.bincount(y, minlength=num_classes).astype(np.float32)
    return (len(y) / (num_classes * np.maximum(counts, 1))).astype(np.float32)


def _glorot(rng: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
    limit = np.sqrt(6 / (fan_in + fan_out))  # Keras' Dense default
    return rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)


def fit_head(
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    config: TrainConfig,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    progress: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
) -> FitResult:
    """Train dropout + softmax on features ``x`` (labels ``y``); early stopping on validation loss.

    Mini-batch Adam on the class-weighted cross-entropy with L2 on the kernel and dropout on the
    features. The weights of the best epoch (lowest validation loss, or training loss without a
    validation split) are returned. ``on_epoch`` receives each history row. With
    ``config.hidden_units``, the head has a hidden ReLU layer (:func:`fit_hidden_head`).
    """
    if config.hidden_units:
        return fit_hidden_head(x, y, num_classes, config, val, progress=progress, on_epoch=on_epoch)
    x = np.asarray(x, np.float32)
    rng = np.random.default_rng(config.seed)
    head = Head(_glorot(rng, x.shape[1], num_classes), np.zeros(num_classes, np.float32))
    keep = 1.0 - config.dropout

    def gradients(idx: np.ndarray, targets: np.ndarray, w: np.ndarray) -> list[np.ndarray]:
        xb = x[idx]
        if config.dropout:
            xb = xb * (rng.random(xb.shape, dtype=np.float32) < keep) / keep
        grad_logits = (softmax(xb @ head.kernel + head.bias) - targets) * w[:, None]
        return [xb.T @ grad_logits + 2 * config.l2 * head.kernel, grad_logits.sum(0)]

    def snapshot() -> Head:
        return Head(head.kernel.copy(), head.bias.copy())

    return _fit(x, y, num_classes, config, val, head, [head.kernel, head.bias], gradients,
                snapshot, rng, progress, on_epoch)


def fit_hidden_head(
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    config: TrainConfig,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    progress: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
) -> FitResult:
    """The head with one hidden layer: ``features -> dropout -> Dense(hidden_units, ReLU) ->
    dropout -> Dense(softmax)`` (what ``model.build_classifier(hidden_units=...)`` computes),
    trained with the same recipe as :func:`fit_head`."""
    x = np.asarray(x, np.float32)
    rng = np.random.default_rng(config.seed)
    dim, units = x.shape[1], config.hidden_units
    hidden_kernel = _glorot(rng, dim, units)
    head = Head(_glorot(rng, units, num_classes), np.zeros(num_classes, np.float32),
                hidden_kernel, np.zeros(units, np.float32))
    w1, b1, w2, b2 = head.hidden_kernel, head.hidden_bias, head.kernel, head.bias
    keep = 1.0 - config.dropout

    def mask(shape) -> np.ndarray | float:
        if not config.dropout:
            return 1.0
        return (rng.random(shape, dtype=np.float32) < keep) / keep

    def gradients(idx: np.ndarray, targets: np.ndarray, w: np.ndarray) -> list[np.ndarray]:
        xb = x[idx] * mask((len(idx), dim))
        pre = xb @ w1 + b1
        m1 = mask(pre.shape)
        hd = np.maximum(pre, 0.0) * m1
        g_logits = (softmax(hd @ w2 + b2) - targets) * w[:, None]
        g_h = (g_logits @ w2.T) * m1 * (pre > 0)
        return [xb.T @ g_h + 2 * config.l2 * w1, g_h.sum(0),
                hd.T @ g_logits + 2 * config.l2 * w2, g_logits.sum(0)]

    def snapshot() -> Head:
        return Head(w2.copy(), b2.copy(), w1.copy(), b1.copy())

    return _fit(x, y, num_classes, config, val, head, [w1, b1, w2, b2], gradients, snapshot, rng,
                progress, on_epoch)


def _fit(x: np.ndarray, y: np.ndarray, num_classes: int, config: TrainConfig,
         val: tuple[np.ndarray, np.ndarray] | None, head: Head, params: list[np.ndarray],
         gradients: Callable[[np.ndarray, np.ndarray, np.ndarray], list[np.ndarray]],
         snapshot: Callable[[], Head], rng: np.random.Generator, progress: bool,
         on_epoch: Callable[[dict], None] | None) -> FitResult:
    """The training loop of both heads: Adam on ``params`` (``head``'s arrays, updated in place)
    over shuffled mini-batches, ``gradients(batch indices, targets, sample weights)`` giving their
    gradients; one history row an epoch; early stopping on the monitored loss. Returns the
    ``snapshot`` of the best epoch."""
    from tqdm.auto import tqdm

    n = len(x)
    adam = Adam(params, config.learning_rate)
    sample_w = class_weights(y, num_classes, config.class_weights)[y]
    targets = np.eye(num_classes, dtype=np.float32)[y]
    if config.label_smoothing:
        targets = targets * (1 - config.label_smoothing) + config.label_smoothing / num_classes
    has_val = val is not None and len(val[1]) > 0

    best = (np.inf, 0, snapshot())
    history = []
    bar = tqdm(range(1, config.epochs + 1), desc="training", unit="epoch", disable=not progress,
               dynamic_ncols=True)
    for epoch in bar:
        order = rng.permutation(n)
        for start in range(0, n, config.batch_size):
            idx = order[start:start + config.batch_size]
            w = sample_w[idx] / sample_w[idx].sum()
            adam.step(gradients(idx, targets[idx], w))
        monitored = _record_epoch(epoch, x, y, val if has_val else None, head, history, on_epoch, bar)
        if monitored < best[0] - 1e-5:
            best = (monitored, epoch, snapshot())
        elif epoch - best[1] >= config.patience:
            break
    bar.close()
    return FitResult(best[2], history, best[1])


def tensorboard_writer(summaries_dir: str | None):
    """A per-epoch callback writing TensorBoard scalars, and a function that closes it."""
    if not summaries_dir:
        return None, lambda: None
    from tfguess.core.quiet import import_tensorflow

    tf = import_tensorflow()
    writer = tf.summary.create_file_writer(summaries_dir)

    def on_epoch(row: dict) -> None:
        with writer.as_default(step=row["epoch"]):
            for k, v in row.items():
                if k != "epoch":
                    tf.summary.scalar(k, v)

    return on_epoch, writer.close
