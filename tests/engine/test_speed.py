"""The int8 engine (keyed by precision and calibration, features close to float32) and the warm
re-train (no TensorFlow import; the model saved without Keras loads in Keras and gives the same
outputs as one Keras saved)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from conftest import REPO, require_shared

from tfguess.engine.features import (
    BackboneRef,
    calibration_digest,
    choose_calibration,
    make_extractor,
)
from tfguess.engine.runtime import TFLiteEngine

LITE0 = BackboneRef("efficientnet_lite0", "abc123", 224, "crop")


def test_engine_and_cache_keys_include_precision_and_calibration():
    int8_a = BackboneRef(LITE0.name, LITE0.weights_id, 224, "crop", "int8", "cal-a")
    int8_b = BackboneRef(LITE0.name, LITE0.weights_id, 224, "crop", "int8", "cal-b")
    # float32 keys are unchanged from before precision existed: old caches stay warm
    assert LITE0.engine_key == "efficientnet_lite0|abc123|224"
    keys = {r.engine_key for r in (LITE0, int8_a, int8_b)}
    assert len(keys) == 3 and all("int8" in k for k in keys - {LITE0.engine_key})
    assert len({r.engine_file for r in (LITE0, int8_a, int8_b)}) == 3
    assert len({r.cache_key for r in (LITE0, int8_a, int8_b)}) == 3
    meta = {"name": LITE0.name, "weights_id": "abc123", "input_size": 224, "resize": "crop",
            "precision": "int8", "calibration": "cal-a"}
    assert BackboneRef.from_meta(meta) == int8_a
    old_meta = {k: meta[k] for k in ("name", "weights_id", "input_size", "resize")}
    assert BackboneRef.from_meta(old_meta) == LITE0


def test_calibration_choice_ignores_order_and_is_stable():
    digests = [f"{i:064x}" for i in range(300)]
    chosen = choose_calibration(digests[::-1], n=100)
    assert chosen == digests[:100]
    assert calibration_digest(chosen) == calibration_digest(chosen[::-1])
    assert calibration_digest(chosen) != calibration_digest(digests[1:101])


def test_auto_precision_follows_the_cpu_and_is_decided_once_per_machine(tmp_path, monkeypatch):
    from tfguess.core.config import TrainConfig
    from tfguess.engine import runtime

    monkeypatch.setenv("TFGUESS_CACHE", str(tmp_path))
    assert TrainConfig().precision == "auto"
    for flags, expected in [({"avx2", "avx512_vnni"}, "int8"), ({"avx2", "fma"}, "float32"),
                            ({"fp", "asimd", "asimddp"}, "int8"), ({"amx_int8"}, "int8")]:
        monkeypatch.setattr(runtime, "cpu_flags", lambda f=flags: f)
        runtime._AUTO = None
        (tmp_path / runtime.PRECISION_FILE).unlink(missing_ok=True)
        decision = runtime.auto_precision()
        assert decision["precision"] == expected, (flags, decision)
        assert expected == "float32" or sorted(flags & set(runtime.INT8_DOT_FLAGS))[0] in decision["reason"]
    # decided once: another process on this machine reads the decision from the cache folder
    runtime._AUTO = None
    monkeypatch.setattr(runtime, "cpu_flags", lambda: pytest.fail("decided again"))
    assert runtime.auto_precision()["precision"] == "int8"
    runtime._AUTO = None


@pytest.mark.slow
@pytest.mark.parametrize("cpu", ["int8", "float32"])
def test_auto_precision_trains_float32_features_and_guesses_with_int8(tmp_path, monkeypatch, cpu):
    """--precision auto: float32 features (int8 ones cost accuracy on some data sets), and on a
    CPU with int8 dot-product instructions the model carries an int8 engine that guessing runs."""
    from conftest import DEMO_DATA, TEST_DATA

    from tfguess.core.config import TrainConfig
    from tfguess.engine.model import ENGINE_MEMBER
    from tfguess.guess import predict
    from tfguess.guess.predict import Predictor
    from tfguess.training import guess_engine, train

    decision = {"precision": cpu, "reason": f"test: {cpu}"}
    monkeypatch.setattr(guess_engine, "auto_precision", lambda: decision)
    monkeypatch.setattr(predict, "auto_precision", lambda: decision)
    tf_files = tmp_path / "tf_files"
    shutil.copytree(DEMO_DATA, tf_files / "data")
    result = train.train(tf_files, TrainConfig(quick=True, report=False, epochs=30, views=0), progress=False,
                         log=lambda *_: None)
    summary = result.summary
    precision = summary["precision"]
    assert {k: precision[k] for k in ("setting", "features", "guess", "cpu")} == {
        "setting": "auto", "features": "float32", "guess": cpu, "cpu": f"test: {cpu}"}
    if cpu == "int8":   # checked against float32 on the held-out photos first
        check = precision["int8_check"]
        assert check["passed"] and check["n"] > 0
        assert check["int8_correct"] >= check["float32_correct"] - 1
    assert summary["backbone"]["precision"] == "float32"
    with zipfile.ZipFile(tf_files / "model.keras") as archive:
        assert (ENGINE_MEMBER in archive.namelist()) == (cpu == "int8")
    images = sorted(TEST_DATA.glob("*.jpg"))
    auto = list(Predictor.load(tf_files, log=lambda *_: None).predict(images))
    f32 = list(Predictor.load(tf_files, log=lambda *_: None, precision="float32").predict(images))
    assert [p.label for p in auto] == [p.label for p in f32]
    scores = np.array([[s for _, s in p.top] for p in auto]), np.array([[s for _, s in p.top] for p in f32])
    assert np.array_equal(*scores) == (cpu == "float32")


def test_int8_engine_needs_calibration_when_not_cached(tmp_path, monkeypatch):
    from tfguess.core.errors import ModelError

    monkeypatch.setenv("TFGUESS_CACHE", str(tmp_path))
    ref = BackboneRef(LITE0.name, "no-such-weights", 224, "crop", "int8", "cal")
    with pytest.raises(ModelError, match="int8 engine"):
        make_extractor(ref, lambda: pytest.fail("must not build"), "auto", log=lambda *_: None)


@pytest.mark.slow
@pytest.mark.shared
def test_int8_features_are_close_to_float32(tmp_path):
    """Calibrated as training does (100 training photos of hymenoptera), the int8 engine's
    features on photos it was not calibrated on point the same way as float32's (cosine)."""
    import hashlib

    from tfguess.data.images import load_image
    from tfguess.engine.backbones import get_backbone

    spec = get_backbone("efficientnet_lite0")
    if not spec.available:
        pytest.skip("efficientnet-lite0 weights package not installed")
    root = require_shared()
    train = {hashlib.sha256(p.read_bytes()).hexdigest(): p
             for p in sorted((root / "train").rglob("*.jpg"))}
    chosen = choose_calibration(list(train))
    held_out = np.stack([load_image(p, 224, "crop")
                         for p in sorted((root / "val").rglob("*.jpg"))[::8]])
    model = spec.build()
    ref = BackboneRef(spec.name, spec.weights_id(), 224, "crop")
    f32 = make_extractor(ref, lambda: model, "tflite", log=lambda *_: None)
    ref8 = BackboneRef(spec.name, spec.weights_id(), 224, "crop", "int8", calibration_digest(chosen))
    i8 = make_extractor(ref8, lambda: model, "tflite", log=lambda *_: None,
                        calibration=lambda: (load_image(train[d], 224, "crop") for d in chosen))
    assert isinstance(i8, TFLiteEngine) and i8.path == ref8.engine_file
    a, b = f32(held_out), i8(held_out)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.95 and cos.mean() > 0.985, cos
    assert not np.array_equal(a, b)   # it really is another engine
    assert ref8.engine_file.stat().st_size < 0.5 * f32.path.stat().st_size  # int8 weights


PROBE = """
import sys
from tfguess.cli import main
code = main(["-q", "train", sys.argv[1], "--quick", "--epochs", "40", "--seed", "3", "--precision", "float32"])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
print("HEAVY", heavy[:5], code)
"""


@pytest.mark.slow
def test_warm_retrain_imports_no_tensorflow_and_saves_a_model_keras_loads(demo_trained, tmp_path):
    from tfguess.core.runfolder import RunFolder
    from tfguess.engine.model import build_classifier, load_classifier, read_head, read_meta

    run = tmp_path / "run"
    shutil.copytree(demo_trained, run, ignore=shutil.ignore_patterns("report"))
    before = read_head(run / "model.keras")
    # a first report fills the report's cache of data checks as a cold train does
    from tfguess.curate.report import write_report

    write_report(run, progress=False)
    out = subprocess.run([sys.executable, "-c", PROBE, str(run)], capture_output=True, text=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(REPO / "src")},
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "HEAVY [] 0" in out.stdout, out.stdout[-2000:]
    summary = json.loads(RunFolder.at(run).summary.read_text())
    assert summary["features"]["computed"] == 0 and summary["engine"] == "none (all cached)"

    head = read_head(run / "model.keras")
    assert not np.allclose(head.kernel, before.kernel)   # a new head was written
    assert read_meta(run / "model.keras")["config"]["seed"] == 3
    assert (run / "model.previous.keras").exists()

    # Keras loads the file and its head is the new one; outputs equal a Keras-saved twin's
    loaded = load_classifier(run / "model.keras")
    kernel, bias = loaded.keras_model.get_layer("head").get_weights()
    np.testing.assert_array_equal(kernel, head.kernel)
    np.testing.assert_array_equal(bias, head.bias)
    from tfguess.engine.backbones import get_backbone

    twin = build_classifier(get_backbone("efficientnet_lite0").build(), len(loaded.labels))
    twin.get_layer("head").set_weights([head.kernel, head.bias])
    twin.save(tmp_path / "twin.keras")
    import keras

    reloaded_twin = keras.saving.load_model(tmp_path / "twin.keras", compile=False)
    x = np.random.default_rng(0).uniform(0, 255, (4, 224, 224, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(loaded.keras_model(x)), np.asarray(reloaded_twin(x)))
    with zipfile.ZipFile(run / "model.keras") as archive:
        assert {"config.json", "model.weights.h5", "tfguess.json"} <= set(archive.namelist())


def test_an_int8_model_brings_its_engine_to_a_machine_without_it(tmp_path, monkeypatch):
    from tfguess.engine.model import ENGINE_MEMBER, install_engine

    monkeypatch.setenv("TFGUESS_CACHE", str(tmp_path / "cache"))
    ref = BackboneRef(LITE0.name, LITE0.weights_id, 224, "crop", "int8", "cal")
    model = tmp_path / "model.keras"
    with zipfile.ZipFile(model, "w") as archive:
        archive.writestr(ENGINE_MEMBER, b"engine bytes")
    assert not ref.engine_file.exists()
    assert install_engine(model, ref)
    assert ref.engine_file.read_bytes() == b"engine bytes"
    with zipfile.ZipFile(tmp_path / "float.keras", "w") as archive:
        archive.writestr("config.json", b"{}")
    other = BackboneRef(LITE0.name, LITE0.weights_id, 224, "crop", "int8", "other")
    assert not install_engine(tmp_path / "float.keras", other)


@pytest.mark.parametrize("orientation", [1, 6, 3])
def test_fast_jpeg_decoding_gives_pillows_pixels(tmp_path, monkeypatch, orientation):
    """simplejpeg's scaled decoding (when installed) equals Pillow's draft mode, EXIF included;
    a truncated file is refused the same way."""
    from PIL import Image

    from tfguess.data import images

    if images._simplejpeg is None:
        pytest.skip("simplejpeg not installed (pip install simplejpeg)")
    from skimage import data

    big = Image.fromarray(data.astronaut()).resize((2400, 1800), Image.Resampling.BICUBIC)
    path = tmp_path / "big.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    big.save(path, quality=90, exif=exif)
    fast = images.load_image(path, 224, "crop")
    monkeypatch.setattr(images, "_simplejpeg", None)
    slow = images.load_image(path, 224, "crop")
    np.testing.assert_array_equal(fast, slow)
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(images.ImageError) as slow_error:
        images.load_image(truncated, 224, "crop")
    monkeypatch.undo()
    with pytest.raises(images.ImageError) as fast_error:
        images.load_image(truncated, 224, "crop")
    assert fast_error.value.reason == slow_error.value.reason


@pytest.mark.parametrize(("train_disagree", "int8_wrong", "passed"),
                         [(0, 0, True), (0, 1, True), (0, 2, False), (2, 0, True), (3, 0, False)])
def test_int8_guessing_only_when_it_agrees_with_float32(monkeypatch, train_disagree, int8_wrong,
                                                        passed):
    """The int8 engine is kept for guessing only when its top label is float32's on 99.5 % of
    every photo (training photos too) and it gets at most one held-out photo fewer right; else
    guessing runs float32 and the summary says why. Of 400 photos, two that int8 labels otherwise
    pass (99.5 %), three fail, as do two held-out photos wrong."""
    from types import SimpleNamespace

    from tfguess.training import guess_engine

    y_train = np.arange(394) % 2
    y = np.array([0, 1, 0, 1, 0, 1])
    x_train = np.eye(2, dtype=np.float32)[y_train]
    x32 = np.eye(2, dtype=np.float32)[y]                  # float32: every photo right
    x8, x8_train = x32.copy(), x_train.copy()
    x8[:int8_wrong] = 1 - x8[:int8_wrong]                 # int8: the first held-out photos wrong
    x8_train[:train_disagree] = 1 - x8_train[:train_disagree]
    items = [SimpleNamespace(digest=f"d{i}") for i in range(len(y))]
    train_items = [SimpleNamespace(digest=f"t{i}") for i in range(len(y_train))]
    data = SimpleNamespace(
        splits={"train": train_items, "validation": items[:4], "test": items[4:]},
        arrays={"train": (x_train, y_train), "validation": (x32[:4], y[:4]),
                "test": (x32[4:], y[4:])})
    int8_features = {it.digest: x8[i] for i, it in enumerate(items)}
    int8_features.update({it.digest: x8_train[i] for i, it in enumerate(train_items)})
    monkeypatch.setattr(guess_engine, "extract", lambda *a, **k: SimpleNamespace(
        result=SimpleNamespace(features=int8_features)))
    check = guess_engine.int8_check(None, None, None, data, lambda x: x, None)
    assert check["passed"] == passed, check
    assert (check["n"], check["float32_correct"], check["int8_correct"]) == (6, 6, 6 - int8_wrong)
    assert check["photos"] == 400
    assert check["agreement"] == round(1 - (train_disagree + int8_wrong) / 400, 4)
    assert f"it got {6 - int8_wrong} of 6 held-out photos right, float32 6" in check["why"]


def test_no_int8_guessing_without_held_out_photos():
    from types import SimpleNamespace

    from tfguess.training import guess_engine

    data = SimpleNamespace(splits={"train": [], "validation": [], "test": []}, arrays={})
    check = guess_engine.int8_check(None, None, None, data, lambda x: x, None)
    assert not check["passed"] and "no held-out photos" in check["why"]
