"""Image decoding by content (not by extension) into 8-bit RGB.

Every reader of user images goes through :func:`decode_image` (or :func:`load_image` for the
fixed-size arrays a backbone wants), so all of them accept the same formats and refuse the same
bad files with the same short reasons (:class:`ImageError`).

What a file's first bytes say is :mod:`tfguess.data.formats`; how a decoded image is made
square, :mod:`tfguess.data.resize`; what counts as a placeholder, :mod:`tfguess.data.placeholder`.
Their names are importable from here too.
"""

from __future__ import annotations

import io
import math
import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tfguess.core.errors import TfguessError
from tfguess.core.fsutil import display_path
from tfguess.data.formats import (  # noqa: F401 - re-exported: importable from images
    FORMAT_EXTENSIONS,
    IMAGE_EXTENSIONS,
    not_image_reason,
    png_checksum_error,
    sniff_bytes,
)
from tfguess.data.placeholder import placeholder_reason
from tfguess.data.resize import (  # noqa: F401 - re-exported: importable from images
    CROP_FRACTION,
    PAD_VALUE,
    PREPROCESS_VERSION,
    RESIZES,
    SQUASH_BILINEAR_MAX,
    SUBPIXEL,
    _bilinear_axis,
    crop_box,
    pad_offsets,
    pad_to_square,
    squash,
    squash_bilinear,
    squash_is_bilinear,
    squash_reduced,
)

try:  # a dependency (wheels everywhere), still optional here: the same libjpeg-turbo with less
    import simplejpeg as _simplejpeg  # overhead than Pillow's (bench/jpeg_check.py)
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

# Images with more pixels than this are refused (PIL's own warning threshold, about 89 MP).
MAX_PIXELS: int = int(Image.MAX_IMAGE_PIXELS or 89_478_485)

# With draft_size=n, a big JPEG is decoded at 1/2, 1/4 or 1/8 scale, keeping at least
# DRAFT_MARGIN * n pixels on the shorter side: enough for the centre crop (n / 0.875) at full detail.
DRAFT_MARGIN = 1.15

# A file whose first bytes announce no known image format is read whole (Pillow knows a few more
# formats) only up to this size; a bigger one (a video, a disk image) is refused from its head.
MAX_UNKNOWN_BYTES = 64 << 20
# No image tfguess can use is bigger than this (an 89 MP uncompressed TIFF is about 360 MB).
MAX_FILE_BYTES = 1 << 30


class ImageError(TfguessError):
    """A file that cannot be used as an image; ``reason`` is short and human. Raised per file:
    every caller catches it to skip that file with its ``reason``."""

    def __init__(self, path: str | os.PathLike[str], reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{display_path(self.path)}: {reason}")


class ImageWarning(UserWarning):
    """A file used with a compromise (e.g. its EXIF orientation could not be read)."""


def file_kind(mode: int) -> str | None:
    """None for a regular file, else what it is ("a named pipe (FIFO)", "a device", ...)."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def open_regular(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(fd, size)`` of ``path`` opened for reading, or ImageError when it is not a regular file.

    The type is checked before opening (a FIFO would block, a device never ends) and again on the
    open descriptor (opened non-blocking, so a FIFO swapped in meanwhile cannot hang the run).
    """
    p = Path(path)
    try:
        st = os.stat(p)
        kind = file_kind(st.st_mode)
        if kind is None:
            fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            st = os.fstat(fd)
            kind = file_kind(st.st_mode)
            if kind is None:
                return fd, st.st_size
            os.close(fd)
    except FileNotFoundError:
        raise ImageError(p, "file not found (or a broken link)") from None
    except OSError as e:
        raise ImageError(p, f"cannot read: {e.strerror or e}") from None
    if kind == "a folder":
        raise ImageError(p, "is a folder, not a file")
    raise ImageError(p, f"{kind}, not a regular file: skipped")


def _read_fd(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_head(path: str | os.PathLike[str], n: int = 64) -> bytes:
    """The first ``n`` bytes of a regular file (ImageError for anything else)."""
    fd, _ = open_regular(path)
    try:
        return _read_fd(fd, n)
    except OSError as e:
        raise ImageError(path, f"cannot read: {e.strerror or e}") from None
    finally:
        os.close(fd)


def sniff(path: str | os.PathLike[str]) -> str | None:
    """The image format the first bytes of ``path`` announce, or None when they announce none
    (or when it is not a regular file: FIFOs and devices are never opened for a blocking read)."""
    try:
        return sniff_bytes(read_head(path))
    except ImageError:
        return None


def read_image_bytes(path: str | os.PathLike[str]) -> bytes:
    """The content of an image file, read whole only once its first bytes say image (or it is
    small): a FIFO, a device or a big non-image is refused without reading it."""
    p = Path(path)
    fd, size = open_regular(p)
    try:
        head = _read_fd(fd, 64)
        if not head:
            raise ImageError(p, "zero-byte file")
        known = sniff_bytes(head) is not None
        if not known and size > MAX_UNKNOWN_BYTES:
            raise ImageError(p, not_image_reason(head))
        if size > MAX_FILE_BYTES:
            raise ImageError(p, f"too large for an image ({size / 2**30:.1f} GB)")
        return head + _read_fd(fd, (MAX_FILE_BYTES if known else MAX_UNKNOWN_BYTES) + 1 - len(head))
    except OSError as e:
        raise ImageError(p, f"cannot read: {e.strerror or e}") from None
    finally:
        os.close(fd)


def _read(path: Path, data: bytes | None) -> bytes:
    return data if data is not None else read_image_bytes(path)


def _open(path: Path, data: bytes, max_pixels: int | None) -> Image.Image:
    """Open (header only) and refuse zero-byte files, non-images and decompression bombs."""
    if not data:
        raise ImageError(path, "zero-byte file")
    head = data[:64]
    fmt = sniff_bytes(head)
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
        if fmt == "PNG" and (chunk := png_checksum_error(data)):
            raise ImageError(path, f"corrupt PNG: checksum (CRC) error in its {chunk} chunk: "
                                   "the file is damaged") from None
        if fmt is not None:
            raise ImageError(path, f"corrupt {fmt}: {_short(e)}") from None
        raise ImageError(path, not_image_reason(head)) from None
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
    msg = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", " (the data)", msg)
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
    """A JPEG decoded by simplejpeg at full size, or for a big one at the DCT scale Pillow's draft
    mode would pick (same libjpeg-turbo, same pixels: bench/jpeg_check.py), EXIF orientation
    applied; 7-12 % less CPU than Pillow. None when simplejpeg is not installed or declines
    (CMYK, a truncated or odd file): Pillow then decodes it and reports any problem as usual."""
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
        if fmt == "JPEG":
            w, h = target = im.size
            if draft_size and min(w, h) >= 2 * draft_size * DRAFT_MARGIN:
                scale = draft_size * DRAFT_MARGIN / min(w, h)
                target = (math.ceil(w * scale), math.ceil(h * scale))
            fast = _decode_scaled_jpeg(data, im, target)
            if fast is not None:
                return fast
            if target != im.size:
                im.draft("RGB", target)
        im.load()
    except Exception as e:
        raise ImageError(p, f"truncated or corrupt {fmt}: {_short(e)}") from None
    try:
        ImageOps.exif_transpose(im, in_place=True)
    except Exception as e:  # a broken EXIF block: the pixels are fine
        warnings.warn(ImageWarning(f"{display_path(p)}: EXIF orientation unreadable ({_short(e)}): "
                                   "used without rotation"), stacklevel=2)
    try:
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

    ``resize`` (one of :data:`RESIZES`): ``"crop"``: the EfficientNet evaluation recipe (shorter
    side to ``round(size / 0.875)``, centre crop ``size x size``, bicubic), done as one resize of
    the central box (:func:`crop_box`). ``"squash"``: the whole image resized to ``size x size``
    (:func:`squash`: bilinear; antialiased for a big reduction). ``"pad"``: the image centred on
    a square of :data:`PAD_VALUE` (:func:`pad_to_square`), then squashed.
    ``reject_placeholders``: raise :class:`ImageError` for images :func:`placeholder_reason`
    flags (costs about 0.1 ms an image).
    """
    if resize not in RESIZES:
        raise ValueError(f"unknown resize {resize!r}: choose one of {', '.join(RESIZES)}")
    im = decode_image(path, draft_size=size, data=data)
    if reject_placeholders and (reason := placeholder_reason(im)):
        raise ImageError(path, reason)
    w, h = im.size
    if resize == "pad":
        return squash(pad_to_square(np.asarray(im)), size)
    if resize == "squash":
        if squash_is_bilinear(w, h, size):
            return squash_bilinear(np.asarray(im), size)
        return squash_reduced(im, size)
    out = im.resize((size, size), Image.Resampling.BICUBIC, box=crop_box(w, h, size),
                    reducing_gap=3.0)
    return np.array(out, dtype=np.uint8)


def oriented_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` of an image as shown, EXIF orientation applied, from its header
    (ImageError for a file that is not one)."""
    p = Path(path)
    im = _open(p, read_image_bytes(p), None)
    w, h = im.size
    try:
        turned = im.getexif().get(0x0112) in (5, 6, 7, 8)
    except Exception:  # noqa: BLE001 - a broken EXIF block: the stored size
        turned = False
    return (h, w) if turned else (w, h)
