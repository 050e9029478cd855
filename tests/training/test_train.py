"""train: outputs, the bottleneck cache, robustness to bad files, accuracy on real photos."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import zipfile

import numpy as np
import pytest
from conftest import DEMO_DATA
from PIL import Image

from tfguess.core.config import TrainConfig
from tfguess.data.dataset import DatasetError
from tfguess.engine.bottlenecks import BottleneckCache, compute_features
from tfguess.engine.model import load_classifier, read_meta
from tfguess.training.train import train

QUIET = {"progress": False, "log": lambda *_: None}


@pytest.mark.slow
def test_outputs_are_complete_and_self_describing(demo_trained):
    tf_files = demo_trained
    labels = (tf_files / "retrained_labels.txt").read_text().splitlines()
    assert labels == ["face", "not_face"]
    summary = json.loads((tf_files / "run_summary.json").read_text())
    assert summary["labels"] == labels
    assert summary["config"]["backbone"] == "efficientnet_lite0"
    assert summary["features"]["computed"] == 180
    assert set(summary["timings_s"]) >= {"scan", "features", "train_head", "total"}
    for split in ("train", "validation", "test"):
        assert summary["metrics"][split]["n"] > 0
    assert summary["metrics"]["test"]["accuracy"] >= 0.8
    with open(tf_files / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and {"epoch", "loss", "val_loss", "val_accuracy"} <= set(rows[0])

    meta = read_meta(tf_files)
    assert meta["labels"] == labels
    assert meta["backbone"]["name"] == "efficientnet_lite0"
    assert meta["backbone"]["input_size"] == 224
    assert meta["backbone"]["resize"] == "squash"
    classifier = load_classifier(tf_files / "model.keras")
    assert classifier.keras_model.output_shape == (None, 2)


@pytest.mark.slow
def test_frozen_backbone_weights_do_not_change(demo_trained):
    from tfguess.engine.backbones import get_backbone

    trained = load_classifier(demo_trained).backbone.get_weights()
    fresh = get_backbone("efficientnet_lite0").build().get_weights()
    assert len(trained) == len(fresh)
    for a, b in zip(trained, fresh):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_model_file_matches_feature_path(demo_trained):
    """The saved Keras model (pixels -> probabilities) agrees with features + head."""
    from tfguess.data.images import load_image
    from tfguess.guess.predict import Predictor

    classifier = load_classifier(demo_trained)
    paths = sorted((DEMO_DATA / "face").glob("*.png"))[:4] + sorted((DEMO_DATA / "not_face").glob("*.png"))[:4]
    pixels = np.stack([load_image(p, 224) for p in paths]).astype(np.float32)
    keras_probs = np.asarray(classifier.keras_model(pixels, training=False))
    fast = Predictor.load(demo_trained)
    np.testing.assert_allclose(fast.probabilities(pixels), keras_probs, atol=1e-4)


@pytest.mark.slow
def test_larger_image_size_is_used_everywhere(tmp_path):
    """--image-size 256 on EfficientNet-Lite0: the features, the saved model, the fast guess path
    and the TFLite export all take 256 x 256 pixels, and they agree."""
    from tfguess.data.images import load_image
    from tfguess.engine.runtime import TFLiteClassifier
    from tfguess.export import export
    from tfguess.guess.predict import Predictor

    tf_files = tmp_path / "tf_files"
    shutil.copytree(DEMO_DATA, tf_files / "data")
    result = train(tf_files, TrainConfig(quick=True, report=False, epochs=30, views=0, image_size=256), **QUIET)
    assert result.summary["backbone"]["input_size"] == 256
    assert next((tf_files / "bottlenecks").iterdir()).name.startswith("efficientnet_lite0-256-")
    classifier = load_classifier(tf_files)
    assert classifier.keras_model.input_shape == (None, 256, 256, 3) and classifier.input_size == 256
    paths = sorted((DEMO_DATA / "face").glob("*.png"))[:3] + sorted((DEMO_DATA / "not_face").glob("*.png"))[:3]
    pixels = np.stack([load_image(p, 256) for p in paths]).astype(np.float32)
    keras_probs = np.asarray(classifier.keras_model(pixels, training=False))
    fast = Predictor.load(tf_files, precision="float32")  # auto may run the int8 engine
    np.testing.assert_allclose(fast.probabilities(pixels), keras_probs, atol=1e-4)
    written = export(tf_files, formats=["tflite"], out_dir=tmp_path / "export", log=lambda *_: None, quiet=True)
    tflite = next(p for p in written if p.suffix == ".tflite")
    tfl = TFLiteClassifier(tflite)
    assert tfl.input_size == 256
    np.testing.assert_allclose(tfl(pixels.astype(np.uint8)), keras_probs, atol=1e-4)


@pytest.mark.slow
def test_second_run_computes_nothing_and_one_change_recomputes_one(tmp_path):
    tf_files = tmp_path / "tf"
    for label in ("face", "not_face"):
        shutil.copytree(DEMO_DATA / label, tf_files / "data" / label)
    config = TrainConfig(quick=True, report=False, epochs=5, resize="squash")  # no resize test
    first = train(tf_files, config, **QUIET)
    assert first.summary["features"] == {"computed": 180, "cached": 0}
    second = train(tf_files, dataclasses.replace(config, force=True), **QUIET)  # not a no-op
    assert second.summary["features"] == {"computed": 0, "cached": 180}
    assert (tf_files / "model.previous.keras").exists()  # the replaced model is kept

    changed = tf_files / "data" / "face" / "face_000.png"
    Image.open(changed).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(changed)
    third = train(tf_files, config, **QUIET)
    assert third.summary["features"] == {"computed": 1, "cached": 179}


class Interrupted(Exception):
    """Stands for Ctrl-C or a kill in the middle of extraction."""


def test_interrupted_extraction_leaves_a_usable_cache(tmp_path):
    """Ctrl-C in the middle: what was written is complete, and the next run computes the rest."""
    paths = sorted((DEMO_DATA / "face").glob("*.png"))[:40]
    items = [(p, f"{i:064x}") for i, p in enumerate(paths)]
    cache = BottleneckCache(tmp_path / "bottlenecks", "k")
    calls = []
    interrupt_at = [2]

    def extractor(pixels):
        calls.append(len(pixels))
        if len(calls) == interrupt_at[0]:
            raise Interrupted
        return pixels.reshape(len(pixels), -1)[:, :8].astype(np.float32)

    with pytest.raises(Interrupted):
        compute_features(items, cache, lambda: extractor, 32, "crop", batch_size=8, progress=False)
    done = [d for _, d in items if cache.get(d) is not None]
    assert len(done) == 8
    for d in done:
        assert cache.get(d).shape == (8,)
    assert not list(cache.dir.rglob("*.tmp"))

    interrupt_at[0] = 0  # no interruption this time
    result = compute_features(items, cache, lambda: extractor, 32, "crop", batch_size=8, progress=False)
    assert (result.computed, result.cached) == (32, 8)


def _bad_inputs_folder(root):
    """Two labels of real photos plus every kind of bad input, made here."""
    from skimage import data as skdata

    photos = {"cat": skdata.chelsea(), "coffee": skdata.coffee()}
    for label, pixels in photos.items():
        folder = root / label
        folder.mkdir(parents=True)
        img = Image.fromarray(pixels)
        for i in range(6):
            img.rotate(i * 7, expand=False).save(folder / f"{label}_{i}.jpg", quality=90)
    cat = root / "cat"
    Image.fromarray(skdata.chelsea()).convert("CMYK").save(cat / "cmyk.jpg")
    Image.fromarray(skdata.chelsea()).convert("RGBA").save(cat / "rgba.png")
    Image.fromarray(skdata.chelsea()).convert("P").save(cat / "palette_as.jpg", format="GIF")
    (cat / "empty.jpg").write_bytes(b"")
    (cat / "notes.jpg").write_text("this is not an image\n")
    full = (cat / "cat_0.jpg").read_bytes()
    (cat / "truncated.jpg").write_bytes(full[: len(full) // 3])
    Image.new("RGB", (300, 300), "white").save(cat / "blank.png")
    (cat / ".hidden.jpg").write_bytes(full)
    return {"empty.jpg", "notes.jpg", "truncated.jpg", "blank.png"}


@pytest.mark.slow
def test_bad_inputs_are_reported_not_fatal(tmp_path):
    bad = _bad_inputs_folder(tmp_path / "photos")
    result = train(tmp_path / "tf", TrainConfig(quick=True, image_dir=str(tmp_path / "photos"), report=False,
                                                 epochs=5), **QUIET)
    skipped = {p.rsplit("/", 1)[-1]: r for p, r in
               ((s["path"], s["reason"]) for s in result.summary["skipped"])}
    assert set(skipped) == bad
    assert "zero-byte" in skipped["empty.jpg"]
    assert "not an image" in skipped["notes.jpg"]
    assert "truncated" in skipped["truncated.jpg"] or "corrupt" in skipped["truncated.jpg"]
    used = {p.rsplit("/", 1)[-1] for split in result.summary["splits"].values() for p, _, _ in split}
    assert {"cmyk.jpg", "rgba.png", "palette_as.jpg"} <= used
    assert ".hidden.jpg" not in used


@pytest.mark.slow
def test_a_failed_run_keeps_the_good_model(tmp_path, monkeypatch):
    tf_files = tmp_path / "tf"
    shutil.copytree(DEMO_DATA, tf_files / "data")
    train(tf_files, TrainConfig(quick=True, report=False, epochs=3), **QUIET)
    before = (tf_files / "model.keras").read_bytes()

    import keras

    def broken_save(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(keras.Model, "save", broken_save)
    # a re-train with every feature cached saves without Keras: break that path too
    monkeypatch.setattr(zipfile.ZipFile, "writestr", broken_save)
    with pytest.raises(OSError):
        train(tf_files, TrainConfig(quick=True, report=False, epochs=3, seed=1), **QUIET)
    assert (tf_files / "model.keras").read_bytes() == before
    assert zipfile.is_zipfile(tf_files / "model.keras")
    assert not list(tf_files.glob(".*tmp*"))


@pytest.mark.slow
def test_one_label_is_a_clear_error(tmp_path):
    shutil.copytree(DEMO_DATA / "face", tmp_path / "tf" / "data" / "face")
    with pytest.raises(DatasetError, match="label"):
        train(tmp_path / "tf", TrainConfig(quick=True, report=False), **QUIET)


def test_missing_image_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="data"):
        train(tmp_path / "nowhere", TrainConfig(quick=True, report=False), **QUIET)


@pytest.mark.slow
@pytest.mark.shared
def test_hymenoptera_accuracy_and_placeholder(hymenoptera_trained):
    summary = json.loads((hymenoptera_trained / "run_summary.json").read_text())
    val = summary["metrics"]["eval_dir"]
    print(f"hymenoptera/val accuracy {val['accuracy']} (n={val['n']}), "
          f"own validation split {summary['metrics']['validation']['accuracy']}")
    assert val["n"] == 153
    assert val["accuracy"] >= 0.93
    # With --eval-dir, that folder is the test set: no test split is held out of train/.
    assert summary["metrics"]["test"]["n"] == 0 and summary["config"]["test_pct"] == 0
    assert summary["metrics"]["validation"]["accuracy"] >= 0.85
    skipped = {s["path"].rsplit("/", 1)[-1]: s["reason"] for s in summary["skipped"]}
    assert "placeholder" in skipped["imageNotFound.gif"]


@pytest.mark.slow
def test_summaries_dir_gets_tensorboard_logs(tmp_path):
    logs = tmp_path / "logs"
    result = train(tmp_path / "tf", TrainConfig(quick=True, image_dir=str(DEMO_DATA), report=False, epochs=4,
                                                 summaries_dir=str(logs)), **QUIET)
    events = list(logs.rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert result.summary["epochs_run"] == 4
