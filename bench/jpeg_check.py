"""Pillow's draft-mode JPEG decoding against simplejpeg's DCT scaling, as tfguess loads images.

Usage: .venv/bin/python bench/jpeg_check.py   (needs ``pip install simplejpeg``)

tfguess decodes JPEGs with simplejpeg when it is installed (a default dependency), big ones at
a reduced DCT scale; here ``load_image`` is made to use Pillow alone. Both decode with
libjpeg-turbo at full, 1/2, 1/4 or 1/8 scale; the check prints the largest pixel difference of
the 224x224 crops and the CPU time per image (one thread, runs interleaved) on web-sized photos
(hymenoptera) and phone-sized ones (the benchmark's 4000x3000 set), then how many JPEGs of every
data set in ../shared/datasets ``decode_image`` decodes to other pixels with simplejpeg than with
Pillow (full size and drafted for 224).
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark as B  # noqa: E402

from tfguess.data import images  # noqa: E402
from tfguess.data.images import CROP_FRACTION, DRAFT_MARGIN, load_image  # noqa: E402

images._simplejpeg = None  # load_image below: Pillow's draft mode only
DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"

SIZE = 224


def simplejpeg_load(path: Path, size: int = SIZE) -> np.ndarray:
    data = path.read_bytes()
    h, w = simplejpeg.decode_jpeg_header(data)[:2]
    need = size * DRAFT_MARGIN
    kwargs = {}
    if min(w, h) >= 2 * need:
        s = need / min(w, h)
        kwargs = {"min_width": math.ceil(w * s), "min_height": math.ceil(h * s)}
    im = Image.fromarray(simplejpeg.decode_jpeg(data, colorspace="RGB", **kwargs))
    w, h = im.size
    scale = round(size / CROP_FRACTION) / min(w, h)
    side = size / scale
    left, top = (w - side) / 2, (h - side) / 2
    box = (max(left, 0.0), max(top, 0.0), min(left + side, w), min(top + side, h))
    return np.array(im.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0))


def pillow_load(path: Path) -> np.ndarray:
    return load_image(path, SIZE, "crop")


def main() -> int:
    sets = {"web": B._jpegs(B.DATASET)[:120], "phone": B.phone_set(B.DATASET, 24)}
    for name, paths in sets.items():
        diff = max(int(np.abs(simplejpeg_load(p).astype(int) - pillow_load(p)).max()) for p in paths[:20])
        ms: dict[str, list[float]] = {"pillow": [], "simplejpeg": []}
        for rep in range(4):
            order = [("pillow", pillow_load), ("simplejpeg", simplejpeg_load)]
            for key, load in order if rep % 2 == 0 else order[::-1]:
                t = time.process_time()
                for p in paths:
                    load(p)
                ms[key].append(1000 * (time.process_time() - t) / len(paths))
        print(f"{name} ({len(paths)} files): max pixel difference {diff}; CPU ms/img "
              + ", ".join(f"{k} {min(v):.2f}" for k, v in ms.items())
              + f"; load average {os.getloadavg()[0]:.1f}")
    every_jpeg()
    return 0


def decoded(path: Path, fast: bool, draft: int | None) -> np.ndarray | None:
    images._simplejpeg = simplejpeg if fast else None
    try:
        return np.asarray(images.decode_image(path, draft_size=draft))
    except images.ImageError:
        return None
    finally:
        images._simplejpeg = None


def every_jpeg() -> None:
    """``decode_image`` with simplejpeg against Pillow alone, on every JPEG of the data sets."""
    paths = sorted(p for p in DATASETS.rglob("*") if p.is_file() and images.sniff(p) == "JPEG")
    for draft in (None, SIZE):
        differ = [p for p in paths
                  if not np.array_equal(*(decoded(p, fast, draft) for fast in (True, False)))]
        print(f"every JPEG of {DATASETS} ({len(paths)}), decoded "
              f"{'drafted for ' + str(draft) if draft else 'at full size'}: "
              f"{len(differ)} with other pixels" + (f", e.g. {differ[0]}" if differ else ""))


if __name__ == "__main__":
    sys.exit(main())
