"""Data hygiene on cached bottleneck features: suspected label errors and near-duplicates.

Both run on the features ``train`` already cached, so they cost seconds and need no TensorFlow.

* Suspected label errors: out-of-sample class probabilities for every usable image from a
  cross-validated logistic regression on the features, then confident learning
  (:func:`cleanlab.filter.find_label_issues`) flags the images whose folder disagrees with a
  confident prediction, ranked by self-confidence (the probability given to the folder's label).
* Atypical images: the lowest out-of-distribution scores of the features
  (:class:`cleanlab.outlier.OutOfDistribution`, distance to the nearest neighbours): junk,
  placeholders, photos of something else.
* Near-duplicates: pairs of different files whose L2-normalised features have a cosine
  similarity of at least :data:`NEAR_DUPLICATE_THRESHOLD`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

# Cosine similarity of L2-normalised efficientnet_lite0 features (all >= 0, so unrelated photos
# still score 0.3-0.7). Measured on hymenoptera: 20 photos re-encoded as JPEG quality 60, resized to
# 80 %, cropped by 5 % on each side or by 10 % on one side kept >= 0.876 with their originals
# (medians 0.94-0.98); among the 29,890 pairs of different photos in hymenoptera/train the highest
# was 0.80 (two shots of one burst) and the 99.9th percentile 0.73.
NEAR_DUPLICATE_THRESHOLD = 0.85


def calibrate_threshold(x: np.ndarray, floor: float = NEAR_DUPLICATE_THRESHOLD,
                        sample: int = 2000, seed: int = 0) -> float:
    """The near-duplicate threshold for these features: ``floor``, raised when the images are all
    alike (aligned face crops, product shots) to halfway between the 99.9th percentile of the
    pairwise similarities and 1, so that only pairs far closer than usual are reported."""
    if len(x) < 3:
        return floor
    rows = np.random.default_rng(seed).permutation(len(x))[:sample]
    z = normalise(x[rows].astype(np.float32))
    sims = (z @ z.T)[np.triu_indices(len(z), 1)]
    return round(max(floor, (1 + float(np.percentile(sims, 99.9))) / 2), 3)
CV_FOLDS = 5


@dataclass
class Suspect:
    index: int            # row in the feature matrix
    given: int            # the folder's label
    suggested: int        # the most probable other label
    self_confidence: float  # out-of-sample probability of the given label (low = suspect)
    suggested_prob: float


def out_of_sample_probs(x: np.ndarray, y: np.ndarray, num_classes: int, folds: int = CV_FOLDS,
                        seed: int = 0) -> np.ndarray:
    """Class probabilities of each row from a model that never saw it (k-fold cross-validation)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    smallest = int(np.bincount(y, minlength=num_classes).min())
    folds = max(2, min(folds, smallest))
    model = LogisticRegression(C=1.0, max_iter=2000)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probs = cross_val_predict(model, normalise(x), y, cv=cv, method="predict_proba")
    return np.asarray(probs, dtype=np.float64)


def normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def find_suspects(y: np.ndarray, probs: np.ndarray) -> list[Suspect]:
    """Images whose out-of-sample prediction confidently disagrees with their label, worst first."""
    from cleanlab.filter import find_label_issues

    k = probs.shape[1]
    if len(y) < 2 or np.bincount(y, minlength=k).min() < 1:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # n_jobs=1: cleanlab otherwise forks a process pool, which can deadlock a process that
        # runs other threads (the web server's re-train, a Ray driver); the data here is small.
        ranked = find_label_issues(y, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    out = []
    for i in ranked:
        other = probs[i].copy()
        other[y[i]] = -1
        j = int(other.argmax())
        out.append(Suspect(int(i), int(y[i]), j, float(probs[i, y[i]]), float(probs[i, j])))
    return out


def atypical(x: np.ndarray, limit: int) -> list[tuple[int, float]]:
    """The ``limit`` rows least like the others, ``(index, score)`` with the lowest score first."""
    from cleanlab.outlier import OutOfDistribution

    if len(x) < 3 or limit < 1:
        return []
    ood = OutOfDistribution(params={"k": min(10, len(x) - 1)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = ood.fit_score(features=normalise(x), verbose=False)
    order = np.argsort(scores, kind="stable")[:limit]
    return [(int(i), float(scores[i])) for i in order]


def near_duplicates(x: np.ndarray, threshold: float = NEAR_DUPLICATE_THRESHOLD,
                    block: int = 2048) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, cosine)`` with ``i < j`` and cosine similarity >= ``threshold``, most similar first."""
    z = normalise(x.astype(np.float32))
    pairs = []
    for start in range(0, len(z), block):
        sims = z[start:start + block] @ z.T
        rows, cols = np.nonzero(sims >= threshold)
        for r, c in zip(rows, cols, strict=True):
            i = start + int(r)
            if i < c:
                pairs.append((i, int(c), float(sims[r, c])))
    pairs.sort(key=lambda p: -p[2])
    return pairs
