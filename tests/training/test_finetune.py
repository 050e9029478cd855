"""Fine-tuning and the hidden-layer head: what changes, what must not, and the saved model's paths."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import DEMO_DATA

from tfguess.core.config import TrainConfig
from tfguess.engine.runtime import Head


def demo_items(n: int = 16) -> list[tuple[Path, int]]:
    faces = sorted((DEMO_DATA / "face").glob("*.png"))[: n // 2]
    others = sorted((DEMO_DATA / "not_face").glob("*.png"))[: n // 2]
    return [(p, 0) for p in faces] + [(p, 1) for p in others]


def layer_weights(model) -> dict[str, list[np.ndarray]]:
    return {layer.name: [np.array(w) for w in layer.get_weights()] for layer in model.layers}


@pytest.mark.slow
def test_fine_tune_changes_only_unfrozen_layers_and_never_batchnorm():
    import keras

    from tfguess.engine.backbones import get_backbone
    from tfguess.training.finetune import block_groups, fine_tune

    backbone = get_backbone("efficientnet_lite0").build()
    assert block_groups(backbone)[0] == "stem" and block_groups(backbone)[-1] == "head"
    before = layer_weights(backbone)
    rng = np.random.default_rng(0)
    head = Head(rng.normal(0, 0.01, (1280, 2)).astype(np.float32), np.zeros(2, np.float32))
    config = TrainConfig(quick=True, fine_tune=True, fine_tune_blocks=2, fine_tune_epochs=1, fine_tune_lr=1e-3)
    result = fine_tune(backbone, head, demo_items(), [], 2, config, 224, "crop", progress=False,
                       log=lambda *_: None, max_steps=2)
    after = layer_weights(backbone)
    top = {"head", *block_groups(backbone)[-3:-1]}
    changed, kinds = set(), {}
    for layer in backbone.layers:
        kinds[layer.name] = layer
        for a, b in zip(before[layer.name], after[layer.name]):
            if not np.array_equal(a, b):
                changed.add(layer.name)
    assert changed, "fine-tuning changed nothing"
    for name in changed:
        assert name.split("_")[0] in top, f"{name} is frozen but changed"
        assert not isinstance(kinds[name], keras.layers.BatchNormalization), f"{name} (BatchNorm) changed"
    convs = {n for n in result.unfrozen if n.endswith("conv")}
    assert convs and convs <= changed  # every unfrozen convolution moved
    assert result.weights_id and result.weights_id.startswith("ft-")
    assert result.images_per_second > 0


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory) -> Path:
    """The demo data, trained with a hidden layer and one short fine-tuning epoch."""
    from tfguess.training.train import train

    tf_files = tmp_path_factory.mktemp("ft") / "tf"
    shutil.copytree(DEMO_DATA, tf_files / "data")
    # No validation split: the last fine-tuned weights are kept, so the backbone surely changed.
    config = TrainConfig(quick=True, report=False, epochs=40, validation_pct=0, hidden_units=32, fine_tune=True,
                         fine_tune_blocks=1, fine_tune_epochs=1, fine_tune_lr=1e-3)
    train(tf_files, config, progress=False, log=lambda *_: None)
    return tf_files


@pytest.mark.slow
def test_fine_tuned_model_guesses_through_the_fast_path_keyed_by_its_weights(fine_tuned):
    import json

    from tfguess.data.images import load_image
    from tfguess.engine.backbones import get_backbone
    from tfguess.engine.features import BackboneRef
    from tfguess.engine.model import load_classifier, read_meta
    from tfguess.engine.runtime import TFLiteEngine
    from tfguess.guess.predict import Predictor

    meta = read_meta(fine_tuned)
    stock = get_backbone("efficientnet_lite0").weights_id()
    assert meta["backbone"]["weights_id"].startswith("ft-") and meta["backbone"]["weights_id"] != stock
    summary = json.loads((fine_tuned / "run_summary.json").read_text())
    assert summary["mode"] == "fine-tuned+views+hidden" and summary["fine_tune"]["epochs_run"] == 1
    classifier = load_classifier(fine_tuned)
    ref = BackboneRef.from_meta(meta["backbone"])
    assert ref.engine_key != BackboneRef.from_meta({**meta["backbone"], "weights_id": stock}).engine_key
    cached = ref.engine_file
    assert cached.exists()  # converted from the fine-tuned backbone during training
    paths = [p for p, _ in demo_items(8)]
    pixels = np.stack([load_image(p, 224) for p in paths]).astype(np.float32)
    keras_features = np.asarray(classifier.backbone(pixels, training=False))
    np.testing.assert_allclose(TFLiteEngine(cached)(pixels), keras_features, atol=1e-4)
    stock_features = np.asarray(get_backbone("efficientnet_lite0").build()(pixels, training=False))
    assert np.abs(stock_features - keras_features).max() > 1e-3  # the backbone really changed
    fast = Predictor.load(fine_tuned)
    assert fast.engine.startswith("tflite")
    keras_probs = np.asarray(classifier.keras_model(pixels, training=False))
    np.testing.assert_allclose(fast.probabilities(pixels), keras_probs, atol=1e-4)
    np.testing.assert_allclose(classifier.head()(keras_features), keras_probs, atol=1e-5)


@pytest.mark.slow
def test_tflite_export_of_a_fine_tuned_model_agrees(fine_tuned, tmp_path):
    from tfguess.data.images import load_image
    from tfguess.engine.model import load_classifier
    from tfguess.engine.runtime import TFLiteClassifier
    from tfguess.export import export

    (path,) = export(fine_tuned, formats=["tflite"], out_dir=tmp_path, log=lambda *_: None)
    tfl = TFLiteClassifier(path)
    paths = [p for p, _ in demo_items(8)]
    pixels = np.stack([load_image(p, tfl.input_size, tfl.resize) for p in paths]).astype(np.float32)
    keras_probs = np.asarray(load_classifier(fine_tuned).keras_model(pixels, training=False))
    np.testing.assert_allclose(tfl(pixels), keras_probs, atol=1e-4)


@pytest.mark.slow
def test_hidden_head_gradients_and_saved_model(tmp_path):
    """The numpy hidden-layer head learns, and the Keras model built from it computes the same."""
    from tfguess.engine.backbones import get_backbone
    from tfguess.engine.model import build_classifier, read_head, save_classifier, set_head
    from tfguess.training.head import fit_head

    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (300, 16)).astype(np.float32)
    y = ((x[:, 0] * x[:, 1]) > 0).astype(np.int64)  # XOR-like: a softmax alone cannot learn it
    config = TrainConfig(quick=True, hidden_units=32, epochs=300, dropout=0.0, learning_rate=1e-2, patience=50)
    fit = fit_head(x[:240], y[:240], 2, config, (x[240:], y[240:]), progress=False)
    assert fit.head.hidden_units == 32
    assert (fit.head(x[240:]).argmax(1) == y[240:]).mean() >= 0.85

    backbone = get_backbone("efficientnet_lite0").build(weights="random")
    classifier = build_classifier(backbone, 2, hidden_units=32)
    real = Head(rng.normal(0, 0.2, (32, 2)).astype(np.float32), np.zeros(2, np.float32),
                rng.normal(0, 0.05, (1280, 32)).astype(np.float32),
                rng.normal(0, 0.1, 32).astype(np.float32))
    set_head(classifier, real)
    path = tmp_path / "model.keras"
    save_classifier(path, classifier, ["a", "b"], {"backbone": {}})
    stored = read_head(path)
    assert set(stored.arrays()) == set(real.arrays())
    pixels = rng.uniform(0, 255, (3, 224, 224, 3)).astype(np.float32)
    features = np.asarray(backbone(pixels, training=False))
    np.testing.assert_allclose(stored(features),
                               np.asarray(classifier(pixels, training=False)), atol=1e-5)


@pytest.mark.slow
def test_backbone_auto_picks_by_cross_validation_and_reuses_the_cache(tmp_path):
    from tfguess.training.choices import AUTO_CANDIDATES
    from tfguess.training.train import train

    tf_files = tmp_path / "tf"
    shutil.copytree(DEMO_DATA, tf_files / "data")
    config = TrainConfig(quick=True, backbone="auto", report=False, epochs=20)
    summary = train(tf_files, config, progress=False, log=lambda *_: None).summary
    auto = summary["auto_backbone"]
    assert auto["chosen"] in AUTO_CANDIDATES and set(auto["candidates"]) <= set(AUTO_CANDIDATES)
    assert summary["backbone"]["name"] == auto["chosen"] == summary["config"]["backbone"]
    assert summary["features"]["computed"] == 0  # the choice already cached the winner's features
    best = max(c["cv_accuracy"] for c in auto["candidates"].values())
    assert auto["candidates"][auto["chosen"]]["cv_accuracy"] == best
    again = train(tf_files, dataclasses.replace(config, force=True), progress=False,
                  log=lambda *_: None).summary["auto_backbone"]
    assert all(c["features_computed"] == 0 for c in again["candidates"].values())


def test_same_layout_needs_the_same_hidden_layer_and_backbone_weights(tmp_path):
    """The warm save (head arrays replaced in the previous file) only applies to the same layout."""
    import json
    import zipfile

    from tfguess.engine.features import BackboneRef
    from tfguess.engine.model import META_MEMBER, WEIGHTS_MEMBER, same_layout

    ref = BackboneRef("efficientnet_lite0", "abc", 224, "crop")
    backbone = {"name": ref.name, "weights_id": ref.weights_id, "input_size": 224, "resize": "crop"}
    config = TrainConfig(hidden_units=16)
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(META_MEMBER, json.dumps({"labels": ["a", "b"], "backbone": backbone,
                                                  "config": config.to_dict()}))
        archive.writestr(WEIGHTS_MEMBER, b"")
        archive.writestr("config.json", b"{}")
    assert same_layout(path, ref, 2, config)
    assert not same_layout(path, ref, 2, TrainConfig(hidden_units=8))
    assert not same_layout(path, ref, 2, TrainConfig())
    fine_tuned = BackboneRef(ref.name, "ft-0123", 224, "crop")
    assert not same_layout(path, fine_tuned, 2, config)


@pytest.mark.slow
def test_warm_retrain_with_a_hidden_layer_replaces_both_layers_without_keras(tmp_path):
    """A re-train with all features cached and the same hidden layer saves without building the
    backbone; Keras loads the file with the new weights of both dense layers. Another hidden size
    builds the model again."""
    from tfguess.engine.model import load_classifier, read_head
    from tfguess.training.train import train

    tf_files = tmp_path / "tf"
    shutil.copytree(DEMO_DATA, tf_files / "data")
    quiet = {"progress": False, "log": lambda *_: None}
    train(tf_files, TrainConfig(quick=True, report=False, epochs=20, hidden_units=16), **quiet)
    before = read_head(tf_files)
    summary = train(tf_files, TrainConfig(quick=True, report=False, epochs=20, hidden_units=16, seed=5),
                    **quiet).summary
    assert summary["features"]["computed"] == 0 and summary["timings_s"]["backbone"] == 0
    head = read_head(tf_files)
    assert not np.allclose(head.hidden_kernel, before.hidden_kernel)
    loaded = load_classifier(tf_files).head()
    for name, array in head.arrays().items():
        np.testing.assert_array_equal(loaded.arrays()[name], array)

    summary = train(tf_files, TrainConfig(quick=True, report=False, epochs=20, hidden_units=8), **quiet).summary
    assert summary["timings_s"]["backbone"] > 0  # another layout: the model is built again
    assert load_classifier(tf_files).head().hidden_units == 8 == read_head(tf_files).hidden_units


def test_learning_rate_warms_up_then_decays_by_a_cosine():
    from tfguess.training.finetune import lr_schedule

    rate = lr_schedule(1e-4, warmup=10, total=110)
    warm = [rate(k) for k in range(10)]
    assert warm == sorted(warm) and warm[0] == pytest.approx(1e-5) and warm[-1] == pytest.approx(1e-4)
    decay = [rate(k) for k in range(10, 111)]
    assert decay == sorted(decay, reverse=True)
    assert rate(60) == pytest.approx(1e-4 * (0.05 + 0.95 * 0.5)) and rate(110) == pytest.approx(5e-6)
    assert rate(500) == pytest.approx(5e-6)  # an early stop or a longer run never goes below


def test_the_head_only_start_is_kept_only_when_clearly_better():
    from tfguess.training.evaluation import clearly_better

    right = np.ones(65, bool)
    two_more = right.copy()
    two_more[:2] = False  # the fine-tuned model misses 2 of 65 the start gets right: chance
    assert not clearly_better(right, two_more)
    five_more = right.copy()
    five_more[:5] = False  # 5 to 0: p = 1/32
    assert clearly_better(right, five_more)
    start = right.copy()
    start[10:14] = False  # the start misses 4 that the fine-tuned model gets right: 5 to 4 is chance
    assert not clearly_better(start, five_more)
    assert not clearly_better(five_more, right) and not clearly_better(right, right)


def test_the_activation_pool_holds_one_view_per_epoch_within_its_budget():
    from tfguess.training.finetune_inputs import pool_views

    view = 14 * 14 * 112 * 2  # lite0 at 224, float16, the input of the top 6 blocks
    assert pool_views(None, 10, 582, view) == 10
    assert pool_views(4, 10, 582, view) == 4
    assert pool_views(30, 10, 582, view) == 10  # never more views than epochs
    assert pool_views(None, 10, 10_000, view, budget=10_000 * view * 3) == 3
    assert pool_views(None, 10, 10_000, view, budget=view) == 0


@pytest.mark.slow
def test_the_top_blocks_on_cached_activations_are_the_whole_classifier():
    """The cut is exact: the lower blocks (as the TFLite engine that caches them) and then the top
    blocks give what the whole classifier gives on the same pixels."""
    import tempfile

    import keras

    from tfguess.data.images import load_image
    from tfguess.engine.backbones import get_backbone
    from tfguess.engine.model import build_classifier, set_head
    from tfguess.training.finetune import _top_model, cut_layer, unfreeze_top
    from tfguess.training.finetune_inputs import lower_engine

    backbone = get_backbone("efficientnet_lite0").build()
    rng = np.random.default_rng(0)
    head = Head(rng.normal(0, 0.05, (1280, 2)).astype(np.float32), np.zeros(2, np.float32))
    model = build_classifier(backbone, 2)
    set_head(model, head)
    unfreeze_top(backbone, 6)
    cut = cut_layer(backbone, 6)
    assert cut.name.startswith("block10_")  # lite0: 16 blocks, the top 6 are block10-15
    assert tuple(cut.input.shape[1:]) == (14, 14, 112)
    pixels = np.stack([load_image(p, 224, "squash") for p, _ in demo_items(6)])
    lower = keras.Model(backbone.input, cut.input)
    upper = keras.Model(cut.input, backbone.output)
    with tempfile.TemporaryDirectory() as folder:
        engine = lower_engine(lower, 224, "CPU", Path(folder))
        acts = engine(pixels).astype(np.float16).astype(np.float32)  # stored as float16
    top = _top_model(model, upper, hidden=False)
    whole = np.asarray(model(pixels.astype(np.float32), training=False))
    parts = np.asarray(top(acts, training=False))
    np.testing.assert_allclose(parts, whole, atol=2e-3)
    assert cut_layer(backbone, 99) is None  # everything trains: no cut


@pytest.mark.slow
def test_a_passed_deadline_keeps_the_head_only_start():
    import time

    from tfguess.engine.backbones import get_backbone
    from tfguess.training.finetune import fine_tune

    backbone = get_backbone("efficientnet_lite0").build()
    before = [np.array(w) for w in backbone.get_weights()]
    rng = np.random.default_rng(0)
    head = Head(rng.normal(0, 0.01, (1280, 2)).astype(np.float32), np.zeros(2, np.float32))
    config = TrainConfig(quick=True, fine_tune=True, fine_tune_blocks=2, fine_tune_epochs=3)
    result = fine_tune(backbone, head, demo_items(8), demo_items(4), 2, config, 224, "squash",
                       progress=False, log=lambda *_: None, deadline=time.perf_counter())
    assert result.stopped_early and result.best_epoch == 0 and result.weights_id is None
    assert all(np.array_equal(a, b) for a, b in zip(before, backbone.get_weights()))


@pytest.mark.slow
def test_fine_tuning_twice_with_one_seed_gives_the_same_model():
    """Every random draw is seeded (the views and their order by the config's seed, the dropout
    too): the same photos and settings give the same weights; another seed, other weights."""
    from tfguess.engine.backbones import get_backbone
    from tfguess.training.finetune import fine_tune

    def run(seed: int) -> tuple[str, np.ndarray]:
        head = Head(np.random.default_rng(0).normal(0, 0.01, (1280, 2)).astype(np.float32),
                    np.zeros(2, np.float32))
        config = TrainConfig(quick=True, fine_tune=True, fine_tune_blocks=2, fine_tune_epochs=1,
                             fine_tune_lr=1e-3, dropout=0.5, seed=seed)
        result = fine_tune(get_backbone("efficientnet_lite0").build(), head, demo_items(), [], 2,
                           config, 224, "crop", progress=False, log=lambda *_: None, max_steps=2)
        return result.weights_id, result.head.kernel

    first, again, other = run(0), run(0), run(1)
    assert first[0] == again[0] and np.array_equal(first[1], again[1])
    assert other[0] != first[0]


def test_a_refit_reuses_the_views_of_the_images_it_shares():
    """The views of the first images are copied from the earlier pool (the same seed and lower
    blocks give the same views); only the images after them go through the lower blocks."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    from tfguess.training.finetune_inputs import Images, view_pool

    paths = sorted((DEMO_DATA / "face").glob("*.png"))[:5]
    seen = []

    def engine(pixels):
        seen.append(len(pixels))
        return pixels.astype(np.float32).mean(axis=(1, 2))

    def pool_of(n, reuse=None):
        seen.clear()
        with ThreadPoolExecutor(2) as pool:
            return view_pool(engine, Images(paths[:n], 32), 2, (3,), 32, "light", False, 0, pool,
                             tqdm(disable=True), None, reuse)

    first = pool_of(3)
    assert sum(seen) == 2 * 3
    acts, ok = pool_of(5, reuse=first)
    assert sum(seen) == 2 * 2 and ok.all()
    np.testing.assert_array_equal(acts[:, :3], first[0])
    full, _ = pool_of(5)
    np.testing.assert_array_equal(acts[:, :3], full[:, :3])
