"""Image augmentation: random resized crops, mirror images, small rotations, colour jitter.

Two users: fine-tuning draws a fresh augmented view of every image at every epoch
(:func:`random_view`), and the frozen path trains its head on the cached features of a few
*fixed* augmented views per image (:func:`view_features`). A fixed view is a pure function of
the image's content digest, the view index and the recipe (policy, ``no_flip``,
:data:`AUGMENT_VERSION`), so its features are cached like the plain ones and a re-run
recomputes nothing.

``no_flip`` is for data where a mirror image means something else (text, logos, left/right):
with it, no mirrored view is ever produced (:func:`sample_params` never sets ``flip``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tfguess.core.errors import ConfigError
from tfguess.data.images import CROP_FRACTION, ImageError, decode_image, load_image

POLICIES = ("none", "light", "strong")

# Bump when a view's recipe changes in a way that changes its pixels (it is part of cache keys).
AUGMENT_VERSION = 1

FILL = (124, 116, 104)  # ImageNet mean colour, for the corners a rotation uncovers


@dataclass(frozen=True)
class Policy:
    scale: tuple[float, float]   # area of the crop, as a fraction of the (resized) image's area
    ratio: tuple[float, float]   # aspect ratio (width / height) of the crop
    rotate: float                # maximum rotation, degrees
    jitter: float                # maximum relative change of brightness, contrast, saturation


POLICY_PARAMS = {
    "light": Policy(scale=(0.45, 1.0), ratio=(0.8, 1.25), rotate=8.0, jitter=0.15),
    "strong": Policy(scale=(0.25, 1.0), ratio=(0.75, 4 / 3), rotate=15.0, jitter=0.35),
}


@dataclass(frozen=True)
class ViewParams:
    """One augmented view: a crop box (in the prepared image's pixels), a rotation, a mirror."""

    box: tuple[float, float, float, float]  # left, top, width, height
    angle: float = 0.0
    flip: bool = False
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0


def check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ConfigError(f"unknown augmentation {policy!r}: choose one of {', '.join(POLICIES)}")


def prepare(im: Image.Image, size: int) -> Image.Image:
    """Resize so that the shorter side is ``round(size / 0.875)``: the scale of the evaluation crop."""
    w, h = im.size
    short = round(size / CROP_FRACTION)
    scale = short / min(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    return im if new == (w, h) else im.resize(new, Image.Resampling.BICUBIC, reducing_gap=3.0)


def sample_params(rng: np.random.Generator, w: int, h: int, policy: str, no_flip: bool) -> ViewParams:
    """A random view of a ``w x h`` prepared image. Never mirrored when ``no_flip``."""
    check_policy(policy)
    flip = (not no_flip) and bool(rng.random() < 0.5)
    if policy == "none":
        side = min(w, h) * CROP_FRACTION
        return ViewParams(((w - side) / 2, (h - side) / 2, side, side), flip=flip)
    p = POLICY_PARAMS[policy]
    area = w * h * rng.uniform(*p.scale)
    ratio = math.exp(rng.uniform(math.log(p.ratio[0]), math.log(p.ratio[1])))
    cw = min(w, math.sqrt(area * ratio))
    ch = min(h, math.sqrt(area / ratio))
    left, top = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
    j = p.jitter
    return ViewParams(
        (left, top, cw, ch),
        angle=float(rng.uniform(-p.rotate, p.rotate)),
        flip=flip,
        brightness=float(rng.uniform(1 - j, 1 + j)),
        contrast=float(rng.uniform(1 - j, 1 + j)),
        saturation=float(rng.uniform(1 - j, 1 + j)),
    )


def apply_params(im: Image.Image, params: ViewParams, size: int) -> np.ndarray:
    """The ``uint8 [size, size, 3]`` view of a prepared image (one affine resampling)."""
    left, top, cw, ch = params.box
    cx, cy = left + cw / 2, top + ch / 2
    sx, sy = cw / size, ch / size
    a = math.radians(params.angle)
    cos, sin = math.cos(a), math.sin(a)
    # Output pixel (u, v) -> source pixel: centre, scale, mirror, rotate about the crop centre.
    fx = -sx if params.flip else sx
    m = (cos * fx, -sin * sy, 0.0, sin * fx, cos * sy, 0.0)
    # PIL samples output pixel centres (u + 0.5) in continuous source coordinates.
    c = cx - (m[0] + m[1]) * size / 2
    f = cy - (m[3] + m[4]) * size / 2
    out = im.transform((size, size), Image.Transform.AFFINE, (m[0], m[1], c, m[3], m[4], f),
                       resample=Image.Resampling.BICUBIC, fillcolor=FILL)
    x = np.asarray(out, dtype=np.float32)
    if (params.brightness, params.contrast, params.saturation) != (1.0, 1.0, 1.0):
        x = x * params.brightness
        x = (x - x.mean()) * params.contrast + x.mean()
        grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
        x = grey[..., None] + (x - grey[..., None]) * params.saturation
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return x.astype(np.uint8)


def random_view(im: Image.Image, size: int, policy: str, rng: np.random.Generator,
                no_flip: bool) -> np.ndarray:
    """A fresh random view of a prepared image (see :func:`prepare`)."""
    return apply_params(im, sample_params(rng, *im.size, policy, no_flip), size)


# --- fixed views for the frozen path ---------------------------------------------------------


def view_recipe(view: int, policy: str, no_flip: bool) -> str:
    """What makes view number ``view`` (part of its bottleneck cache key)."""
    return f"view{view}:{policy}:{'noflip' if no_flip else 'flip'}:a{AUGMENT_VERSION}"


def fixed_view(path: Path, digest: str, view: int, size: int, resize: str, policy: str,
               no_flip: bool) -> np.ndarray:
    """View number ``view`` of an image: deterministic in (content digest, view, recipe).

    View 0 is the mirror image of the evaluation crop (unless ``no_flip``); the others are
    random views of ``policy`` drawn from a generator seeded by the digest and view number.
    """
    if view == 0 and not no_flip:
        return np.ascontiguousarray(load_image(path, size, resize)[:, ::-1])
    seed = int(hashlib.sha256(f"{digest}|{view_recipe(view, policy, no_flip)}".encode()).hexdigest()[:16], 16)
    rng = np.random.default_rng(seed)
    im = prepare(decode_image(path, draft_size=size), size)
    return apply_params(im, sample_params(rng, *im.size, policy, no_flip), size)


def view_features(
    items: list[tuple[Path, str]],
    views: int,
    policy: str,
    no_flip: bool,
    cache_for: Callable[[str], object],
    make_extractor: Callable[[], Callable[[np.ndarray], np.ndarray]],
    size: int,
    resize: str,
    workers: int = 0,
    batch_size: int = 32,
    progress: bool = True,
) -> tuple[dict[str, list[np.ndarray]], int, int]:
    """Features of ``views`` fixed views of every ``(path, digest)`` item, cached.

    ``cache_for(recipe)`` returns the BottleneckCache for one view recipe. Returns
    ``({digest: [features of each view]}, computed, cached)``; a view that cannot be made is
    left out (the image itself was checked before).
    """
    from tqdm.auto import tqdm

    from tfguess.data.pipeline import default_workers

    check_policy(policy)
    found: dict[tuple[str, int], np.ndarray] = {}
    todo: list[tuple[Path, str, int]] = []
    caches = {v: cache_for(view_recipe(v, policy, no_flip)) for v in range(views)}
    for v, cache in caches.items():
        for path, digest in items:
            hit = cache.get(digest)
            if isinstance(hit, np.ndarray):
                found[digest, v] = hit
            elif hit is None:
                todo.append((path, digest, v))
    cached = len(found)
    if todo:
        extractor = make_extractor()

        def make(job):
            path, digest, v = job
            try:
                return fixed_view(path, digest, v, size, resize, policy, no_flip)
            except (ImageError, OSError):
                return None

        bar = tqdm(total=len(todo), desc="augmented views", unit="img", disable=not progress,
                   dynamic_ncols=True)
        with ThreadPoolExecutor(workers or default_workers()) as pool:
            for start in range(0, len(todo), batch_size):
                jobs = todo[start:start + batch_size]
                pixels = list(pool.map(make, jobs))
                good = [(job, p) for job, p in zip(jobs, pixels) if p is not None]
                if good:
                    feats = extractor(np.stack([p for _, p in good]))
                    for ((_, digest, v), _), f in zip(good, feats):
                        caches[v].put(digest, f)
                        found[digest, v] = f
                bar.update(len(jobs))
        bar.close()
    out: dict[str, list[np.ndarray]] = {}
    for _, digest in items:
        out[digest] = [found[digest, v] for v in range(views) if (digest, v) in found]
    return out, len(todo), cached
