"""Synthetic placeholders ("image not found" pictures, blank images) told apart from photos."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

# Photos have thousands of distinct colours (even greyscale ones have ~256); icons, "image not
# found" placeholders and blank images have a few dozen at most (anti-aliased text: ~70).
PLACEHOLDER_MAX_COLOURS = 256
PLACEHOLDER_MIN_BACKGROUND = 0.5
PLACEHOLDER_MIN_PIXELS = 96 * 96
# A placeholder's content (text, an icon) sits in a small box on its background; line art (black
# outlines on white, also few colours on a dominant background) spreads over the picture.
PLACEHOLDER_MAX_CONTENT_BOX = 0.35
PLACEHOLDER_CONTENT_CONTRAST = 48


def placeholder_reason(img: Image.Image) -> str | None:
    """A reason when ``img`` looks like a synthetic placeholder, else None.

    Placeholders ("image not found" pictures, blank images) have few colours, one of them covers
    most of the picture, and what is not background fits in a small box (a line of text, an
    icon). Line art has few colours and a dominant background too, but its strokes fill the frame.
    """
    small = img
    w, h = img.size
    step = max(1, int(math.sqrt(w * h / 250_000)))
    if step > 1:  # nearest-neighbour subsampling keeps the colours a placeholder has
        small = img.resize((max(1, w // step), max(1, h // step)), Image.Resampling.NEAREST)
    small = small.convert("RGB")
    colours = small.getcolors(maxcolors=PLACEHOLDER_MAX_COLOURS)
    if colours is None:
        return None
    n = len(colours)
    if n == 1:
        return "blank image (a single colour)"
    if w * h < PLACEHOLDER_MIN_PIXELS:  # tiny crops and thumbnails naturally have few colours
        return None
    # A placeholder is mostly flat background; a photo reduced to a small palette is not.
    count, background = max(colours)
    dominant = count / (small.width * small.height)
    if dominant < PLACEHOLDER_MIN_BACKGROUND:
        return None
    # Content: pixels far from the background (faint frames and guide lines do not count).
    diff = np.abs(np.asarray(small, np.int16) - np.asarray(background, np.int16)).max(axis=2)
    content = diff > PLACEHOLDER_CONTENT_CONTRAST
    if not content.any():
        return f"looks like a placeholder, not a photo ({n} colours, {dominant:.0%} one colour)"
    rows, cols = np.flatnonzero(content.any(axis=1)), np.flatnonzero(content.any(axis=0))
    box = ((rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)) / content.size
    if box > PLACEHOLDER_MAX_CONTENT_BOX:
        return None
    return f"looks like a placeholder, not a photo ({n} colours, {dominant:.0%} one colour)"
