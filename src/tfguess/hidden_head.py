"""A head with one hidden layer (ReLU, dropout) on cached features, trained in numpy.

The same recipe as the softmax head (mini-batch Adam on the class-weighted cross-entropy, L2 on
the kernels, dropout, early stopping on validation loss), with ``features -> dropout -> Dense
(hidden, ReLU) -> dropout -> Dense(softmax)``: what ``model.build_classifier(hidden_units=...)``
computes. Weights come back as the dict :func:`tfguess.model.head_probabilities` applies.
"""

from __future__ import annotations

import numpy as np

from .model import head_probabilities, softmax


def _glorot(rng: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
    limit = np.sqrt(6 / (fan_in + fan_out))  # Keras' Dense default
    return rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)


def _loss_accuracy(x: np.ndarray, y: np.ndarray, arrays: dict) -> tuple[float, float]:
    probs = head_probabilities(x, arrays)
    loss = -np.log(np.maximum(probs[np.arange(len(y)), y], 1e-12)).mean()
    return float(loss), float((probs.argmax(1) == y).mean())


def fit_hidden_head(train, val, num_classes: int, config, progress: bool = True):
    """Train the hidden-layer head on ``train.x/.y``; returns (arrays, history rows, best epoch)."""
    from tqdm.auto import tqdm

    from .train import _Adam

    rng = np.random.default_rng(config.seed)
    n, dim = train.x.shape
    units = config.hidden_units
    w1, b1 = _glorot(rng, dim, units), np.zeros(units, np.float32)
    w2, b2 = _glorot(rng, units, num_classes), np.zeros(num_classes, np.float32)
    params = [w1, b1, w2, b2]
    adam = _Adam(params, config.learning_rate)

    counts = np.bincount(train.y, minlength=num_classes).astype(np.float32)
    class_w = (len(train.y) / (num_classes * np.maximum(counts, 1)) if config.class_weights
               else np.ones(num_classes, np.float32))
    sample_w = class_w[train.y].astype(np.float32)
    targets = np.eye(num_classes, dtype=np.float32)[train.y]
    if config.label_smoothing:
        targets = targets * (1 - config.label_smoothing) + config.label_smoothing / num_classes
    keep = 1.0 - config.dropout
    has_val = val is not None and len(val.y) > 0

    def arrays() -> dict:
        return {"hidden_kernel": w1, "hidden_bias": b1, "kernel": w2, "bias": b2}

    def mask(shape) -> np.ndarray | float:
        if not config.dropout:
            return 1.0
        return (rng.random(shape, dtype=np.float32) < keep) / keep

    best = (np.inf, 0, {k: v.copy() for k, v in arrays().items()})
    history = []
    bar = tqdm(range(1, config.epochs + 1), desc="training", unit="epoch", disable=not progress,
               dynamic_ncols=True)
    for epoch in bar:
        order = rng.permutation(n)
        for start in range(0, n, config.batch_size):
            idx = order[start:start + config.batch_size]
            m0 = mask((len(idx), dim))
            xb = train.x[idx] * m0
            pre = xb @ w1 + b1
            h = np.maximum(pre, 0.0)
            m1 = mask(h.shape)
            hd = h * m1
            w = sample_w[idx] / sample_w[idx].sum()
            g_logits = (softmax(hd @ w2 + b2) - targets[idx]) * w[:, None]
            g_w2 = hd.T @ g_logits + 2 * config.l2 * w2
            g_b2 = g_logits.sum(0)
            g_h = (g_logits @ w2.T) * m1 * (pre > 0)
            g_w1 = xb.T @ g_h + 2 * config.l2 * w1
            adam.step([g_w1, g_h.sum(0), g_w2, g_b2])
        loss, acc = _loss_accuracy(train.x, train.y, arrays())
        row = {"epoch": epoch, "loss": round(loss, 6), "accuracy": round(acc, 6)}
        if has_val:
            vloss, vacc = _loss_accuracy(val.x, val.y, arrays())
            row.update(val_loss=round(vloss, 6), val_accuracy=round(vacc, 6))
        history.append(row)
        bar.set_postfix({k: v for k, v in row.items() if k != "epoch"}, refresh=False)
        monitored = row.get("val_loss", row["loss"])
        if monitored < best[0] - 1e-5:
            best = (monitored, epoch, {k: v.copy() for k, v in arrays().items()})
        elif epoch - best[1] >= config.patience:
            break
    bar.close()
    return best[2], history, best[1]
