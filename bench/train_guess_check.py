"""Figures of train and guess-dir on the shared hymenoptera data set.

Trains on hymenoptera/train with default settings into a fresh folder (cold cache), trains again
(warm cache), then sorts hymenoptera/val with guess-dir and scores the manifest against the
sub-folders. Run: python bench/train_guess_check.py [HYMENOPTERA_DIR]
"""

from __future__ import annotations

import csv
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfguess.core.config import TrainConfig  # noqa: E402
from tfguess.guess.predict import guess_dir  # noqa: E402
from tfguess.training.train import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared/datasets/hymenoptera"
    quiet = {"progress": False, "log": lambda *_: None}
    with tempfile.TemporaryDirectory() as tmp:
        tf_files = Path(tmp) / "tf_files"
        config = TrainConfig(image_dir=str(data / "train"), eval_dir=str(data / "val"), report=False)
        rows = []
        for run in ("first (cold cache)", "second (warm cache)"):
            t = time.perf_counter()
            result = train(tf_files, config, **quiet)
            seconds = time.perf_counter() - t
            s = result.summary
            rows.append((run, seconds, s["features"]["computed"], s["metrics"]["test"]["accuracy"],
                         s["metrics"]["test"]["n"], s["metrics"]["eval_dir"]["accuracy"]))
        skipped = [Path(x["path"]).name + ": " + x["reason"] for x in s["skipped"]]
        gd = guess_dir(tf_files, data / "val", Path(tmp) / "sorted", recursive=True, **quiet)
        with open(gd.manifest) as f:
            manifest = list(csv.DictReader(f))
        correct = sum(r["label"] == Path(r["source"]).parent.name for r in manifest)

    print(f"train on {data / 'train'} (load average {os.getloadavg()[0]:.1f})")
    print(f"{'run':22} {'wall s':>7} {'computed':>9} {'test acc':>9} {'val acc (153)':>14}")
    for run, seconds, computed, test_acc, test_n, val_acc in rows:
        print(f"{run:22} {seconds:7.1f} {computed:9d} {test_acc:9.4f} {val_acc:14.4f}   (test n={test_n})")
    print(f"skipped: {'; '.join(skipped) or 'none'}")
    print(f"guess-dir on {data / 'val'}: {len(manifest)} images, accuracy from the manifest "
          f"{correct / len(manifest):.4f}, {gd.images_per_second:.1f} images/s")


if __name__ == "__main__":
    main()
