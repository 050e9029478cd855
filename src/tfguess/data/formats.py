"""What a file's first bytes say it is: the image formats tfguess reads, the extensions it takes
for images, and the reason a file that is no image is refused. Pure byte inspection: reading the
files is :mod:`tfguess.data.images`.
"""

from __future__ import annotations

import zlib

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".webp",
        ".tif", ".tiff", ".heic", ".heif", ".avif",
    }
)  # fmt: skip

_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs"}
_AVIF_BRANDS = {b"avif", b"avis"}


def sniff_bytes(head: bytes) -> str | None:
    """The image format ``head`` (a file's first 64 bytes) announces, or None."""
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


# The extension a copy gets when its source has none, by sniffed format.
FORMAT_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "WEBP": ".webp",
                     "TIFF": ".tif", "HEIF": ".heic", "AVIF": ".avif"}


def not_image_reason(head: bytes) -> str:
    """Why a file whose first bytes are ``head`` is not an image, as short as the other reasons."""
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


def png_checksum_error(data: bytes) -> str | None:
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
