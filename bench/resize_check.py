"""Squash vs centre crop: validation accuracy of models trained and evaluated with each resize.

    python bench/resize_check.py [--backbone NAME] [--seeds N] [DATASET_DIR ...]

Each DATASET_DIR has train/ and val/ (default: ../shared/datasets/hymenoptera and
cub_songbirds22). For each resize recipe the backbone's features are computed with it for both
training and evaluation; the head is trained with N seeds (the features are cached, so seeds are
cheap) and the val accuracy of each is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfguess import backbones  # noqa: E402
from tfguess.config import TrainConfig  # noqa: E402
from tfguess.train import train  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def val_accuracy(data: Path, backbone: str, resize: str, seed: int, tf_files: Path) -> float:
    spec = backbones.get_backbone(backbone)
    backbones.register_backbone(dataclasses.replace(spec, resize=resize))
    try:
        config = TrainConfig(backbone=backbone, image_dir=str(data / "train"),
                             eval_dir=str(data / "val"), report=False, seed=seed)
        result = train(tf_files, config, progress=False, log=lambda *_: None)
    finally:
        backbones.register_backbone(spec)
    return float(result.metrics["eval_dir"]["accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="*", type=Path,
                        default=[SHARED / "hymenoptera", SHARED / "cub_songbirds22"])
    parser.add_argument("--backbone", default=backbones.DEFAULT_BACKBONE)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    print(f"{'data set':18} {'resize':7} {'n val':>5} {'accuracy per seed':>30} {'mean':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for data in args.datasets:
            n = sum(1 for p in (data / "val").rglob("*") if p.is_file())
            for resize in ("crop", "squash"):
                tf_files = Path(tmp) / f"{data.name}-{resize}"
                accs = [val_accuracy(data, args.backbone, resize, s, tf_files) for s in range(args.seeds)]
                cells = " ".join(f"{a:.2%}" for a in accs)
                print(f"{data.name:18} {resize:7} {n:5} {cells:>30} {statistics.mean(accs):7.2%}",
                      flush=True)


if __name__ == "__main__":
    main()
