"""Backbone registry: converted EfficientNet-Lite weights on real photos, keras.applications
offline behaviour and local weights, TF Hub modules from a local SavedModel, save/load."""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import require_shared
from PIL import Image

from tfguess.data.images import load_image
from tfguess.engine import backbones
from tfguess.engine.backbones import (
    DEFAULT_BACKBONE,
    WeightsUnavailableError,
    applications,
    efficientnet_lite,
    get_backbone,
    list_backbones,
    tfhub_backbone,
)
from tfguess.engine.backbones.torch_reader import TorchCheckpointError, read_state_dict

ANT, BEE = 310, 309


@pytest.fixture(scope="module", autouse=True)
def isolated_caches(tmp_path_factory):
    """Converted weights go to a fresh cache; the Keras cache is empty (nothing downloaded)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TFGUESS_CACHE", str(tmp_path_factory.mktemp("tfguess_cache")))
    mp.setenv("KERAS_HOME", str(tmp_path_factory.mktemp("keras_home")))
    yield
    mp.undo()


@pytest.fixture
def offline(monkeypatch):
    """Downloads fail the way they do without a network."""
    calls = []

    def no_network(url, dest, md5=None, timeout=30):
        calls.append(url)
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(applications, "download", no_network)
    return calls


@pytest.fixture(scope="module")
def lite0_classifier():
    return get_backbone("efficientnet_lite0").build(include_top=True)


def pixels(paths, size):
    return np.stack([load_image(p, size, resize="crop") for p in paths]).astype(np.float32)


def random_pixels(n, size, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype(np.float32)


# --- torch reader -------------------------------------------------------------------------------


def test_torch_reader_reads_lite0_checkpoint():
    state = read_state_dict(efficientnet_lite.checkpoint_path("efficientnet_lite0"))
    params = sum(v.size for k, v in state.items() if not k.endswith("num_batches_tracked"))
    # learned parameters + BatchNorm running statistics
    assert params == 4_694_024  # "about 4.69M"
    assert sum(v.size for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))) == 4_652_008
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_fc.weight"].dtype == np.float32
    assert state["_bn0.num_batches_tracked"].dtype == np.int64
    assert len({k.split(".")[1] for k in state if k.startswith("_blocks.")}) == 16
    assert np.all(state["_bn1.running_var"] > 0)


def test_torch_reader_refuses_other_globals(tmp_path):
    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as f:
        for obj in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(obj, f)
        pickle.dump(os.getcwd, f)  # a global outside the allowed few
    with pytest.raises(TorchCheckpointError, match="refusing to load"):
        read_state_dict(bad)
    zipped = tmp_path / "new.pth"
    zipped.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    with pytest.raises(TorchCheckpointError, match=str(zipped)):
        read_state_dict(zipped)


# --- EfficientNet-Lite on real photos -------------------------------------------------------------

# skimage.data photo -> sensible ImageNet classes (any of them in the top-5 counts)
PHOTOS = {
    "chelsea": {281, 282, 283, 284, 285, 287},  # tabby, tiger cat, Persian, Siamese, Egyptian cat, lynx
    "coffee": {967, 968, 504},  # espresso, cup, coffee mug
    "camera": {872, 759, 732},  # tripod, reflex camera, Polaroid camera (the cameraman photo)
    "rocket": {657, 744, 812},  # missile, projectile, space shuttle
    "stereo_motorcycle": {665, 670},  # moped, motor scooter (ImageNet has no plain motorcycle)
}


@pytest.mark.slow
def test_lite0_classifier_on_skimage_photos(lite0_classifier, tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    paths = []
    for name in PHOTOS:
        image = getattr(skimage_data, name)()
        image = image[0] if isinstance(image, tuple) else image
        paths.append(tmp_path / f"{name}.png")
        Image.fromarray(np.asarray(image)).save(paths[-1])
    probs = lite0_classifier.predict(pixels(paths, 224), verbose=0)
    assert probs.shape == (len(PHOTOS), 1000)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)
    top5 = np.argsort(-probs, axis=1)[:, :5]
    hits = {name: bool(set(t.tolist()) & want) for (name, want), t in zip(PHOTOS.items(), top5, strict=True)}
    assert sum(hits.values()) >= 4, f"top-5 {dict(zip(PHOTOS, top5.tolist(), strict=True))}"


def hymenoptera_val() -> tuple[list[Path], np.ndarray]:
    root = require_shared() / "val"
    paths, labels = [], []
    for folder, label in (("ants", ANT), ("bees", BEE)):
        for p in sorted((root / folder).iterdir()):
            paths.append(p)
            labels.append(label)
    return paths, np.array(labels)


@pytest.mark.shared
@pytest.mark.slow
def test_lite0_imagenet_accuracy_on_hymenoptera(lite0_classifier):
    paths, labels = hymenoptera_val()
    assert len(paths) == 153
    probs = lite0_classifier.predict(pixels(paths, 224), batch_size=32, verbose=0)
    top5 = np.argsort(-probs, axis=1)[:, :5]
    top1_acc = float(np.mean(top5[:, 0] == labels))
    top5_acc = float(np.mean((top5 == labels[:, None]).any(axis=1)))
    print(f"lite0 on hymenoptera/val: top-1 {top1_acc:.3f}, top-5 {top5_acc:.3f}")
    assert top1_acc >= 0.83
    assert top5_acc >= 0.92


@pytest.mark.slow
def test_lite_conversion_is_cached(monkeypatch):
    b = get_backbone("efficientnet_lite0")
    b.build()  # converts (or finds the conversion)
    cached = backbones.cache_dir() / f"efficientnet_lite0-{b.weights_id()}.weights.h5"
    assert cached.is_file()
    mtime = cached.stat().st_mtime_ns

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr("tfguess.engine.backbones.torch_reader.read_state_dict", no_conversion)
    start = time.perf_counter()
    b.build()
    assert time.perf_counter() - start < 10
    assert cached.stat().st_mtime_ns == mtime
    assert not [p for p in cached.parent.iterdir() if p.name.startswith(".")]  # no temp files left


# --- the registry -------------------------------------------------------------------------------


def test_registry_facts():
    names = [b.name for b in list_backbones()]
    assert names[0] == DEFAULT_BACKBONE
    assert {"efficientnet_lite1", "efficientnet_lite2", "mobilenet_v2", "mobilenet_v3_small",
            "mobilenet_v3_large", "inception_v3"} <= set(names)
    rows = backbones.describe_backbones()
    assert [r["name"] for r in rows] == names
    lite0 = rows[0]
    assert lite0["input_size"] == 224 and lite0["feature_dim"] == 1280
    assert lite0["offline"] and lite0["available"] and lite0["resize"] == "squash"
    assert lite0["preprocessing"] == "(x - 127) / 128"
    assert not next(r for r in rows if r["name"] == "inception_v3")["available"]  # empty KERAS_HOME


@pytest.mark.slow
def test_lite_takes_another_input_size_with_the_same_weights():
    lite0 = get_backbone("efficientnet_lite0")
    big = get_backbone("efficientnet_lite0", 256)
    assert (big.input_size, big.weights_id(), big.name) == (256, lite0.weights_id(), lite0.name)
    assert get_backbone("efficientnet_lite0", 224) is lite0
    model, own = big.build(), lite0.build()
    assert model.input_shape == (None, 256, 256, 3) and model.output_shape == (None, 1280)
    for a, b in zip(model.get_weights(), own.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_image_size_is_refused_where_it_cannot_apply():
    with pytest.raises(ValueError, match="mobilenet_v2 takes 224x224 pixels only.*--image-size"):
        get_backbone("mobilenet_v2", 256)
    with pytest.raises(ValueError, match="--image-size 64: choose a size from 96 to 640"):
        get_backbone("efficientnet_lite0", 64)


def test_unknown_backbone_names_the_closest():
    with pytest.raises(ValueError, match="efficientnet_lite0") as info:
        get_backbone("efficientnet-lite0")
    assert "Did you mean 'efficientnet_lite0'" in str(info.value)
    assert "inception_v3" in str(info.value)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", list_backbones(), ids=lambda b: b.name)
def test_every_backbone_builds(backbone, offline):
    size = backbone.input_size
    x = random_pixels(2, size)
    if backbone.offline:
        model = backbone.build()
        assert len(backbone.weights_id()) == 16
    else:
        start = time.perf_counter()
        with pytest.raises(WeightsUnavailableError) as info:
            backbone.build()
        assert time.perf_counter() - start < 1  # before any model is built
        message = str(info.value)
        spec = next(s for s in applications.SPECS if s.name == backbone.name)
        assert spec.url(spec.notop_file) in message
        assert str(backbones.keras_models_dir()) in message
        assert "--weights PATH" in message
        assert offline == [spec.url(spec.notop_file)]
        model = backbone.build(weights=backbones.RANDOM)
    assert model.name == "backbone"
    assert tuple(model.input.shape) == (None, size, size, 3)
    features = np.asarray(model(x))
    assert features.shape == (2, backbone.feature_dim)
    assert np.all(np.isfinite(features))
    classifier = backbone.build(weights=None if backbone.offline else backbones.RANDOM, include_top=True)
    assert tuple(classifier.output.shape) == (None, 1000)


@pytest.mark.slow
def test_lite_features_match_classifier_trunk(lite0_classifier):
    features = get_backbone("efficientnet_lite0").build()
    x = random_pixels(2, 224, seed=1)
    dense = lite0_classifier.get_layer("predictions")
    kernel, bias = (np.asarray(w) for w in dense.weights)
    logits = np.asarray(features(x)) @ kernel + bias
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(expected, np.asarray(lite0_classifier(x)), atol=1e-5)


@pytest.mark.slow
def test_application_uses_local_weights_file(tmp_path, offline):
    import keras

    backbone = get_backbone("mobilenet_v3_small")
    source = keras.applications.MobileNetV3Small(input_shape=(224, 224, 3), weights=None, include_top=True)
    path = tmp_path / "mnv3.weights.h5"
    source.save_weights(path)
    x = random_pixels(2, 224, seed=2)

    classifier = backbone.build(weights=str(path), include_top=True)
    np.testing.assert_allclose(np.asarray(classifier(x)), np.asarray(source(x)), atol=1e-5)
    # the classifier file also serves the features: the pooled trunk of the same network
    features = backbone.build(weights=str(path))
    pool = [layer for layer in source.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D)][-1]
    trunk = keras.Model(source.input, pool.output)
    np.testing.assert_allclose(np.asarray(features(x)), np.asarray(trunk(x)).reshape(2, -1), atol=1e-5)
    assert backbone.weights_id(str(path)) == backbones.file_fingerprint(path)
    assert offline == []  # nothing tried to download

    with pytest.raises(WeightsUnavailableError, match="missing.h5"):
        backbone.build(weights=str(tmp_path / "missing.h5"))


@pytest.mark.slow
def test_nested_backbone_survives_keras_save_and_load(tmp_path):
    import keras

    backbone = get_backbone(DEFAULT_BACKBONE).build()
    inputs = keras.Input((224, 224, 3))
    outputs = keras.layers.Dense(3, activation="softmax")(backbone(inputs))
    model = keras.Model(inputs, outputs)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = random_pixels(2, 224, seed=3)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-6)
    assert loaded.get_layer("backbone").count_params() == backbone.count_params()


# --- TF Hub -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tfhub_module_from_local_savedmodel(tmp_path):
    import keras
    import tensorflow as tf

    source = get_backbone(DEFAULT_BACKBONE).build()

    class FeatureVector(tf.Module):
        """The TF Hub image feature-vector convention: float pixels in [0, 1] -> [N, dim]."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32)])
        def __call__(self, images):
            return self.model(images * 255.0)

    module_dir = tmp_path / "lite0_feature_vector"
    tf.saved_model.save(FeatureVector(source), str(module_dir))

    backbone = tfhub_backbone(str(module_dir))
    assert (backbone.input_size, backbone.feature_dim) == (224, 1280)  # read from the module
    assert backbone.name == f"tfhub:{module_dir}"
    assert get_backbone(backbone.name).feature_dim == 1280
    with pytest.raises(ValueError, match="224"):
        tfhub_backbone(str(module_dir), input_size=240)
    with pytest.raises(ValueError, match="no ImageNet classifier"):
        backbone.build(include_top=True)
    assert len(backbone.weights_id()) == 16

    model = backbone.build()
    x = random_pixels(3, 224, seed=4)
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(source(x)), atol=1e-4)

    inputs = keras.Input((224, 224, 3))
    outer = keras.Model(inputs, keras.layers.Dense(2)(model(inputs)))
    outer.save(tmp_path / "hub.keras")
    loaded = keras.saving.load_model(tmp_path / "hub.keras")
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(outer(x)), atol=1e-5)


@pytest.mark.slow
def test_tfhub_module_without_static_size_needs_one(tmp_path):
    import tensorflow as tf

    class MeanColour(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        def __call__(self, images):
            return tf.reduce_mean(images, axis=[1, 2])

    module_dir = tmp_path / "mean_colour"
    tf.saved_model.save(MeanColour(), str(module_dir))
    with pytest.raises(ValueError, match="input size"):
        tfhub_backbone(str(module_dir))
    backbone = tfhub_backbone(str(module_dir), input_size=32)
    assert (backbone.input_size, backbone.feature_dim) == (32, 3)
    x = np.full((1, 32, 32, 3), 51.0, np.float32)
    np.testing.assert_allclose(np.asarray(backbone.build()(x)), [[0.2, 0.2, 0.2]], atol=1e-5)


def test_tfhub_unreachable_handle_is_a_clear_error():
    with pytest.raises(WeightsUnavailableError, match="folder"):
        tfhub_backbone("https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5")
