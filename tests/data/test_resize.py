"""``--resize squash|crop|pad|auto``: the geometry (fast), and that a crop or pad model is run with
its own resize by ``guess``, ``serve`` and every export (slow: trains two tiny models)."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import DEMO_DATA
from PIL import Image
from skimage import data as skdata

from tfguess.data import images
from tfguess.data.images import PAD_VALUE, crop_box, load_image, pad_offsets, pad_to_square, squash

# --- odd shapes, cut from real photos ------------------------------------------------------------

# (name, source photo, (left, top, right, bottom) of the crop, resized to, format)
ODD_SHAPES = [
    ("wide_3to1.png", "coffee", (0, 100, 600, 300), None, "PNG"),          # 600x200
    ("tall_1to3.png", "astronaut", (180, 0, 350, 510), None, "PNG"),       # 170x510 (> 2x: bicubic)
    ("screen_16to9.png", "chelsea", (0, 40, 448, 292), None, "PNG"),       # 448x252
    ("portrait_9to16.jpg", "astronaut", (100, 0, 388, 512), None, "JPEG"),  # 288x512
    ("tiny_20x90.png", "coffee", (200, 50, 290, 70), (90, 20), "PNG"),     # 90x20, upscaled
    ("tiny_20x90_tall.png", "chelsea", (150, 0, 170, 90), None, "PNG"),    # 20x90
    ("odd_301x215.png", "rocket", (0, 0, 301, 215), None, "PNG"),          # odd margins
    ("square_224.png", "chelsea", (100, 0, 400, 300), (224, 224), "PNG"),  # square: all agree
    ("phone_4to3.jpg", "coffee", (0, 0, 600, 400), (1600, 1200), "JPEG"),  # draft-decoded JPEG
    ("pano_1000x450.png", "astronaut", (0, 150, 512, 380), (1000, 450), "PNG"),  # bicubic squash
]


def make_odd_images(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, photo, box, resized, fmt in ODD_SHAPES:
        im = Image.fromarray(getattr(skdata, photo)()).convert("RGB").crop(box)
        if resized:
            im = im.resize(resized, Image.Resampling.BICUBIC)
        path = folder / name
        im.save(path, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory) -> list[Path]:
    return make_odd_images(tmp_path_factory.mktemp("odd"))


# --- fast: geometry, no TensorFlow ---------------------------------------------------------------


@pytest.mark.parametrize("w,h", [(600, 200), (200, 600), (301, 215), (215, 301), (90, 20), (5, 5)])
def test_pad_offsets_centre_the_image(w, h):
    left, top, side = pad_offsets(w, h)
    assert side == max(w, h)
    assert 0 <= left and left + w <= side and 0 <= top and top + h <= side
    # centred: the margins differ by at most one pixel, the extra one right / below
    assert (side - w - left) - left in (0, 1) and (side - h - top) - top in (0, 1)


def test_pad_to_square_keeps_every_pixel_on_grey():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (20, 91, 3), dtype=np.uint8)
    out = pad_to_square(a)
    left, top, side = pad_offsets(91, 20)
    assert out.shape == (91, 91, 3) and (left, top) == (0, 35)
    np.testing.assert_array_equal(out[top:top + 20, left:left + 91], a)
    grey = np.ones(out.shape[:2], bool)
    grey[top:top + 20, left:left + 91] = False
    assert (out[grey] == PAD_VALUE).all()
    assert pad_to_square(a[:20, :20]) is not None and pad_to_square(a[:, :20]).shape == (20, 20, 3)
    square = a[:, :20]
    assert pad_to_square(square) is square  # a square image is left alone


@pytest.mark.parametrize("w,h,size", [(600, 200, 224), (200, 600, 224), (227, 227, 224),
                                      (301, 215, 260), (90, 20, 224)])
def test_crop_box_is_the_central_87_5_percent_square(w, h, size):
    left, top, right, bottom = crop_box(w, h, size)
    side = min(w, h) * size / round(size / 0.875)
    assert right - left == pytest.approx(side) and bottom - top == pytest.approx(side)
    assert (left + right) / 2 == pytest.approx(w / 2) and (top + bottom) / 2 == pytest.approx(h / 2)
    assert 0 <= left and right <= w and 0 <= top and bottom <= h


def test_load_image_pad_is_squash_of_the_padded_image(odd_images):
    for path in odd_images:
        full = np.asarray(images.decode_image(path, draft_size=224))
        padded = load_image(path, 224, "pad")
        np.testing.assert_array_equal(padded, squash(pad_to_square(full), 224))
        assert padded.shape == (224, 224, 3) and padded.dtype == np.uint8
        h, w = full.shape[:2]
        if w == h:  # a square photo: pad and squash give the same pixels
            np.testing.assert_array_equal(padded, load_image(path, 224, "squash"))
        else:  # the margins are grey
            edge = padded[0] if w > h else padded[:, 0]
            assert (edge == PAD_VALUE).all()


def test_squash_helper_is_the_squash_resize(odd_images):
    """``squash`` (used after padding) resizes as ``load_image(..., "squash")`` does, on both the
    bilinear and the bicubic path."""
    for path in odd_images:
        full = np.asarray(images.decode_image(path, draft_size=224))
        np.testing.assert_array_equal(squash(full, 224), load_image(path, 224, "squash"))


def test_unknown_resize_is_refused_naming_the_valid_ones(tmp_path, capsys):
    from tfguess.cli import main
    from tfguess.core.config import TrainConfig
    from tfguess.core.errors import ConfigError

    with pytest.raises(ConfigError, match="squash, crop, pad, auto"):
        TrainConfig(resize="stretch")
    with pytest.raises(ValueError, match="squash, crop, pad"):
        load_image(DEMO_DATA / "face" / "face_000.png", 32, "stretch")
    assert main(["-q", "train", str(tmp_path), "--resize", "letterbox"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown resize 'letterbox'" in err[0] and "squash, crop, pad, auto" in err[0]


def test_the_size_as_shown(tmp_path):
    from tfguess.core.config import TrainConfig
    from tfguess.data.images import oriented_size

    assert TrainConfig().resize == "auto"
    # the size as shown: a portrait phone photo stored landscape with EXIF orientation 6
    im = Image.fromarray(np.zeros((30, 40, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(tmp_path / "turned.jpg", exif=exif)
    assert oriented_size(tmp_path / "turned.jpg") == (30, 40)


def test_views_share_the_random_views_cache_across_resizes():
    from tfguess.data.augment import view_recipe
    from tfguess.engine.features import BackboneRef
    from tfguess.training.views import view_cache_key

    keys = {r: BackboneRef("efficientnet_lite0", "w", 224, r) for r in ("squash", "crop", "pad")}
    mirror = view_recipe(0, "light", False)
    random_view = view_recipe(1, "light", False)
    assert len({view_cache_key(ref, mirror) for ref in keys.values()}) == 3
    assert len({view_cache_key(ref, random_view) for ref in keys.values()}) == 1
    # squash keeps the key it always had
    assert view_cache_key(keys["squash"], random_view) == BackboneRef(
        "efficientnet_lite0", "w", 224, f"squash|{random_view}").cache_key


def test_export_notes_what_a_squashing_client_sees():
    from tfguess.export.common import squash_client_note

    assert squash_client_note("squash") == ""
    for resize in ("crop", "pad"):
        note = squash_client_note(resize)
        assert "MediaPipe" in note and "yourself" in note


# --- slow: tiny models trained with --resize crop and pad ----------------------------------------


@pytest.fixture(scope="module", params=["crop", "pad"])
def resized_model(request, tmp_path_factory) -> tuple[str, Path]:
    """A TF_FILES folder trained with ``--resize`` crop or pad on 20 demo images a label."""
    from tfguess.core.config import TrainConfig
    from tfguess.training.train import train

    tf_files = tmp_path_factory.mktemp(f"resize_{request.param}") / "tf_files"
    for label in ("face", "not_face"):
        (tf_files / "data" / label).mkdir(parents=True)
        for p in sorted((DEMO_DATA / label).iterdir())[:20]:
            shutil.copy(p, tf_files / "data" / label / p.name)
    # float32 guessing, so that the float32 exports can be compared with it within 1e-4
    train(tf_files, TrainConfig(quick=True, resize=request.param, views=0, epochs=20, report=False,
                                precision="float32"),
          progress=False, log=lambda *_: None)
    return request.param, tf_files


def guess_probs(tf_files: Path, paths: list[Path]) -> tuple[list[str], np.ndarray]:
    """What ``guess`` computes: the model's probabilities of each image, in label order."""
    from tfguess.guess.predict import Predictor

    predictor = Predictor.load(tf_files, log=lambda *_: None)
    preds = list(predictor.predict(paths, top_k=len(predictor.labels)))
    assert all(p.error is None for p in preds)
    return predictor.labels, np.array([[dict(p.top)[lb] for lb in predictor.labels] for p in preds])


@pytest.mark.slow
def test_the_resize_is_recorded_and_guess_follows_it(resized_model, odd_images):
    from tfguess.engine.model import read_meta
    from tfguess.guess.predict import Predictor

    resize, tf_files = resized_model
    assert read_meta(tf_files)["backbone"]["resize"] == resize
    summary = json.loads((tf_files / "run_summary.json").read_text())
    assert summary["backbone"]["resize"] == summary["config"]["resize"] == resize
    predictor = Predictor.load(tf_files, log=lambda *_: None)
    assert predictor.resize == resize
    labels, got = guess_probs(tf_files, odd_images)
    own = np.stack([load_image(p, 224, resize) for p in odd_images]).astype(np.float32)
    np.testing.assert_allclose(got, predictor.probabilities(own), atol=1e-6)
    squashed = np.stack([load_image(p, 224, "squash") for p in odd_images]).astype(np.float32)
    assert not np.allclose(predictor.probabilities(squashed), got, atol=1e-4)


@pytest.mark.slow
def test_serve_follows_the_resize(resized_model, odd_images):
    from fastapi.testclient import TestClient

    from tfguess.serve import create_app

    resize, tf_files = resized_model
    labels, expected = guess_probs(tf_files, odd_images)
    with TestClient(create_app(tf_files, log=lambda *_: None), base_url="http://127.0.0.1") as client:
        files = [("files", (p.name, p.read_bytes())) for p in odd_images]
        answer = client.post(f"/api/predict?top_k={len(labels)}", files=files)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"] if isinstance(answer.json(), dict) else answer.json()
    got = np.array([[{q["label"]: q["score"] for q in r["predictions"]}[lb] for lb in labels]
                    for r in results])
    assert np.abs(got - expected).max() < 1e-4


@pytest.mark.slow
def test_every_export_follows_the_resize(resized_model, odd_images, tmp_path):
    import tensorflow as tf

    from tfguess.engine.runtime import TFLiteClassifier
    from tfguess.engine.tflite_metadata import read_metadata
    from tfguess.export import export

    resize, tf_files = resized_model
    labels, expected = guess_probs(tf_files, odd_images)
    formats = ["tflite", "savedmodel", "frozen-graph"]
    try:
        import onnxruntime  # noqa: F401
        import tf2onnx  # noqa: F401

        formats.append("onnx")
    except ImportError:
        pass
    out = {p.name: p for p in export(tf_files, formats=formats, out_dir=tmp_path, log=lambda *_: None,
                                     quiet=True)}

    # TFLite: the file says its resize; fed the pixels of that resize, it agrees with guess.
    tfl = TFLiteClassifier(out["model.tflite"])
    assert tfl.resize == resize
    got = tfl(np.stack([load_image(p, tfl.input_size, tfl.resize) for p in odd_images]))
    assert np.abs(got - expected).max() < 1e-4
    description = read_metadata(out["model.tflite"].read_bytes())
    text = getattr(description, "description", None) or ""
    with zipfile.ZipFile(io.BytesIO(out["model.tflite"].read_bytes())) as zf:
        assert json.loads(zf.read("tfguess.json"))["resize"] == resize
    if text:
        assert "MediaPipe" in text

    # SavedModel and frozen graph: encoded bytes in, the crop or pad done inside the graph.
    loaded = tf.saved_model.load(str(out["saved_model"]))
    sm = loaded.signatures["classify_image"](
        image_bytes=tf.constant([p.read_bytes() for p in odd_images]))["probabilities"].numpy()
    gd = tf.compat.v1.GraphDef()
    gd.ParseFromString(out["retrained_graph.pb"].read_bytes())
    with tf.Graph().as_default() as g:
        tf.import_graph_def(gd, name="")
        with tf.compat.v1.Session(graph=g) as sess:
            fg = np.concatenate([sess.run("final_result:0", {"DecodeJpeg/contents:0": p.read_bytes()})
                                 for p in odd_images])
    for name, probs in (("savedmodel", sm), ("frozen graph", fg)):
        diff = np.abs(probs - expected).max(axis=1)
        assert diff.max() < 1e-4, f"{name}: {dict(zip([p.name for p in odd_images], diff))}"

    try:  # Core ML takes pixels: its input description tells the client how to make them
        import coremltools as ct

        mlpackage = export(tf_files, formats=["coreml"], out_dir=tmp_path, log=lambda *_: None, quiet=True)[0]
        image = ct.models.MLModel(str(mlpackage), skip_model_load=True).get_spec().description.input[0]
        assert ("grey 127" if resize == "pad" else "87.5%") in image.shortDescription
    except ImportError:
        pass

    if "model.onnx" in out:
        import onnxruntime as ort

        session = ort.InferenceSession(str(out["model.onnx"]), providers=["CPUExecutionProvider"])
        x = np.stack([load_image(p, 224, resize) for p in odd_images]).astype(np.float32)
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
        assert np.abs(got - expected).max() < 1e-4
