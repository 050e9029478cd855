"""The inbox's order and suggestions: the pending images by uncertainty (the default strategy's
next batch first, then by margin), margin, entropy, label, score or at random
(:meth:`InboxOrder.items`); the ``n`` most informative ones for ``tfguess suggest``
(:meth:`InboxOrder.suggest`) and their CSV (:func:`write_suggestions`).

:class:`InboxOrder` is a part of :class:`tfguess.curate.inbox.Inbox`: it reads the inbox's
scores (``pool_names``, ``pool_probs``, ``head_labels``) and features (``feats``, ``lab_x``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from tfguess.core.errors import ConfigError
from tfguess.curate import active
from tfguess.curate.inbox_actions import InboxError

TOP_K = 3


class InboxOrder:
    """The order of the pending images (a part of :class:`~tfguess.curate.inbox.Inbox`)."""

    def items(self, by: str = "uncertainty", seed: int = 0) -> list[dict]:
        """The pending images in the order asked: ``uncertainty`` (the default strategy), margin,
        entropy, label, score, random."""
        with self.lock:
            probs = self.pool_probs
            if len(probs) and probs.shape[1]:
                if by == "uncertainty":
                    order = self._uncertainty_order(len(probs))
                else:
                    order = active.order(probs, by, self.head_labels, seed)
            else:
                order = np.arange(len(self.pool_names))
            margins = active.margins(probs) if len(probs) and probs.shape[1] else None
            out = []
            for i in order:
                row = {"name": self.pool_names[i], "top": []}
                if margins is not None:
                    top = np.argsort(-probs[i], kind="stable")[:TOP_K]
                    row["top"] = [[self.head_labels[j], round(float(probs[i, j]), 5)] for j in top]
                    row["margin"] = round(float(margins[i]), 5)
                out.append(row)
            return out

    def _uncertainty_order(self, n: int) -> np.ndarray:
        """The default strategy's next batch first, then the rest by margin."""
        first = active.select(self.strategy, self.pool_probs, min(n, max(self.auto_every, 1)),
                              self._pool_x(), self.lab_x)
        rest = [i for i in active.order(self.pool_probs, "margin") if i not in set(first.tolist())]
        return np.concatenate([first, np.array(rest, np.int64)]).astype(np.int64)

    def _pool_x(self) -> np.ndarray:
        return (np.stack([self.feats[n] for n in self.pool_names]).astype(np.float32)
                if self.pool_names else np.zeros((0, 1), np.float32))

    def suggest(self, n: int = 50, strategy: str | None = None, seed: int = 0) -> list[dict]:
        """The ``n`` most informative pending images (``strategy``: margin, entropy,
        kcenter-margin, random), best first, with their scores; ``n`` < 1 is a
        :class:`ConfigError` (a negative count once listed all but the last photos)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ConfigError(f"--n must be a whole number of photos, at least 1 (got {n!r}): "
                              "e.g. --n 50")
        strategy = strategy or self.strategy
        if strategy not in active.STRATEGIES:
            raise InboxError(f"unknown strategy {strategy!r}: one of {', '.join(active.STRATEGIES)}")
        with self.lock:
            if self.head is None:
                raise InboxError(f"no model to rank the inbox with: label photos of at least 2 "
                                 f"labels in {self.run.data} or train first: tfguess train {self.run.root}")
            probs = self.pool_probs
            pick = active.select(strategy, probs, n, self._pool_x(), self.lab_x, seed=seed)
            margins, ent = active.margins(probs), active.entropy(probs)
            rows = []
            for rank, i in enumerate(pick, 1):
                top = np.argsort(-probs[i], kind="stable")[:TOP_K]
                rows.append({"rank": rank, "path": str(self.dir / self.pool_names[i]),
                             "predicted": self.head_labels[top[0]],
                             "score": f"{probs[i, top[0]]:.5f}", "margin": f"{margins[i]:.5f}",
                             "entropy": f"{ent[i]:.5f}",
                             "top_k": ";".join(f"{self.head_labels[j]}:{probs[i, j]:.5f}" for j in top)})
            return rows


def write_suggestions(rows: list[dict], out: str | Path | None) -> str:
    """The suggestions as CSV text; written to ``out`` when given (never over an existing file)."""
    import io

    buf = io.StringIO()
    fields = ["rank", "path", "predicted", "score", "margin", "entropy", "top_k"]
    writer = csv.DictWriter(buf, fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    text = buf.getvalue()
    if out is not None:
        out = Path(out)
        try:
            with open(out, "x", encoding="utf-8", newline="") as f:
                f.write(text)
        except FileExistsError:
            raise InboxError(f"{out} exists already: choose another --out (nothing is overwritten)") from None
    return text
