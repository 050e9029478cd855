import time
from pathlib import Path

import numpy as np
import pytest
from conftest import require_shared
from PIL import Image, ImageChops
from skimage import data as skdata

from tfguess.data import images
from tfguess.data.images import (
    ImageError,
    decode_image,
    load_image,
    placeholder_reason,
    sniff,
    squash_bilinear,
    squash_is_bilinear,
)


@pytest.fixture(scope="module")
def cat() -> np.ndarray:
    return skdata.chelsea()  # 300 x 451 RGB photo


def mad(a, b) -> float:
    """Mean absolute difference of two images, in 0..255 units."""
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean())


def reason_of(path, **kw) -> str:
    with pytest.raises(ImageError) as e:
        decode_image(path, **kw)
    assert e.value.path == Path(path)
    return e.value.reason


@pytest.mark.parametrize(
    "fmt,ext,bound",
    [("JPEG", ".jpg", 6), ("PNG", ".png", 0), ("BMP", ".bmp", 0), ("WEBP", ".webp", 8),
     ("TIFF", ".tif", 0)],
)  # fmt: skip
def test_common_formats_decode_to_rgb(tmp_path, cat, fmt, ext, bound):
    p = tmp_path / f"cat{ext}"
    Image.fromarray(cat).save(p, fmt)
    assert sniff(p) == fmt
    im = decode_image(p)
    assert im.mode == "RGB" and im.size == (451, 300)
    assert mad(im, cat) <= bound


def test_avif_when_pillow_supports_it(tmp_path, cat):
    if not images.AVIF_SUPPORTED:
        pytest.skip("this Pillow has no AVIF support")
    p = tmp_path / "cat.avif"
    Image.fromarray(cat).save(p, "AVIF", quality=90)
    assert sniff(p) == "AVIF"
    assert mad(decode_image(p), cat) < 8


def test_cmyk_jpeg(tmp_path, cat):
    p = tmp_path / "cmyk.jpg"
    Image.fromarray(cat).convert("CMYK").save(p, quality=95)
    assert Image.open(p).mode == "CMYK"
    im = decode_image(p)
    assert im.mode == "RGB"
    assert mad(im, cat) < 6


def test_rgba_png_composited_on_white(tmp_path, cat):
    rgba = np.dstack([cat, np.full(cat.shape[:2], 255, np.uint8)])
    rgba[:, :200, 3] = 0  # left part fully transparent
    p = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(p)
    a = np.asarray(decode_image(p))
    assert a.shape == (300, 451, 3) and a.dtype == np.uint8
    assert (a[:, :200] == 255).all()
    assert (a[:, 200:] == cat[:, 200:]).all()


def test_palette_png_and_transparent_palette(tmp_path, cat):
    pal = Image.fromarray(cat).convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    p = tmp_path / "pal.png"
    pal.save(p)
    assert Image.open(p).mode == "P"
    assert mad(decode_image(p), cat) < 6
    pal.info["transparency"] = pal.getpixel((0, 0))
    p2 = tmp_path / "pal_transparent.png"
    pal.save(p2, transparency=pal.getpixel((0, 0)))
    a = np.asarray(decode_image(p2))
    assert tuple(a[0, 0]) == (255, 255, 255)


def test_greyscale_and_16bit(tmp_path):
    grey = skdata.camera()
    p = tmp_path / "grey.jpg"
    Image.fromarray(grey).save(p, quality=95)
    a = np.asarray(decode_image(p))
    assert a.shape == (512, 512, 3)
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    assert mad(a[..., 0], grey) < 3

    p16 = tmp_path / "grey16.png"
    Image.fromarray(grey.astype(np.uint16) * 257).save(p16)  # full 16-bit range
    assert Image.open(p16).mode.startswith("I")
    a16 = np.asarray(decode_image(p16))
    assert a16.shape == (512, 512, 3) and a16.dtype == np.uint8
    assert (a16[..., 0] == grey).all()  # scaled down, not clipped to white


def test_gif_first_frame_and_gif_named_jpg(tmp_path, cat):
    frames = [Image.fromarray(cat), Image.fromarray(255 - cat)]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(p).n_frames == 2
    im = decode_image(p)
    assert im.mode == "RGB"
    assert mad(im, cat) < 10 < mad(im, 255 - cat)

    fake = tmp_path / "really_a_gif.jpg"
    fake.write_bytes(p.read_bytes())
    assert sniff(fake) == "GIF"
    assert mad(decode_image(fake), cat) < 10


def test_exif_orientation_applied(tmp_path, cat):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    p = tmp_path / "rotated.jpg"
    Image.fromarray(cat).save(p, exif=exif.tobytes(), quality=95)
    im = decode_image(p)
    assert im.size == (300, 451)  # width and height swapped
    assert mad(im, np.rot90(cat, k=-1)) < 6


def test_bad_files_have_specific_reasons(tmp_path, cat):
    zero = tmp_path / "zero.jpg"
    zero.write_bytes(b"")
    assert reason_of(zero) == "zero-byte file"

    text = tmp_path / "text.jpg"
    text.write_text("this is not a picture\n" * 20)
    assert reason_of(text) == "not an image (looks like text)"

    html = tmp_path / "page.jpg"
    html.write_text("<!DOCTYPE html><html><body>403 Forbidden</body></html>")
    assert "web page" in reason_of(html)

    binary = tmp_path / "noise.png"
    binary.write_bytes(bytes(range(256)) * 4)
    assert reason_of(binary) == "not an image (unrecognised content)"

    full = tmp_path / "full.jpg"
    Image.fromarray(cat).save(full, quality=95)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    assert reason_of(cut).startswith("truncated or corrupt JPEG")
    assert reason_of(cut, draft_size=32).startswith("truncated or corrupt JPEG")

    png = tmp_path / "full.png"
    Image.fromarray(cat).save(png)
    cut_png = tmp_path / "cut.png"
    cut_png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    assert "corrupt PNG" in reason_of(cut_png)

    header_only = tmp_path / "header_only.png"
    header_only.write_bytes(png.read_bytes()[:40])
    assert "corrupt PNG" in reason_of(header_only)

    assert reason_of(tmp_path / "missing.jpg").startswith("file not found")


def test_image_error_is_a_tfguess_error_with_path_and_reason(tmp_path):
    from tfguess.core.errors import TfguessError

    assert issubclass(ImageError, TfguessError) and ImageError.exit_code == 2
    e = ImageError(tmp_path / "a.jpg", "zero-byte file")
    assert e.path == tmp_path / "a.jpg" and e.reason == "zero-byte file"
    assert str(e).endswith("a.jpg: zero-byte file")


def test_split_modules_keep_their_names_importable_from_images():
    """The names other modules import from ``images`` that now live in formats, resize and
    placeholder are the same objects there."""
    from tfguess.data import formats, placeholder, resize

    moved = {formats: ["FORMAT_EXTENSIONS", "IMAGE_EXTENSIONS", "not_image_reason"],
             placeholder: ["placeholder_reason"],
             resize: ["CROP_FRACTION", "PAD_VALUE", "PREPROCESS_VERSION", "RESIZES",
                      "SQUASH_BILINEAR_MAX", "SUBPIXEL", "_bilinear_axis",
                      "crop_box", "pad_offsets", "pad_to_square", "squash", "squash_bilinear",
                      "squash_is_bilinear"]}
    for module, names in moved.items():
        for name in names:
            assert getattr(images, name) is getattr(module, name), name


def test_decompression_bomb_refused(tmp_path, monkeypatch):
    p = tmp_path / "big.png"
    Image.new("RGB", (2000, 1000), "white").save(p)  # 2 MP, a few KB on disk
    assert reason_of(p, max_pixels=1_000_000) == "decompression bomb: 2 MP > limit 1 MP"
    monkeypatch.setattr(images, "MAX_PIXELS", 1_500_000)
    assert reason_of(p).startswith("decompression bomb")
    assert decode_image(p, max_pixels=3_000_000).size == (2000, 1000)


def test_heic_reason_or_decode(tmp_path, cat):
    p = tmp_path / "photo.heic"
    if images.HEIF_SUPPORTED:
        Image.fromarray(cat).save(p, "HEIF")
        assert sniff(p) == "HEIF"
        assert mad(decode_image(p), cat) < 8
    else:  # an ftyp box with the heic brand, then junk
        p.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 100)
        assert sniff(p) == "HEIF"
        assert reason_of(p) == "unsupported format HEIC: pip install pillow-heif"


def test_sniff_none_for_non_images(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("hello")
    assert sniff(p) is None
    assert sniff(tmp_path / "missing") is None


def test_load_image_crop_matches_two_step_recipe(tmp_path, cat):
    photo = cat[:, :450]  # 450x300 -> 384x256, so the two-step centre crop is on whole pixels
    p = tmp_path / "cat.png"
    Image.fromarray(photo).save(p)
    a = load_image(p, 224)
    assert a.shape == (224, 224, 3) and a.dtype == np.uint8
    # Reference: shorter side to round(224 / 0.875) = 256, then a centre crop of 224.
    ref = Image.fromarray(photo).resize((384, 256), Image.Resampling.BICUBIC)
    ref = np.asarray(ref.crop((80, 16, 304, 240)))
    assert mad(a, ref) < 1.0
    sq = load_image(p, 100, resize="squash")
    assert sq.shape == (100, 100, 3)
    full = np.asarray(Image.fromarray(photo).resize((100, 100), Image.Resampling.BILINEAR))
    assert mad(sq, full) < 1.0
    with pytest.raises(ValueError):
        load_image(p, 224, resize="stretch")


def test_squash_is_opencv_bilinear_with_corners_aligned(tmp_path):
    """Output pixel x samples source position x * w / size (what MediaPipe's ImageClassifier
    does, bench/export_clients.py), not the pixel-centre (x + 0.5) * w / size - 0.5."""
    p = tmp_path / "two.png"
    Image.fromarray(np.array([[[0, 0, 0], [100, 100, 100]]], np.uint8)).save(p)
    a = load_image(p, 4, resize="squash")
    assert a[..., 0].tolist() == [[0, 50, 100, 100]] * 4  # the centre convention: 0, 25, 75, 100
    # 1/32-pixel positions and weights, rounded half up: 227 -> 224 keeps integers integral.
    ramp = np.repeat(np.arange(227, dtype=np.uint8)[None, :, None], 227, axis=0).repeat(3, axis=2)
    out = squash_bilinear(ramp, 224)[0, :, 0].astype(int)
    expected = [(x * 227 * 32 // 224 + (1 if (x * 227 * 32) % 224 * 2 >= 224 else 0) + 16) // 32
                for x in range(224)]
    assert out.tolist() == expected
    # Much larger images take the antialiased bilinear instead (every source pixel counts).
    assert squash_is_bilinear(448, 300, 224) and not squash_is_bilinear(449, 300, 224)
    stripes = np.zeros((300, 900, 3), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: bilinear taps would see only one colour
    q = tmp_path / "stripes.png"
    Image.fromarray(stripes).save(q)
    out = load_image(q, 224, resize="squash").astype(int)
    assert abs(out.mean() - 127.5) < 8 and out.std() < 40  # averaged to grey, no aliasing


def test_load_image_draft_close_to_full_decode(tmp_path):
    """A 4000x3000 JPEG: decoding at reduced scale gives nearly the pixels of a full decode."""
    big = Image.fromarray(skdata.coffee()).resize((4000, 3000), Image.Resampling.BICUBIC)
    noise = Image.effect_noise((4000, 3000), 12).convert("RGB")  # fine detail, centred on 128
    p = tmp_path / "big.jpg"
    ImageChops.add(big, noise, offset=-128).save(p, quality=90)

    drafted = decode_image(p, draft_size=224)
    assert round(224 / 0.875) <= min(drafted.size) < 3000  # decoded at reduced scale (here 1/8)
    t0 = time.perf_counter()
    fast = load_image(p, 224)
    t_fast = time.perf_counter() - t0
    full = decode_image(p)
    side = 3000 * 224 / round(224 / 0.875)  # the crop, in full-size pixels
    left, top = (4000 - side) / 2, (3000 - side) / 2
    ref = full.resize(
        (224, 224), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side)
    )
    # Bound: 1.5 grey levels on average (of 255); measured about 0.5.
    assert mad(fast, ref) < 1.5
    print(f"draft load_image of a 4000x3000 JPEG: {t_fast * 1000:.0f} ms")


def test_placeholder_reason_synthetic_and_photos(cat):
    assert placeholder_reason(Image.fromarray(cat)) is None
    assert placeholder_reason(Image.fromarray(skdata.camera()).convert("RGB")) is None
    blank = Image.new("RGB", (300, 300), (240, 240, 240))
    assert placeholder_reason(blank) == "blank image (a single colour)"
    sign = blank.copy()
    sign.paste((200, 30, 30), (50, 120, 250, 180))
    sign.paste((20, 20, 20), (60, 130, 240, 170))
    assert placeholder_reason(sign).startswith("looks like a placeholder, not a photo (3 colours")
    # A tiny crop (the demo set's 25x25 patches) is not a placeholder, however flat.
    assert placeholder_reason(sign.resize((25, 25), Image.Resampling.NEAREST)) is None
    # A photo reduced to a small dithered palette has few colours but no flat background.
    assert placeholder_reason(Image.fromarray(cat).convert("P").convert("RGB")) is None


def test_load_image_can_reject_placeholders(tmp_path, cat):
    p = tmp_path / "missing.gif"
    sign = Image.new("RGB", (300, 300), (240, 240, 240))
    sign.paste((200, 30, 30), (50, 120, 250, 180))
    sign.save(p)
    assert load_image(p, 64).shape == (64, 64, 3)
    with pytest.raises(ImageError, match="placeholder"):
        load_image(p, 64, reject_placeholders=True)
    ok = tmp_path / "cat.jpg"
    Image.fromarray(cat).save(ok)
    assert load_image(ok, 64, reject_placeholders=True).shape == (64, 64, 3)


@pytest.mark.shared
def test_placeholder_only_flags_image_not_found_gif():
    root = require_shared()
    files = sorted(p for p in root.rglob("*") if p.is_file())
    assert len(files) == 398
    flagged = [p.name for p in files if placeholder_reason(decode_image(p, draft_size=128))]
    assert flagged == ["imageNotFound.gif"]
    reason = placeholder_reason(decode_image(root / "train" / "ants" / "imageNotFound.gif"))
    assert reason.startswith("looks like a placeholder, not a photo (33 colours")


# --- the decode + squash path keeps its pixels ---------------------------------------------------

def _plain_squash_bilinear(pixels: np.ndarray, size: int) -> np.ndarray:
    """The squash's formula as written before it was optimised (int32 over the whole image)."""
    h, w = pixels.shape[:2]
    x0, x1, fx = images._bilinear_axis(w, size)
    y0, y1, fy = images._bilinear_axis(h, size)
    a = pixels.astype(np.int32)
    s = images.SUBPIXEL
    fx, fy = fx[None, :, None], fy[:, None, None]
    top = a[y0][:, x0] * (s - fx) + a[y0][:, x1] * fx
    bottom = a[y1][:, x0] * (s - fx) + a[y1][:, x1] * fx
    return ((top * (s - fy) + bottom * fy + s * s // 2) // (s * s)).astype(np.uint8)


def test_squash_bilinear_equals_its_plain_formula(cat):
    rng = np.random.default_rng(0)
    cases = [cat, cat[:, :300], cat[:1, :1], cat[:2, :300], np.full((448, 447, 3), 255, np.uint8),
             rng.integers(0, 256, (375, 375, 3), dtype=np.uint8)]
    for pixels in cases:
        for size in (96, 224, 288):
            np.testing.assert_array_equal(squash_bilinear(pixels, size),
                                          _plain_squash_bilinear(pixels, size))


# sha256 (first 16 hex digits) of the concatenated load_image(path, size, "squash") arrays, and of
# squash_bilinear on each image's top-left square: a change of these pixels must come with a new
# images.PREPROCESS_VERSION (the bottleneck caches are keyed by it), and new digests here.
# Version 4 changed the first hymenoptera digests alone: its photos over twice the input size
# take the antialiased bilinear instead of the bicubic (version 3: d617a3ca09993fe4 at 224,
# ee06892a527c8ede at 288); test_data's 20 photos and the bilinear squares are unchanged.
SQUASH_DIGESTS = {
    ("test_data", 224): ("73b130b5631aa601", "73b130b5631aa601"),
    ("test_data", 288): ("72eb4aac59dba38b", "72eb4aac59dba38b"),
    ("hymenoptera", 224): ("792015fb0ad8ca1b", "fc6320dc6ab34788"),
    ("hymenoptera", 288): ("df0361f07922cb80", "fa0ee6898bdd68e9"),
}


def _squash_digests(files: list[Path], size: int) -> tuple[str, str]:
    import hashlib

    loaded, squares = hashlib.sha256(), hashlib.sha256()
    for f in files:
        loaded.update(load_image(f, size, "squash").tobytes())
        pixels = np.asarray(decode_image(f, draft_size=size))
        side = min(pixels.shape[:2])
        squares.update(squash_bilinear(pixels[:side, :side], size).tobytes())
    return loaded.hexdigest()[:16], squares.hexdigest()[:16]


@pytest.mark.parametrize("size", [224, 288])
def test_load_image_pixels_are_unchanged_on_real_photos(size):
    files = sorted((Path(__file__).resolve().parents[2] / "test_data").glob("*.jpg"))
    assert len(files) == 20
    assert _squash_digests(files, size) == SQUASH_DIGESTS["test_data", size]


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.parametrize("size", [224, 288])
def test_load_image_pixels_are_unchanged_on_web_sized_photos(size):
    files = sorted((require_shared() / "val").rglob("*.jpg"))[::3]  # 51 photos, most 500x375
    assert len(files) == 51
    assert _squash_digests(files, size) == SQUASH_DIGESTS["hymenoptera", size]
