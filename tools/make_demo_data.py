"""Rebuild the demo data set shipped in tf_files/data/ and test_data/.

The images come from scikit-image's ``lfw_subset`` (``skimage.data.lfw_subset()``): 200 greyscale
25x25 crops, the first 100 of faces from the Labeled Faces in the Wild data set, the last 100 of
non-face patches. 90 of each class go to ``tf_files/data/{face,not_face}/`` (PNG), the remaining 10
of each to ``test_data/`` (JPEG) as held-out images. Run: ``python tools/make_demo_data.py``.
"""

from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
N_TRAIN = 90


def main() -> None:
    from skimage.data import lfw_subset

    images = (lfw_subset() * 255).round().astype(np.uint8)
    classes = {"face": images[:100], "not_face": images[100:]}
    for label, group in classes.items():
        train_dir = ROOT / "tf_files" / "data" / label
        train_dir.mkdir(parents=True, exist_ok=True)
        for i, pixels in enumerate(group):
            image = Image.fromarray(pixels, mode="L")
            if i < N_TRAIN:
                image.save(train_dir / f"{label}_{i:03d}.png")
            else:
                image.save(ROOT / "test_data" / f"{label}_{i:03d}.jpg", quality=95)


if __name__ == "__main__":
    (ROOT / "test_data").mkdir(exist_ok=True)
    main()
