"""The fast backbone engine: TFLite features equal Keras ones; streaming decoding is ordered and bounded."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tfguess.core.errors import ConfigError
from tfguess.data import pipeline
from tfguess.data.images import load_image
from tfguess.data.pipeline import Loaded, iter_batches, iter_loaded
from tfguess.engine import features
from tfguess.engine.features import BackboneRef, KerasEngine, make_extractor
from tfguess.engine.runtime import TFLiteEngine

# TFLite (XNNPACK, float32) and TensorFlow sum in different orders: features (post-ReLU6 averages,
# up to about 6) agree to about 1e-5; this bound leaves a margin while catching any real change.
ATOL = RTOL = 1e-4
SIZE = 224


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """Real photos from scikit-image, saved as JPEG and PNG files of different shapes."""
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for i, name in enumerate(["chelsea", "coffee", "astronaut", "rocket", "camera"]):
        path = folder / f"{name}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(getattr(data, name)()).convert("RGB").save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def lite0():
    """EfficientNet-Lite0 in Keras and its TFLite twin (converted once, cached like in training)."""
    from tfguess.engine.backbones import get_backbone

    spec = get_backbone("efficientnet_lite0")
    if not spec.available:
        pytest.skip("efficientnet-lite0 weights package not installed")
    model = spec.build()
    ref = BackboneRef(spec.name, spec.weights_id(), spec.input_size, spec.resize)
    tflite = make_extractor(ref, lambda: model, engine="tflite", log=lambda *_: None)
    return model, tflite.path


def _pixels(paths: list[Path]) -> np.ndarray:
    return np.stack([load_image(p, SIZE, "crop") for p in paths])


@pytest.mark.slow
def test_tflite_features_equal_keras_on_photos(lite0, photos):
    model, tflite_path = lite0
    x = _pixels(photos)
    reference = KerasEngine(model)(x)
    features = TFLiteEngine(tflite_path, threads=2)(x)
    assert features.shape == reference.shape == (len(photos), 1280)
    assert features.dtype == np.float32
    np.testing.assert_allclose(features, reference, rtol=RTOL, atol=ATOL)
    assert reference.std() > 0.1  # real, varied features, not all zeros


@pytest.mark.slow
@pytest.mark.shared
def test_tflite_features_equal_keras_on_hymenoptera(lite0, hymenoptera):
    model, tflite_path = lite0
    paths = sorted((hymenoptera / "val" / "ants").glob("*.jpg"))[:6]
    paths += sorted((hymenoptera / "val" / "bees").glob("*.jpg"))[:6]
    x = _pixels(paths)
    np.testing.assert_allclose(
        TFLiteEngine(tflite_path)(x), KerasEngine(model)(x), rtol=RTOL, atol=ATOL
    )


@pytest.mark.slow
def test_tflite_engine_splits_batches_without_changing_results(lite0, photos):
    x = _pixels(photos)  # 5 images: uneven parts for 2 and 3 interpreters
    one = TFLiteEngine(lite0[1], threads=1)
    alone = np.concatenate([one(x[i : i + 1]) for i in range(len(x))])
    for threads in (2, 3, 8):
        np.testing.assert_array_equal(TFLiteEngine(lite0[1], threads=threads)(x), alone)
    assert one(x[:0]).shape == (0, 1280)


def _write_bad_files(folder: Path) -> dict[str, Path]:
    bad = {"text": folder / "notes.jpg", "empty": folder / "empty.png", "missing": folder / "gone.jpg"}
    bad["text"].write_text("just some text, not an image\n")
    bad["empty"].write_bytes(b"")
    return bad


def test_iter_loaded_keeps_input_order_and_reports_unreadable_files(photos, tmp_path):
    bad = _write_bad_files(tmp_path)
    paths = [photos[0], bad["text"], *photos[1:3], bad["missing"], bad["empty"], *photos[3:]] * 3
    loaded = list(iter_loaded(paths, SIZE, "crop", workers=3, prefetch=4))
    assert [item.index for item in loaded] == list(range(len(paths)))
    assert [item.path for item in loaded] == paths
    for item in loaded:
        if item.path in bad.values():
            assert item.pixels is None and item.error
        else:
            assert item.error is None and item.pixels.shape == (SIZE, SIZE, 3)
            assert item.pixels.dtype == np.uint8
    reasons = {item.path: item.error for item in loaded if item.error}
    assert "not an image" in reasons[bad["text"]]
    assert "zero-byte" in reasons[bad["empty"]]
    assert "not found" in reasons[bad["missing"]]
    # Same pixels as decoding one by one.
    np.testing.assert_array_equal(loaded[0].pixels, load_image(photos[0], SIZE, "crop"))


class _CountingLoader:
    """Stands in for load_image: counts the images decoded and not yet taken by the consumer."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held = 0
        self.max_held = 0
        self.calls = 0

    def __call__(self, path, size, resize, reject_placeholders=False):
        with self.lock:
            self.calls += 1
            self.held += 1
            self.max_held = max(self.max_held, self.held)
        return np.full((2, 2, 3), int(Path(path).stem) % 256, np.uint8)

    def taken(self) -> None:
        with self.lock:
            self.held -= 1


def test_iter_loaded_look_ahead_is_bounded(monkeypatch):
    loader = _CountingLoader()
    monkeypatch.setattr(pipeline, "load_image", loader)
    pulled = 0

    def paths():
        nonlocal pulled
        for i in range(1000):
            pulled += 1
            yield Path(f"{i}.jpg")

    prefetch, n = 8, 0
    for n, item in enumerate(iter_loaded(paths(), SIZE, "crop", workers=4, prefetch=prefetch)):
        loader.taken()
        assert item.index == n and item.pixels[0, 0, 0] == n % 256
        assert pulled - n <= prefetch + 1  # the path generator is not drained ahead either
    assert n == 999 and loader.calls == 1000
    assert loader.max_held <= prefetch


def test_iter_loaded_stops_decoding_when_the_consumer_stops(monkeypatch):
    loader = _CountingLoader()
    monkeypatch.setattr(pipeline, "load_image", loader)
    stream = iter_loaded([Path(f"{i}.jpg") for i in range(1000)], SIZE, "crop", workers=2, prefetch=16)
    for _ in range(5):
        next(stream)
    stream.close()
    assert loader.calls <= 5 + 16 + 1


def test_iter_batches_counts_only_usable_images():
    ok = np.zeros((2, 2, 3), np.uint8)
    items = [Loaded(i, Path(f"{i}"), None if i % 3 == 0 else ok, "bad" if i % 3 == 0 else None)
             for i in range(10)]
    batches = list(iter_batches(items, 3))
    assert [item for batch in batches for item in batch] == items
    for batch in batches[:-1]:
        assert sum(item.pixels is not None for item in batch) == 3
    assert sum(item.pixels is not None for item in batches[-1]) <= 3


@pytest.fixture
def tiny_model():
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))


@pytest.mark.slow
def test_make_engine_falls_back_to_keras_when_conversion_fails(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TFGUESS_CACHE", str(tmp_path))

    def broken(*args, **kwargs):
        raise RuntimeError("converter exploded")

    monkeypatch.setattr(features, "convert_to_tflite", broken)
    extractor = make_extractor(BackboneRef("tiny", "test", 8, "crop"), lambda: tiny_model, engine="auto", log=lambda *_: None)
    assert isinstance(extractor, KerasEngine)
    assert "TFLite conversion failed" in capsys.readouterr().err
    x = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_allclose(extractor(x), tiny_model(x.astype(np.float32)), rtol=1e-6)
    with pytest.raises(RuntimeError, match="converter exploded"):
        make_extractor(BackboneRef("tiny", "test", 8, "crop"), lambda: tiny_model, engine="tflite", log=lambda *_: None)
    assert isinstance(make_extractor(BackboneRef("tiny", "test", 8, "crop"), lambda: tiny_model, engine="keras"), KerasEngine)
    with pytest.raises(ConfigError, match="unknown engine"):
        make_extractor(BackboneRef("tiny", "test", 8, "crop"), lambda: tiny_model, engine="fast")


@pytest.mark.slow
def test_make_engine_converts_once_and_reuses_the_cached_file(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("TFGUESS_CACHE", str(tmp_path))
    logs: list[str] = []
    first = make_extractor(BackboneRef("tiny", "cached", 8, "crop"), lambda: tiny_model, engine="auto", log=logs.append)
    assert isinstance(first, TFLiteEngine) and first.path.is_file()
    assert len(logs) == 1 and "Converting" in logs[0]
    x = np.random.default_rng(1).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_allclose(first(x), tiny_model(x.astype(np.float32)), rtol=RTOL, atol=ATOL)
    second = make_extractor(BackboneRef("tiny", "cached", 8, "crop"), lambda: tiny_model, engine="auto", log=logs.append)
    assert second.path == first.path and len(logs) == 1
