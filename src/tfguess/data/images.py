"""Image decoding by content (not by extension) into 8-bit RGB.

Every reader of user images goes through :func:`decode_image` (or :func:`load_image` for the
fixed-size arrays a backbone wants), so all of them accept the same formats and refuse the same
bad files with the same short reasons (:class:`ImageError`).
"""

from __future__ import annotations

import io
import math
import os
import re
import stat
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tfguess.core.fsutil import display_path

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
# feature cache is keyed by it. 4: squash reductions beyond SQUASH_BILINEAR_MAX take Pillow's
# antialiased bilinear (a triangle filter as wide as the reduction) instead of its bicubic: 1.1 ms
# instead of 1.8 ms for a 500x375 photo (README, "Speed"), the val accuracy checked on every dev set.
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

# A file whose first bytes announce no known image format is read whole (Pillow knows a few more
# formats) only up to this size; a bigger one (a video, a disk image) is refused from its head.
MAX_UNKNOWN_BYTES = 64 << 20
# No image tfguess can use is bigger than this (an 89 MP uncompressed TIFF is about 360 MB).
MAX_FILE_BYTES = 1 << 30

_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs"}
_AVIF_BRANDS = {b"avif", b"avis"}


class ImageError(Exception):
    """A file that cannot be used as an image; ``reason`` is short and human."""

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
    """The image format the first bytes of ``path`` announce, or None when they announce none
    (or when it is not a regular file: FIFOs and devices are never opened for a blocking read)."""
    try:
        return _sniff_bytes(read_head(path))
    except ImageError:
        return None


# The extension a copy gets when its source has none, by sniffed format.
FORMAT_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "WEBP": ".webp",
                     "TIFF": ".tif", "HEIF": ".heic", "AVIF": ".avif"}


def not_image_reason(head: bytes) -> str:
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "not an image (looks like a web page saved instead of the image)"
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "not an image (SVG vector drawing: convert it to PNG)"
    if head.startswith(b"%PDF"):
        return "not an image (looks like a PDF document)"
    if head.startswith(b"PK\x03\x04"):
        return "not an image (looks like a ZIP archive)"
    if head[4:8] == b"ftyp" or head[:4] == b"\x1aE\xdf\xa3" or head[8:12] == b"AVI ":
        return "not an image (looks like a video)"
    try:
        head.decode("utf-8")
        is_text = all(c >= 32 or c in b"\t\r\n\f" for c in head)
    except UnicodeDecodeError:
        is_text = False
    if is_text:
        return "not an image (looks like text)"
    return "not an image (unrecognised content)"


def read_image_bytes(path: str | os.PathLike[str]) -> bytes:
    """The content of an image file, read whole only once its first bytes say image (or it is
    small): a FIFO, a device or a big non-image is refused without reading it."""
    p = Path(path)
    fd, size = open_regular(p)
    try:
        head = _read_fd(fd, 64)
        if not head:
            raise ImageError(p, "zero-byte file")
        known = _sniff_bytes(head) is not None
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


def _png_checksum_error(data: bytes) -> str | None:
    """The name of the first PNG chunk whose CRC does not match, if any."""
    pos = 8
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        end = pos + 8 + length
        if end + 4 > len(data):
            return None
        if zlib.crc32(data[pos + 4:end]) != int.from_bytes(data[end:end + 4], "big"):
            return kind.decode("latin-1")
        if kind == b"IEND":
            return None
        pos = end + 4
    return None


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
        if fmt == "PNG" and (chunk := _png_checksum_error(data)):
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
        return _reduce(im, size)
    out = im.resize((size, size), Image.Resampling.BICUBIC, box=crop_box(w, h, size),
                    reducing_gap=3.0)
    return np.array(out, dtype=np.uint8)


# --- how an image is made square (--resize) ---------------------------------------------------
#
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
# --resize auto: "crop" when at least this share of the photos is portrait (w/h < 0.8) and at
# least this share landscape (w/h > 1.25), else "squash" (bench/accuracy_table.py --suite, README).
AUTO_MIXED_SHARE = 0.25
PORTRAIT_MAX, LANDSCAPE_MIN = 0.8, 1.25


def auto_resize(sizes: list[tuple[int, int]]) -> tuple[str, dict]:
    """``--resize auto``: ``(resize, facts)`` for photos of these ``(width, height)`` sizes.

    Squashing distorts every photo of one orientation the same way, which the head learns; when
    both orientations are common, the same object arrives stretched one way or the other, and
    the centre crop, which keeps the geometry, was the more accurate (README, "Export").
    """
    n = max(1, len(sizes))
    portrait = sum(w / h < PORTRAIT_MAX for w, h in sizes) / n
    landscape = sum(w / h > LANDSCAPE_MIN for w, h in sizes) / n
    mixed = min(portrait, landscape) >= AUTO_MIXED_SHARE
    return ("crop" if mixed else "squash"), {
        "portrait": round(portrait, 3), "landscape": round(landscape, 3), "images": len(sizes),
        "rule": f"crop when at least {AUTO_MIXED_SHARE:.0%} of the photos are portrait "
                f"(w/h < {PORTRAIT_MAX}) and at least {AUTO_MIXED_SHARE:.0%} landscape "
                f"(w/h > {LANDSCAPE_MIN}), else squash"}


def auto_resize_of(paths) -> tuple[str, dict]:
    """:func:`auto_resize` of the photos at ``paths``, from their headers (files that are not
    images are left out)."""
    sizes = []
    for path in paths:
        try:
            sizes.append(oriented_size(path))
        except (ImageError, OSError):
            continue
    return auto_resize(sizes)


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
    return _reduce(Image.fromarray(np.ascontiguousarray(pixels), "RGB"), size)


def _reduce(im: Image.Image, size: int) -> np.ndarray:
    """"squash" beyond a :data:`SQUASH_BILINEAR_MAX` reduction: Pillow's antialiased bilinear
    (the exports reproduce it: ``export._resize_like_pil``)."""
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
