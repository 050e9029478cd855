"""What averaging two trained models' probabilities would score: the evidence for (or against)
an ensemble recipe, before building one.

Scores every photo of a labelled folder (``<label>/`` sub-folders) with each model (float32,
``Predictor``) and with the mean of their probabilities, and prints the three accuracies.

Run:  python bench/ensemble_check.py VAL_DIR TF_FILES_A TF_FILES_B
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def probabilities(model: Path, photos: list[Path]) -> tuple[list[str], np.ndarray]:
    from tfguess.guess.predict import Predictor

    predictor = Predictor.load(model, precision="float32", log=lambda *_: None)
    labels = sorted(predictor.labels)
    rows = []
    for pred in predictor.predict(photos, batch_size=32):
        scores = dict(pred.top)
        rows.append([scores.get(label, np.nan) for label in labels])
    return labels, np.array(rows, dtype=np.float64)


def main() -> None:
    val, a, b = (Path(x) for x in sys.argv[1:4])
    photos = sorted(p for p in val.rglob("*") if p.is_file())
    labels_a, pa = probabilities(a, photos)
    labels_b, pb = probabilities(b, photos)
    if labels_a != labels_b:
        raise SystemExit("the two models have different labels")
    ok = ~(np.isnan(pa).any(1) | np.isnan(pb).any(1))
    truth = np.array([labels_a.index(p.parent.name) for p in photos])[ok]
    for name, probs in (("A", pa[ok]), ("B", pb[ok]), ("mean of A and B", (pa[ok] + pb[ok]) / 2)):
        right = int((probs.argmax(1) == truth).sum())
        print(f"{name:16} {right} of {len(truth)} right ({right / len(truth):.4f})")


if __name__ == "__main__":
    main()
