"""How a decoded image is made square for a backbone (``--resize``): the recipes, ``--resize
auto``'s rule, and :data:`PREPROCESS_VERSION`, the feature cache's key for the pixels a backbone sees.

Pure pixel arithmetic on decoded images (:mod:`tfguess.data.images` decodes them); the exports
reproduce it in TensorFlow ops (``tfguess.export``).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# "squash": the whole image resized to size x size (its aspect ratio is not kept): what MediaPipe
#   and the Task Library do with a TFLite model, so a TFLite export sees the pixels ``guess`` sees.
# "crop": the central square, 87.5 % of the shorter side, resized (the EfficientNet evaluation
#   recipe, and the keras.applications backbones' own): the edges are not seen, nothing is
#   distorted.
# "pad": the image centred on a square of PAD_VALUE (side = the longer side), then resized as
#   "squash" resizes: everything is seen, undistorted, at a smaller scale. A square image is
#   unchanged.
RESIZES = ("squash", "crop", "pad")
# Mid-grey: the EfficientNet-Lite normalisation (x - 127) / 128 maps it to 0, the value the
# network's own zero padding gives beyond an image's border.
PAD_VALUE = 127

# The EfficientNet evaluation recipe: resize the shorter side to size / CROP_FRACTION, centre crop.
CROP_FRACTION = 0.875
# Bump when decoding or resizing changes in a way that changes the pixels fed to a backbone: the
# feature cache is keyed by it. 4: squash reductions beyond SQUASH_BILINEAR_MAX take Pillow's
# antialiased bilinear (a triangle filter as wide as the reduction) instead of its bicubic: 1.1 ms
# instead of 1.8 ms for a 500x375 photo (docs/benchmarks.md, "Speed"), the val accuracy checked on every dev set.
PREPROCESS_VERSION = 4

# "squash" resizes with OpenCV's bilinear warp in its fixed-point arithmetic: the source position
# of output pixel x is x * w / size (corners aligned), rounded to 1/SUBPIXEL of a pixel, and the
# four weights are in 1/SUBPIXEL steps too. MediaPipe's ImageClassifier does exactly this on CPU
# (bench/export_clients.py), so a TFLite export given to it sees the pixels `guess` sees. Beyond a
# 2x reduction, bilinear taps skip source pixels (aliasing; the Task Library also filters such
# reductions its own way): an image more than SQUASH_BILINEAR_MAX times the input size (after
# draft decoding) is reduced with Pillow's antialiased bilinear instead (a triangle filter as wide
# as the reduction: every source pixel counts).
SUBPIXEL = 32
SQUASH_BILINEAR_MAX = 2.0


def crop_box(width: int, height: int, size: int) -> tuple[float, float, float, float]:
    """The source box ``(left, top, right, bottom)`` that "crop" resizes to ``size x size``: the
    centred square of side ``min(w, h) * size / round(size / 0.875)``."""
    scale = round(size / CROP_FRACTION) / min(width, height)  # resized pixels per source pixel
    side = size / scale  # crop side in source pixels
    left, top = (width - side) / 2, (height - side) / 2
    return (max(left, 0.0), max(top, 0.0), min(left + side, width), min(top + side, height))


def pad_offsets(width: int, height: int) -> tuple[int, int, int]:
    """``(left, top, side)``: "pad" puts a ``width x height`` image at ``(left, top)`` of a square
    of side ``max(width, height)``; an odd margin puts the extra pixel right of or below it."""
    side = max(width, height)
    return (side - width) // 2, (side - height) // 2, side


def pad_to_square(pixels: np.ndarray) -> np.ndarray:
    """``pixels`` (``uint8 [h, w, 3]``) centred on a square of :data:`PAD_VALUE` (see
    :func:`pad_offsets`); a square image is returned as it is."""
    h, w = pixels.shape[:2]
    if w == h:
        return pixels
    left, top, side = pad_offsets(w, h)
    out = np.full((side, side, pixels.shape[2]), PAD_VALUE, np.uint8)
    out[top:top + h, left:left + w] = pixels
    return out


def squash(pixels: np.ndarray, size: int) -> np.ndarray:
    """``pixels`` (``uint8 [h, w, 3]``) resized whole to ``size x size``, as "squash" does:
    :func:`squash_bilinear`, or Pillow's antialiased bilinear beyond a
    :data:`SQUASH_BILINEAR_MAX` reduction."""
    h, w = pixels.shape[:2]
    if squash_is_bilinear(w, h, size):
        return squash_bilinear(pixels, size)
    return squash_reduced(Image.fromarray(np.ascontiguousarray(pixels), "RGB"), size)


def squash_reduced(im: Image.Image, size: int) -> np.ndarray:
    """"squash" beyond a :data:`SQUASH_BILINEAR_MAX` reduction: Pillow's antialiased bilinear
    (the exports reproduce it: ``export.preprocessing._resize_like_pil``)."""
    return np.array(im.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def squash_is_bilinear(width: int, height: int, size: int) -> bool:
    """Whether "squash" resizes a ``width x height`` image with :func:`squash_bilinear`."""
    return max(width, height) <= SQUASH_BILINEAR_MAX * size


def _bilinear_axis(n: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output index: the two source indices and the weight of the second (0..SUBPIXEL)."""
    pos = np.rint(np.arange(size) * (n / size) * SUBPIXEL).astype(np.int64)
    first = np.minimum(pos // SUBPIXEL, n - 1)
    return first, np.minimum(first + 1, n - 1), pos % SUBPIXEL


def squash_bilinear(pixels: np.ndarray, size: int) -> np.ndarray:
    """``pixels`` (``uint8 [h, w, 3]``) resized to ``size x size`` as OpenCV's ``warpAffine``
    (INTER_LINEAR, corners aligned, edge pixels replicated) does: see :data:`SUBPIXEL`."""
    h, w = pixels.shape[:2]
    x0, x1, fx = _bilinear_axis(w, size)
    y0, y1, fy = _bilinear_axis(h, size)
    # The four neighbours of every output pixel are gathered as uint8 first (2 x size rows, then
    # 2 x size columns of them), so the arithmetic runs on size x size arrays, never on the whole
    # image, in the narrowest exact types: a horizontal sum is at most 255 * SUBPIXEL (uint16),
    # a vertical one 255 * SUBPIXEL**2 (uint32). The same integers as the plain formula, 4x faster.
    corners = pixels[np.concatenate([y0, y1])][:, np.concatenate([x0, x1])].astype(np.uint16)
    fx = fx.astype(np.uint16)[None, :, None]
    gx = SUBPIXEL - fx
    top = corners[:size, :size] * gx
    top += corners[:size, size:] * fx
    bottom = corners[size:, :size] * gx
    bottom += corners[size:, size:] * fx
    fy = fy.astype(np.uint32)[:, None, None]
    out = top * (SUBPIXEL - fy)
    out += bottom * fy
    out += SUBPIXEL * SUBPIXEL // 2
    out //= SUBPIXEL * SUBPIXEL
    return out.astype(np.uint8)
