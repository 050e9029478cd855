"""ImageNet check of the converted EfficientNet-Lite classifiers on hymenoptera/val
(ImageNet classes 310 "ant" and 309 "bee"): top-1 / top-5 with the crop and squash resizes.

Usage: python bench/imagenet_check.py [DATASET_DIR] [BACKBONE ...]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from tfguess.data.images import load_image
from tfguess.engine.backbones import get_backbone

LABELS = {"ants": 310, "bees": 309}


def main(argv: list[str]) -> None:
    default = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "hymenoptera"
    root = Path(argv[0]) if argv else default
    names = argv[1:] or ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    paths, labels = [], []
    for folder, label in LABELS.items():
        for p in sorted((root / "val" / folder).iterdir()):
            paths.append(p)
            labels.append(label)
    y = np.array(labels)
    for name in names:
        backbone = get_backbone(name)
        start = time.perf_counter()
        model = backbone.build(include_top=True)
        built = time.perf_counter() - start
        for resize in ("crop", "squash"):
            x = np.stack([load_image(p, backbone.input_size, resize=resize) for p in paths])
            probs = model.predict(x.astype(np.float32), batch_size=32, verbose=0)
            top5 = np.argsort(-probs, axis=1)[:, :5]
            top1_acc = np.mean(top5[:, 0] == y)
            top5_acc = np.mean((top5 == y[:, None]).any(axis=1))
            print(f"{name:20s} {backbone.input_size}px {resize:6s} n={len(y)} "
                  f"top-1 {top1_acc:.3f} top-5 {top5_acc:.3f} (build {built:.1f}s)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
