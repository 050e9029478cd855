"""Active learning on cached features: which unlabelled image to label next, and how good the
model is so far. Plain numpy (and scikit-learn for the cross-validation): no TensorFlow.

* :func:`fit` trains the head the inbox re-trains after each batch of labels: the product's own
  :func:`head.fit_head` (dropout + softmax, class weights, Adam, the run's settings) on the plain
  cached features of every labelled image, with no validation split (early stopping on the
  training loss) and no augmented views (an unlabelled image has none cached), so a re-train
  never needs the backbone.
* :func:`order` and :func:`select`: the strategies. ``margin`` (smallest gap between the two
  best scores first), ``entropy`` (most spread scores first), ``kcenter-margin`` (diversity-
  aware: among the ``CANDIDATES_PER_PICK`` x n smallest margins, a k-center greedy choice on the
  L2-normalised features, each pick the candidate farthest from every labelled or already picked
  image), ``random``.
* :func:`guess_figures`: the page's figures, from the model's guesses shown when a person
  labelled each photo (prequential: every guess was made before the model saw that photo's
  label): how many of the last :data:`GUESS_WINDOW` were right, and the accuracy the current model
  is estimated to have on the photos left (:func:`remaining_mistakes`, its own doubt scaled by how
  over-confident its guesses proved, :func:`overconfidence`). ``bench/inbox_accuracy.py`` shows it
  tracks the true accuracy on the rest of the pile within a few points.
* :func:`cv_accuracy`: the labelled photos' cross-validated accuracy, which the page no longer
  shows: the photos labelled first are the ones the model is least sure of, so cross-validation
  on them measures the hardest photos (and a different, heavily regularised model): on weather4
  it said 62 % while the model was right on 93 % of the rest (``bench/inbox_accuracy.py``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfguess.core.config import TrainConfig
from tfguess.data.hygiene import normalise, out_of_sample_probs
from tfguess.engine.runtime import Head
from tfguess.training.head import fit_head

STRATEGIES = ("margin", "entropy", "kcenter-margin", "random")
DEFAULT_STRATEGY = "margin"   # bench/active_learning.py chooses it (docs/benchmarks.md)
CANDIDATES_PER_PICK = 5       # kcenter-margin: candidates per image picked
GUESS_WINDOW = 50             # the page's "right on k of the last n photos you labelled"
OVERCONFIDENCE_PRIOR = 1.0    # one expected mistake: a few right guesses don't make it sure


def fit(x: np.ndarray, y: np.ndarray, num_classes: int, config: TrainConfig | None = None) -> Head:
    """The inbox's re-train: :func:`head.fit_head` with the run's settings on ``x``, ``y``."""
    config = dataclasses.replace(config or TrainConfig(), views=0, validation_pct=0.0,
                                 fine_tune=False)
    return fit_head(np.asarray(x, np.float32), np.asarray(y, np.int64), num_classes, config,
                    None, progress=False).head


def margins(probs: np.ndarray) -> np.ndarray:
    """Best score minus the second best (1 when there is one label)."""
    if probs.shape[1] < 2:
        return np.ones(len(probs))
    top2 = -np.partition(-probs, 1, axis=1)[:, :2]
    return top2[:, 0] - top2[:, 1]


def entropy(probs: np.ndarray) -> np.ndarray:
    p = np.clip(probs, 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=1)


def order(probs: np.ndarray, by: str = "margin", labels: list[str] | None = None,
          seed: int = 0) -> np.ndarray:
    """Row indices in the order a person should see them.

    ``margin``: the most uncertain first (smallest margin); ``entropy``: highest entropy first;
    ``label``: grouped by predicted label (in ``labels`` order, else by index), most confident
    first within a label; ``score``: most confident first; ``random``: a fixed shuffle.
    Ties keep the input order.
    """
    n = len(probs)
    if n == 0:
        return np.zeros(0, np.int64)
    if by == "margin":
        return np.argsort(margins(probs), kind="stable")
    if by == "entropy":
        return np.argsort(-entropy(probs), kind="stable")
    if by == "score":
        return np.argsort(-probs.max(1), kind="stable")
    if by == "label":
        pred = probs.argmax(1)
        rank = np.argsort(np.argsort(labels, kind="stable")) if labels else np.arange(probs.shape[1])
        return np.lexsort((-probs.max(1), rank[pred]))
    if by == "random":
        return np.random.default_rng(seed).permutation(n)
    raise ValueError(f"unknown order {by!r}: margin, entropy, label, score or random")


def kcenter_greedy(candidates: np.ndarray, labelled: np.ndarray, n: int) -> list[int]:
    """``n`` rows of ``candidates`` (L2-normalised features), each the farthest (cosine) from the
    labelled rows and the rows already picked."""
    if len(candidates) == 0 or n <= 0:
        return []
    if len(labelled):
        nearest = np.full(len(candidates), np.inf)
        for start in range(0, len(labelled), 2048):
            d = 1.0 - candidates @ labelled[start:start + 2048].T
            nearest = np.minimum(nearest, d.min(1))
    else:
        nearest = np.full(len(candidates), np.inf)
    picked: list[int] = []
    for _ in range(min(n, len(candidates))):
        i = int(np.argmax(nearest))
        picked.append(i)
        nearest = np.minimum(nearest, 1.0 - candidates @ candidates[i])
        nearest[picked] = -np.inf
    return picked


def select(strategy: str, probs: np.ndarray, n: int, features: np.ndarray | None = None,
           labelled_features: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """The ``n`` rows of an unlabelled pool to label next (indices into ``probs``), best first."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: one of {', '.join(STRATEGIES)}")
    n = min(n, len(probs))
    if strategy in ("margin", "entropy", "random"):
        return order(probs, strategy, seed=seed)[:n]
    if features is None:
        raise ValueError("kcenter-margin needs the features of the pool")
    ranked = order(probs, "margin")[:max(n, CANDIDATES_PER_PICK * n)]
    cand = normalise(np.asarray(features, np.float32)[ranked])
    lab = (normalise(np.asarray(labelled_features, np.float32))
           if labelled_features is not None and len(labelled_features) else np.zeros((0, cand.shape[1])))
    return ranked[kcenter_greedy(cand, lab, n)]


def cv_probs(x: np.ndarray, y: np.ndarray, num_classes: int, seed: int = 0) -> np.ndarray | None:
    """Out-of-sample class probabilities of the labelled images (k-fold, k <= 5, logistic
    regression as the review page's suspects use), or None when a label has fewer than 2 images."""
    counts = np.bincount(y, minlength=num_classes)
    if len(y) < 4 or (counts[counts > 0] < 2).any() or (counts > 0).sum() < 2:
        return None
    present = np.flatnonzero(counts)
    remap = np.full(num_classes, -1)
    remap[present] = np.arange(len(present))
    probs = out_of_sample_probs(np.asarray(x, np.float32), remap[y], len(present), seed=seed)
    full = np.zeros((len(y), num_classes))
    full[:, present] = probs
    return full


def cv_accuracy(y: np.ndarray, oos: np.ndarray | None) -> float | None:
    return None if oos is None else float((oos.argmax(1) == y).mean())


def calibration(y: np.ndarray | None, oos: np.ndarray | None) -> float:
    """How much more often the model errs than its own scores say: the labelled images'
    cross-validated error rate divided by their mean ``1 - max score`` out of sample (1 without
    cross-validation)."""
    if oos is None or y is None or not len(y):
        return 1.0
    doubt = float((1.0 - oos.max(1)).mean())
    error = float((oos.argmax(1) != y).mean())
    return error / doubt if doubt > 1e-6 else 1.0


def remaining_mistakes(pool_probs: np.ndarray, factor: float = 1.0) -> float:
    """How many of the pool's images the model is expected to get wrong: the sum over the pool of
    ``1 - max score`` (what the model itself expects to get wrong) times :func:`calibration`'s
    factor (a model over-confident by a factor of two on the labelled images out of sample is
    taken to be so on the pool too), at most the pool's size. The labelled images were mostly
    chosen as the hardest ones, so the factor tends to err on the side of more mistakes."""
    if len(pool_probs) == 0:
        return 0.0
    return min(float((1.0 - pool_probs.max(1)).sum()) * factor, float(len(pool_probs)))


def overconfidence(wrong: int, doubt: float, prior: float = OVERCONFIDENCE_PRIOR) -> float:
    """How much more often the model erred than its scores said, on the guesses recorded:
    ``(wrong + prior) / (doubt + prior)`` (``doubt``: the sum of ``1 - score`` of those guesses);
    1 with none recorded, and ``prior`` keeps a handful of right guesses from making it 0."""
    return (wrong + prior) / (doubt + prior)


def guess_figures(guesses: list[tuple[bool, float]], pool_probs: np.ndarray,
                  window: int = GUESS_WINDOW) -> dict:
    """The page's figures from ``guesses``: ``(right, score)`` of the model's guess shown when a
    person labelled each photo, oldest first.

    ``right`` of the last ``checked`` (at most ``window``) guesses were the label given
    (``accuracy``, None before the first); ``remaining_mistakes`` and ``estimated_accuracy``: the
    current model on the ``pool`` photos left, its own doubt times :func:`overconfidence` on all
    the guesses recorded."""
    recent = guesses[-window:]
    right = sum(1 for ok, _ in recent if ok)
    factor = overconfidence(sum(1 for ok, _ in guesses if not ok),
                            float(sum(1.0 - score for _, score in guesses)))
    scored = len(pool_probs) and pool_probs.shape[1]   # no model yet: no scores, no estimate
    mistakes = remaining_mistakes(pool_probs, factor) if scored else 0.0
    n = len(pool_probs)
    return {"right": right, "checked": len(recent), "recorded": len(guesses),
            "accuracy": right / len(recent) if recent else None, "window": window,
            "overconfidence": round(factor, 3), "remaining_mistakes": round(mistakes, 1),
            "estimated_accuracy": 1.0 - mistakes / n if scored else None}


@dataclasses.dataclass
class Refit:
    """One re-train of the inbox: the head, the pool's scores and the page's figures."""

    head: Head
    pool_probs: np.ndarray
    cv_accuracy: float | None
    calibration: float     # see :func:`calibration`
    remaining: float
    seconds: float


def refit(x: np.ndarray, y: np.ndarray, num_classes: int, pool_x: np.ndarray,
          config: TrainConfig | None = None, cv: bool = True) -> Refit:
    """What the inbox does on "re-train": :func:`fit`, the pool scored, the cross-validated
    accuracy and the estimate of the mistakes left (timed together).

    One BLAS thread: the matrices are small (a batch of 64 by the feature size), and on a busy
    2-core machine the default thread pool made a 44-image fit take 26 s instead of 0.6 s.
    """
    import time

    from threadpoolctl import threadpool_limits

    t = time.perf_counter()
    with threadpool_limits(1):
        head = fit(x, y, num_classes, config)
        pool_probs = (head(np.asarray(pool_x, np.float32)) if len(pool_x)
                      else np.zeros((0, num_classes)))
        oos = cv_probs(x, y, num_classes) if cv else None
    factor = calibration(y, oos)
    return Refit(head, pool_probs, cv_accuracy(y, oos), factor,
                 remaining_mistakes(pool_probs, factor), time.perf_counter() - t)
