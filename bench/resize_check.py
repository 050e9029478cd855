"""Squash, centre crop and pad: what each resize gives, and what a squashing client sees.

    python bench/resize_check.py [--backbone NAME] [--seeds N] [--views V] [DATASET_DIR ...]
    python bench/resize_check.py --agreement TF_FILES [TF_FILES ...]

The first form: each DATASET_DIR has train/ and val/ (default: every data set of
../shared/datasets). For each resize the backbone's features are computed with it for both
training and evaluation; the head is trained with N seeds (the features are cached, so seeds are
cheap) and the val accuracy of each is printed.

``--agreement``: for models trained with ``--resize crop`` or ``pad`` (e.g. the folders
``bench/accuracy_table.py --suite`` leaves), the top-1 agreement between the model fed its own
resize (what ``guess`` and the SavedModel / frozen graph exports do) and the model fed the whole
image squashed (what MediaPipe and the TFLite Task Library do with a TFLite export), on every
image of the folder the model was evaluated on (``--eval-dir``), per folder and pooled by resize.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfguess.core.config import TrainConfig  # noqa: E402
from tfguess.data.images import RESIZES  # noqa: E402
from tfguess.engine import backbones  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def val_accuracy(data: Path, backbone: str, resize: str, seed: int, views: int, tf_files: Path) -> float:
    from tfguess.training.train import train

    config = TrainConfig(backbone=backbone, image_dir=str(data / "train"), resize=resize,
                         eval_dir=str(data / "val"), report=False, seed=seed, views=views)
    result = train(tf_files, config, progress=False, log=lambda *_: None)
    return float(result.metrics["eval_dir"]["accuracy"])


def agreement(folders: list[Path]) -> None:
    import numpy as np

    from tfguess.data.images import ImageError, load_image
    from tfguess.guess.predict import Predictor

    pooled: dict[str, list[int]] = {}
    print(f"{'model':40} {'resize':6} {'n':>5} {'squash-fed agrees':>18} {'accuracy own / squashed':>24}")
    for folder in folders:
        summary = json.loads((folder / "run_summary.json").read_text())
        val = Path(summary["config"]["eval_dir"])
        predictor = Predictor.load(folder, log=lambda *_: None, precision="float32")  # as the float32 TFLite export
        resize = predictor.resize
        paths = sorted(p for p in val.glob("*/*") if p.is_file())
        truth = [predictor.labels.index(p.parent.name) for p in paths]
        own, squashed, kept = [], [], []
        for start in range(0, len(paths), 32):
            a, b = [], []
            for i, p in enumerate(paths[start:start + 32], start):
                try:
                    a.append(load_image(p, predictor.input_size, resize))
                    b.append(load_image(p, predictor.input_size, "squash"))
                    kept.append(i)
                except (ImageError, OSError):
                    continue
            if a:
                own.append(predictor.probabilities(np.stack(a).astype(np.float32)).argmax(1))
                squashed.append(predictor.probabilities(np.stack(b).astype(np.float32)).argmax(1))
        own_top, sq_top = np.concatenate(own), np.concatenate(squashed)
        y = np.array([truth[i] for i in kept])
        same = int((own_top == sq_top).sum())
        pooled.setdefault(resize, [0, 0])
        pooled[resize][0] += same
        pooled[resize][1] += len(y)
        print(f"{folder.name:40} {resize:6} {len(y):5} {same / len(y):18.1%} "
              f"{(own_top == y).mean():11.4f} / {(sq_top == y).mean():.4f}", flush=True)
    for resize, (same, n) in pooled.items():
        print(f"{'pooled':40} {resize:6} {n:5} {same / n:18.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="*", type=Path)
    parser.add_argument("--backbone", default=backbones.DEFAULT_BACKBONE)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--views", type=int, default=TrainConfig.views)
    parser.add_argument("--agreement", nargs="+", type=Path, metavar="TF_FILES",
                        help="measure what a squashing client sees with these crop / pad models")
    args = parser.parse_args()
    if args.agreement:
        agreement(args.agreement)
        return
    datasets = args.datasets or sorted(d for d in SHARED.iterdir() if (d / "val").is_dir())
    print(f"{'data set':18} {'resize':7} {'n val':>5} {'accuracy per seed':>30} {'mean':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for data in datasets:
            n = sum(1 for p in (data / "val").rglob("*") if p.is_file())
            for resize in RESIZES:
                tf_files = Path(tmp) / f"{data.name}-{resize}"
                accs = [val_accuracy(data, args.backbone, resize, s, args.views, tf_files)
                        for s in range(args.seeds)]
                cells = " ".join(f"{a:.2%}" for a in accs)
                print(f"{data.name:18} {resize:7} {n:5} {cells:>30} {statistics.mean(accs):7.2%}",
                      flush=True)


if __name__ == "__main__":
    main()
