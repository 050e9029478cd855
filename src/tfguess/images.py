"""Image decoding by content (not by extension) into 8-bit RGB.

Every reader of user images goes through :func:`decode_image` (or :func:`load_image` for the
fixed-size arrays a backbone wants), so all of them accept the same formats and refuse the same
bad files with the same short reasons (:class:`ImageError`).
"""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

try:  # optional (the fast-jpeg extra): libjpeg-turbo's DCT scaling with less overhead
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - Pillow's draft mode gives the same pixels
    _simplejpeg = None

try:  # HEIC/HEIF through the optional pillow-heif package.
    from pillow_heif import register_heif_opener

    register_heif_opener()
    HEIF_SUPPORTED = True
except ImportError:  # pragma: no cover - depends on the environment
    HEIF_SUPPORTED = False

try:
    from PIL import features

    AVIF_SUPPORTED = bool(features.check("avif"))
except Exception:  # pragma: no cover
    AVIF_SUPPORTED = False

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".webp",
        ".tif", ".tiff", ".heic", ".heif", ".avif",
    }
)  # fmt: skip

# Images with more pixels than this are refused (PIL's own warning threshold, about 89 MP).
MAX_PIXELS: int = int(Image.MAX_IMAGE_PIXELS or 89_478_485)

# With draft_size=n, a big JPEG is decoded at 1/2, 1/4 or 1/8 scale, keeping at least
# DRAFT_MARGIN * n pixels on the shorter side: enough for the centre crop (n / 0.875) at full detail.
DRAFT_MARGIN = 1.15

# The EfficientNet evaluation recipe: resize the shorter side to size / CROP_FRACTION, centre crop.
CROP_FRACTION = 0.875
# Bump when decoding or resizing changes in a way that changes the pixels fed to a backbone: the
# feature cache is keyed by it.
PREPROCESS_VERSION = 2

_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs"}
_AVIF_BRANDS = {b"avif", b"avis"}


class ImageError(Exception):
    """A file that cannot be used as an image; ``reason`` is short and human."""

    def __init__(self, path: str | os.PathLike[str], reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def _sniff_bytes(head: bytes) -> str | None:
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head.startswith(b"BM") and len(head) >= 18:
        return "BMP"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[4:8] == b"ftyp":
        box_len = int.from_bytes(head[:4], "big")
        brands = {head[8:12]}
        brands.update(head[i : i + 4] for i in range(16, min(box_len, len(head)) - 3, 4))
        if brands & _AVIF_BRANDS:
            return "AVIF"
        if brands & _HEIF_BRANDS or b"mif1" in brands or b"msf1" in brands:
            return "HEIF"
    return None


def sniff(path: str | os.PathLike[str]) -> str | None:
    """The image format the first bytes of ``path`` announce, or None when they announce none."""
    try:
        with open(path, "rb") as f:
            return _sniff_bytes(f.read(64))
    except OSError:
        return None


def _not_image_reason(head: bytes) -> str:
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "not an image (looks like a web page saved instead of the image)"
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "not an image (SVG vector drawing: convert it to PNG)"
    if head.startswith(b"%PDF"):
        return "not an image (looks like a PDF document)"
    if head.startswith(b"PK\x03\x04"):
        return "not an image (looks like a ZIP archive)"
    try:
        head.decode("utf-8")
        is_text = all(c >= 32 or c in b"\t\r\n\f" for c in head)
    except UnicodeDecodeError:
        is_text = False
    if is_text:
        return "not an image (looks like text)"
    return "not an image (unrecognised content)"


def _read(path: Path, data: bytes | None) -> bytes:
    if data is not None:
        return data
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageError(path, "file not found (or a broken link)") from None
    except IsADirectoryError:
        raise ImageError(path, "is a folder, not a file") from None
    except OSError as e:
        raise ImageError(path, f"cannot read: {e.strerror or e}") from None


def _open(path: Path, data: bytes, max_pixels: int | None) -> Image.Image:
    """Open (header only) and refuse zero-byte files, non-images and decompression bombs."""
    if not data:
        raise ImageError(path, "zero-byte file")
    head = data[:64]
    fmt = _sniff_bytes(head)
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ImageError(path, f"decompression bomb: more than {limit / 1e6:.0f} MP") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if fmt == "HEIF" and not HEIF_SUPPORTED:
            raise ImageError(path, "unsupported format HEIC: pip install pillow-heif") from None
        if fmt == "AVIF" and not AVIF_SUPPORTED:
            raise ImageError(
                path, "unsupported format AVIF: pip install pillow-avif-plugin"
            ) from None
        if fmt is not None:
            raise ImageError(path, f"corrupt {fmt}: {_short(e)}") from None
        raise ImageError(path, _not_image_reason(head)) from None
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ImageError(path, f"corrupt {im.format}: empty size {w}x{h}")
    if w * h > limit:
        raise ImageError(
            path, f"decompression bomb: {w * h / 1e6:.0f} MP > limit {limit / 1e6:.0f} MP"
        )
    return im


def _short(e: BaseException) -> str:
    msg = str(e).strip() or type(e).__name__
    return msg if len(msg) <= 120 else msg[:117] + "..."


def check_header(
    path: str | os.PathLike[str], *, data: bytes | None = None, max_pixels: int | None = None
) -> tuple[str, tuple[int, int]]:
    """Cheap check (header only): ``(format, (width, height))`` or ImageError.

    Does not catch truncated files; :func:`decode_image` does.
    """
    p = Path(path)
    im = _open(p, _read(p, data), max_pixels)
    return str(im.format), im.size


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(im)
        if mode == "F":
            a = a * 255.0 if a.size and float(np.nanmax(a)) <= 1.0 else a
        elif mode.startswith("I;16") or (a.size and int(a.max()) > 255):
            a = a.astype(np.int64) >> 8
        grey = np.clip(np.nan_to_num(a), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "CMYK":
        icc = im.info.get("icc_profile")
        if icc:
            try:
                from PIL import ImageCms

                src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                return ImageCms.profileToProfile(
                    im, src, ImageCms.createProfile("sRGB"), outputMode="RGB"
                )
            except Exception:
                pass
        return im.convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}


def _decode_scaled_jpeg(data: bytes, im: Image.Image, size: tuple[int, int]) -> Image.Image | None:
    """A big JPEG decoded by simplejpeg at the DCT scale Pillow's draft mode would pick (same
    libjpeg-turbo, same pixels: bench/jpeg_check.py), EXIF orientation applied; about 10% less
    CPU on phone photos. None when simplejpeg is not installed or declines (CMYK, a truncated or
    odd file): Pillow then decodes it and reports any problem as usual."""
    if _simplejpeg is None or im.mode not in ("RGB", "L"):
        return None
    try:
        pixels = _simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=size[0],
                                         min_height=size[1])
    except (ValueError, RuntimeError):
        return None
    out = Image.fromarray(pixels, "RGB")
    try:
        method = _EXIF_TRANSPOSE.get(im.getexif().get(0x0112))
    except Exception:  # noqa: BLE001 - unreadable EXIF: Pillow's own path decides
        return None
    return out.transpose(method) if method is not None else out


def decode_image(
    path: str | os.PathLike[str],
    *,
    draft_size: int | None = None,
    max_pixels: int | None = None,
    data: bytes | None = None,
) -> Image.Image:
    """Decode ``path`` (or ``data``, its bytes already read) into an 8-bit RGB image.

    The format comes from the content, not the extension. EXIF orientation is applied, the
    first frame of animations is used, palette/grey/16-bit/CMYK images are converted and alpha
    is composited on white. The whole image is decoded here, so truncated files fail here.
    ``draft_size``: the caller needs at least this many pixels on the shorter side; a JPEG
    much larger than that is decoded at 1/2, 1/4 or 1/8 scale (much faster).
    ``max_pixels``: refuse images larger than this (default :data:`MAX_PIXELS`).
    Raises :class:`ImageError` with a short reason.
    """
    p = Path(path)
    data = _read(p, data)
    im = _open(p, data, max_pixels)
    fmt = im.format or "image"
    try:
        if draft_size and fmt == "JPEG":
            w, h = im.size
            need = draft_size * DRAFT_MARGIN
            if min(w, h) >= 2 * need:
                scale = need / min(w, h)
                target = (math.ceil(w * scale), math.ceil(h * scale))
                fast = _decode_scaled_jpeg(data, im, target)
                if fast is not None:
                    return fast
                im.draft("RGB", target)
        im.load()
        ImageOps.exif_transpose(im, in_place=True)
        return _to_rgb(im)
    except ImageError:
        raise
    except Exception as e:
        raise ImageError(p, f"truncated or corrupt {fmt}: {_short(e)}") from None


def load_image(
    path: str | os.PathLike[str],
    size: int,
    resize: str = "crop",
    *,
    data: bytes | None = None,
    reject_placeholders: bool = False,
) -> np.ndarray:
    """A ``uint8 [size, size, 3]`` array of the image at ``path``.

    ``resize="crop"``: the EfficientNet evaluation recipe (shorter side to
    ``round(size / 0.875)``, centre crop ``size x size``, bicubic), done as one resize of the
    central box. ``resize="squash"``: the whole image resized to ``size x size``.
    ``reject_placeholders``: raise :class:`ImageError` for images :func:`placeholder_reason`
    flags (costs about 0.1 ms an image).
    """
    if resize not in ("crop", "squash"):
        raise ValueError(f"resize must be 'crop' or 'squash', not {resize!r}")
    im = decode_image(path, draft_size=size, data=data)
    if reject_placeholders and (reason := placeholder_reason(im)):
        raise ImageError(path, reason)
    w, h = im.size
    box: tuple[float, float, float, float] = (0.0, 0.0, float(w), float(h))
    if resize == "crop":
        scale = round(size / CROP_FRACTION) / min(w, h)  # resized pixels per source pixel
        side = size / scale  # crop side in source pixels
        left, top = (w - side) / 2, (h - side) / 2
        box = (max(left, 0.0), max(top, 0.0), min(left + side, w), min(top + side, h))
    out = im.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)
    return np.array(out, dtype=np.uint8)


# Photos have thousands of distinct colours (even greyscale ones have ~256); icons, "image not
# found" placeholders and blank images have a handful.
PLACEHOLDER_MAX_COLOURS = 64
PLACEHOLDER_MIN_BACKGROUND = 0.5
PLACEHOLDER_MIN_PIXELS = 96 * 96


def placeholder_reason(img: Image.Image) -> str | None:
    """A reason when ``img`` looks like a synthetic placeholder, else None.

    Placeholders ("image not found" pictures, blank images) have very few colours and one of them
    covers most of the picture.
    """
    small = img
    w, h = img.size
    step = max(1, int(math.sqrt(w * h / 250_000)))
    if step > 1:  # nearest-neighbour subsampling keeps the colours a placeholder has
        small = img.resize((max(1, w // step), max(1, h // step)), Image.Resampling.NEAREST)
    colours = small.convert("RGB").getcolors(maxcolors=PLACEHOLDER_MAX_COLOURS)
    if colours is None:
        return None
    n = len(colours)
    if n == 1:
        return "blank image (a single colour)"
    if w * h < PLACEHOLDER_MIN_PIXELS:  # tiny crops and thumbnails naturally have few colours
        return None
    # A placeholder is mostly flat background; a photo reduced to a small palette is not.
    dominant = max(count for count, _ in colours) / (small.width * small.height)
    if dominant < PLACEHOLDER_MIN_BACKGROUND:
        return None
    return f"looks like a placeholder, not a photo ({n} colours, {dominant:.0%} one colour)"
