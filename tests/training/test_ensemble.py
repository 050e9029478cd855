"""The ensemble: planned when two fine-tuned backbones fit the budget, kept on the validation split
unless the first alone is clearly better, one model file that guess, the exports and a re-train
read as one model."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
from conftest import ARTIFACTS, DEMO_DATA
from pagecheck import assert_report_loads

from tfguess.core.config import TrainConfig
from tfguess.core.errors import ConfigError, ModelError
from tfguess.training.ensemble import decide
from tfguess.training.evaluation import meta_metrics
from tfguess.training.plan import (
    RECIPES,
    choose,
    ensemble_member,
    plan_run,
    second_member_seconds,
)
from tfguess.training.throughput import Speed

SPEED = Speed(extract=110.0, views=145.0, fine_tune=85.0, source="test")


def test_a_larger_budget_adds_a_second_backbone_when_both_fit():
    """At 5 minutes a few hundred photos get the best recipe alone; a budget that holds both
    members with their refits gets the ensemble: lite2, at the first member's input size."""
    best = max(RECIPES, key=lambda r: r.value)
    five = choose(300, 300, 240, 0, SPEED, validation_images=30)
    assert five.chosen.recipe == best and five.second is None
    thirty = choose(1800, 300, 240, 0, SPEED, validation_images=30)
    assert thirty.chosen.recipe == best and thirty.second is not None
    second = thirty.second.recipe
    assert (second.backbone, second.image_size, second.fine_tune) == (
        "efficientnet_lite2", best.image_size, True)
    assert five.chosen.seconds < thirty.ensemble_seconds <= 0.8 * 1800
    assert "then an ensemble: lite2, 288 px" in thirty.describe()
    assert thirty.summary()["ensemble"]["second"] == second.name
    # no validation counts given (a pinned recipe, a Ray run): never an ensemble
    assert choose(1800, 300, 240, 0, SPEED).second is None
    # a budget that holds the best recipe but not a second one
    assert choose(thirty.ensemble_seconds, 300, 240, 0, SPEED, validation_images=30).second is None


def test_a_second_member_the_estimate_does_not_fit_waits_for_the_first_members_time():
    """Where the best recipe fits with all its epochs but two members do not, by the reference
    rates, the plan still measures its backbone and leaves the second member to the run: built
    if the first member's own time here, scaled by the two estimates, fits the time it leaves."""
    five = choose(300, 300, 240, 0, SPEED, validation_images=30, choice_images=270)
    assert five.second is None and five.second_if_time is not None and five.alternatives
    assert five.second_if_time.recipe == ensemble_member(five.chosen.recipe)
    assert five.ensemble_seconds > 0.8 * 300 and five.second_ratio > 1   # lite2 costs more
    assert "then an ensemble with lite2, 288 px" in five.describe()
    assert "if the time the first leaves holds it" in five.describe()
    assert five.summary()["ensemble"]["if_time_left"] is True
    # fewer epochs than the best recipe's, or a pinned recipe (no validation counts): none
    assert choose(300, 2000, 1600, 0, SPEED, validation_images=200).second_if_time is None
    assert choose(300, 300, 240, 0, SPEED).second_if_time is None
    # a plan that holds both is built as planned
    assert choose(1800, 300, 240, 0, SPEED, validation_images=30).second_if_time is None
    # what the first took, its choices of resize and backbone aside, times the ratio
    timings = {"total": 130.0, "choose_resize": 7.0, "choose_backbone": 3.0, "fine_tune": 60.0}
    assert second_member_seconds(five, timings) == pytest.approx(120 * five.second_ratio)


def _first_member(tmp_path, seconds: float, backbone: str = "efficientnet_lite0"):
    from tfguess.core.runfolder import RunFolder
    from tfguess.training.train import TrainResult

    run = RunFolder.at(tmp_path / "tf")
    run.root.mkdir()
    summary = {"backbone": {"name": backbone, "input_size": 288, "resize": "squash"},
               "timings_s": {"total": seconds}}
    return run, TrainResult(run.model, ["a", "b"], {}, summary, run.summary)


@pytest.mark.parametrize("first_seconds,backbone,trained,why", [
    (100.0, "efficientnet_lite0", True, "the second member failed"),
    (200.0, "efficientnet_lite0", False, "(the first member's time here, scaled)"),
    (100.0, "efficientnet_lite2", False, "the first member is efficientnet_lite2 already"),
])
def test_the_run_builds_the_second_member_if_the_time_left_holds_it(
        tmp_path, first_seconds, backbone, trained, why):
    """300 s, a first member that took 100 s: the second, scaled to about 125 s, is trained in
    the 200 s left; one that took 200 s leaves too little; a first member that is lite2
    already (the backbone measured on the photos) has no second."""
    import time

    from tfguess.training.ensemble import second_member

    plan = choose(300, 300, 240, 0, SPEED, validation_images=30, choice_images=270)
    run, result = _first_member(tmp_path, first_seconds, backbone)
    calls, said = [], []

    def train_one(folder, config, *_args, **_kw):
        calls.append(config)
        raise ConfigError("lite2's weights cannot be had offline")

    t0 = time.perf_counter() - first_seconds
    out = second_member(run, TrainConfig(time_limit=300), result, plan, False, t0, None,
                        train_one, False, said.append)
    assert bool(calls) == trained
    if trained:
        assert calls[0].backbone == "efficientnet_lite2" and calls[0].image_size == 288
        assert 190 < calls[0].time_limit <= 200
    built = out.summary["ensemble"]
    assert built["built"] is False and why in built["why"]
    assert built["time"]["left_s"] == pytest.approx(300 - first_seconds, abs=5)
    assert built["time"]["needed_s"] == pytest.approx(first_seconds * plan.second_ratio, abs=0.1)
    assert any(why in line for line in said), said


def test_the_second_member_takes_the_first_members_schedule():
    first = replace(max(RECIPES, key=lambda r: r.value), fine_tune_epochs=7, image_size=320)
    second = ensemble_member(first)
    assert (second.image_size, second.fine_tune_epochs, second.views) == (320, 7, first.views)


@pytest.mark.parametrize("config,ensemble", [
    (TrainConfig(time_limit=3600), True),
    (TrainConfig(time_limit=3600, one_backbone=True), False),
    (TrainConfig(time_limit=3600, backbone="efficientnet_lite2"), False),   # the user's backbone
    (TrainConfig(time_limit=3600, ray="auto"), False),                       # no fine-tuning there
    (TrainConfig(time_limit=3600, precision="int8"), False),                 # no refit of int8
])
def test_only_a_plan_that_chooses_everything_builds_an_ensemble(photos, config, ensemble):
    said = []
    _, plan = plan_run(config, photos, photos.parent / "run_summary.json", said.append)
    assert (plan.second is not None) == ensemble
    assert ("then an ensemble" in "\n".join(said)) == ensemble


def _heldout(right: list[bool], labels: int = 2):
    """Validation probabilities that get the photos marked True right (label 0 is the truth)."""
    y = np.zeros(len(right), np.int64)
    p = np.array([[0.9, 0.1] if r else [0.1, 0.9] for r in right], np.float32)
    return {"validation": ([f"d{i}" for i in range(len(right))], y, p)}


def test_the_ensemble_stands_unless_the_first_member_alone_is_clearly_better():
    summaries = ({"backbone": {"name": "lite0"}}, {"backbone": {"name": "lite2"}})
    # the second member is sure and right where the first is wrong: the mean is right everywhere
    first = _heldout([True] * 8 + [False] * 2)
    second = _heldout([True] * 10)
    second["validation"][2][:] = [0.99, 0.01]
    out = decide(first, second, *summaries)
    assert out["kept"] and out["validation"] == {"n": 10, "ensemble": 10, "first": 8, "second": 10}
    assert "the ensemble got 10 right, lite0 alone 8, lite2 alone 10" in out["why"]
    # a sure and wrong second member drags 12 photos down: the first alone is clearly better
    first = _heldout([True] * 12)
    second = _heldout([False] * 12)
    second["validation"][2][:] = [0.01, 0.99]
    out = decide(first, second, *summaries)
    assert not out["kept"] and "clearly better" in out["why"]
    # the second member's photos are matched by digest, whatever their order
    shuffled = _heldout([False] * 12)
    shuffled["validation"] = (shuffled["validation"][0][::-1], *shuffled["validation"][1:])
    assert decide(first, shuffled, *summaries)["validation"]["n"] == 12
    assert decide({"validation": ([], np.zeros(0), np.zeros((0, 2)))}, second, *summaries)["kept"]


@pytest.mark.slow
def test_an_ensemble_is_one_model_for_guess_export_and_re_train(tmp_path, monkeypatch):
    """Trained with a budget that holds two members (short schedules, so the test is quick): the
    model file holds both; guessing gives the mean of the two members' Keras models; the TFLite
    export is that one model; --head-only re-trains both heads; a re-run changes nothing; --ray
    says it runs one backbone."""
    import tfguess.training.plan as plan_module
    import tfguess.training.throughput as throughput
    from tfguess.data.images import load_image
    from tfguess.engine.model import ensemble_members, load_classifier, read_meta
    from tfguess.guess.distributed import RayPredictor
    from tfguess.guess.predict import Predictor
    from tfguess.training.train import train

    quick = tuple(replace(r, image_size=224 if r.backbone.endswith("lite0") else r.image_size,
                          fine_tune_epochs=2, fine_tune_blocks=1, base=None) for r in RECIPES)
    monkeypatch.setattr(plan_module, "RECIPES", quick)
    monkeypatch.setattr(throughput, "busy_cores", lambda *a, **k: 0.0)
    tf_files = tmp_path / "tf"
    for label in ("face", "not_face"):
        (tf_files / "data" / label).mkdir(parents=True)
        for path in sorted((DEMO_DATA / label).glob("*.png"))[:15]:
            shutil.copy(path, tf_files / "data" / label / path.name)
    said = []
    result = train(tf_files, TrainConfig(report=False, time_limit=3600), progress=False,
                   log=said.append)
    text = "\n".join(said)
    assert "then an ensemble: lite2, 224 px" in text and "Ensemble kept" in text, text
    built = result.summary["ensemble"]
    assert built["built"] and built["members"][1]["name"] == "efficientnet_lite2"
    meta = read_meta(tf_files / "model.keras")
    (member,) = ensemble_members(meta)
    assert member["backbone"]["input_size"] == meta["backbone"]["input_size"] == 224
    assert "fine-tuned" in member["backbone"]["weights_source"]

    # guess: the mean of the two members' own Keras models
    first = load_classifier(tf_files)          # the first member alone
    second = load_classifier(tf_files / "ensemble" / "member1")
    paths = sorted((DEMO_DATA / "face").glob("*.png"))[-3:] + sorted(
        (DEMO_DATA / "not_face").glob("*.png"))[-3:]
    pixels = np.stack([load_image(p, 224, first.resize) for p in paths]).astype(np.float32)
    expected = (np.asarray(first.keras_model(pixels)) + np.asarray(second.keras_model(pixels))) / 2
    predictor = Predictor.load(tf_files, log=lambda *_: None)
    np.testing.assert_allclose(predictor.probabilities(pixels), expected, atol=1e-4)
    assert " + " in predictor.engine
    _the_figures_are_the_ensembles(tf_files, meta, built)
    _the_exports_are_the_ensemble(tf_files, pixels, expected)
    _the_report_is_the_ensembles(tf_files, predictor)

    # a re-run of the same photos does nothing; --ray says it runs one backbone
    again = train(tf_files, TrainConfig(report=False, time_limit=3600), progress=False,
                  log=lambda *_: None)
    assert again.unchanged
    with pytest.raises(ConfigError, match="is an ensemble"):
        RayPredictor.load_ray(tf_files, log=lambda *_: None)

    # --head-only (the review page's Re-train) after a photo moved: both heads again, one file
    moved = sorted((tf_files / "data" / "face").iterdir())[0]
    moved.rename(tf_files / "data" / "not_face" / moved.name)
    said.clear()
    retrained = train(tf_files, TrainConfig(report=False, head_only=True, force=True),
                      progress=False, log=said.append)
    assert retrained.summary["ensemble"]["built"], "\n".join(said)
    after = read_meta(tf_files / "model.keras")
    assert ensemble_members(after)[0]["backbone"]["weights_id"] == member["backbone"]["weights_id"]
    assert read_meta(tf_files / "ensemble" / "member1" / "model.keras")["backbone"][
        "weights_id"] == member["backbone"]["weights_id"]
    assert Predictor.load(tf_files, log=lambda *_: None).probabilities(pixels).shape == (6, 2)
    # their backbones trained on the test photos: the new heads' test figure is not held out
    test = retrained.metrics["test"]
    assert test["seen_by_backbone"] and not test.get("before_refit")
    assert read_meta(tf_files / "model.keras")["metrics"]["test"]["seen_by_backbone"]


def _the_figures_are_the_ensembles(tf_files, meta: dict, built: dict) -> None:
    """The summary's figures are the ensemble's (its validation count is the decision's); both
    members' refits trained on the test photos too, so its test figure is the members' before
    them, said so, in the model's own description too (what serve's model card shows)."""
    summary = json.loads((tf_files / "run_summary.json").read_text())
    assert summary["metrics"]["validation"]["n"] == built["validation"]["n"]
    assert summary["timings_s"]["total"] > summary["timings_s"]["first_member"]
    assert summary["metrics"]["test"]["before_refit"] and summary["refit"]["test_photos"]
    assert meta["metrics"] == meta_metrics(summary["metrics"])
    assert len(summary["before_refit"]["test"]["digests"]) == summary["metrics"]["test"]["n"]


def _the_exports_are_the_ensemble(tf_files, pixels: np.ndarray, expected: np.ndarray) -> None:
    """The TFLite and ONNX exports are the ensemble, one model each."""
    import onnxruntime

    from tfguess.engine.runtime import TFLiteClassifier
    from tfguess.export import export

    tflite, onnx = export(tf_files, formats=["tflite", "onnx"], log=lambda *_: None, quiet=True)
    np.testing.assert_allclose(TFLiteClassifier(tflite)(pixels), expected, atol=1e-3)
    session = onnxruntime.InferenceSession(str(onnx))
    onnx_probs = session.run(None, {session.get_inputs()[0].name: pixels})[0]
    np.testing.assert_allclose(onnx_probs, expected, atol=1e-4)


def _the_report_is_the_ensembles(tf_files, predictor) -> None:
    """The report in Chromium says what the ensemble is and why it was kept, and its mistakes use
    both members (each on its own cached features): the same probabilities as ``predictor``."""
    from tfguess.core.runfolder import RunFolder
    from tfguess.curate.report import write_report
    from tfguess.curate.report.analysis import _load_rows, _model_probs
    from tfguess.data.images import load_image
    from tfguess.engine.model import read_meta

    page = write_report(tf_files, log=lambda *_: None)
    seen = assert_report_loads(page, ARTIFACTS / "report-ensemble.png")["text"]
    assert "two backbones, probabilities averaged" in seen, seen
    assert "then lite2, 224 px" in seen and "validation photos the ensemble got" in seen
    assert "backbone efficientnet_lite0 + efficientnet_lite2" in seen
    assert "test accuracy (n=" in seen and ", before the last refit" in seen
    assert "Measured with the model before its last refit" in seen
    run = RunFolder.at(tf_files)
    rows, x, _, _, _ = _load_rows(run, run.read_summary())
    on_rows = np.stack([load_image(r.path, 224, predictor.resize) for r in rows]).astype(np.float32)
    np.testing.assert_allclose(_model_probs(run, read_meta(run.model), rows, x),
                               predictor.probabilities(on_rows), atol=1e-4)


def test_a_second_member_that_fails_leaves_the_first_model(tmp_path):
    """The first model is saved before the second member starts: when that one cannot be trained
    (its weights cannot be had offline, a disk fills up), the run ends with the first, saying why."""
    import time

    from tfguess.core.errors import WeightsUnavailableError
    from tfguess.core.runfolder import RunFolder
    from tfguess.training.ensemble import second_member
    from tfguess.training.train import TrainResult

    plan = choose(1800, 300, 240, 0, SPEED, validation_images=30)
    summary = {"backbone": {"name": "efficientnet_lite0", "input_size": 288, "resize": "squash"},
               "timings_s": {"total": 100.0}}
    result = TrainResult(tmp_path / "model.keras", ["a", "b"], {}, summary,
                         tmp_path / "run_summary.json")

    def fails(*args, **kwargs):
        raise WeightsUnavailableError("no weights for efficientnet_lite2 here")

    said = []
    out = second_member(RunFolder.at(tmp_path), TrainConfig(time_limit=1800), result, plan, False,
                        time.perf_counter(), "digest", fails, False, said.append)
    assert out.model_path == result.model_path and out.summary["ensemble"]["built"] is False
    assert said[-1].startswith("No ensemble: the second member failed (WeightsUnavailableError: "
                               "no weights for efficientnet_lite2 here)")
    written = json.loads((tmp_path / "run_summary.json").read_text())
    assert written["ensemble"]["built"] is False and written["inputs"]["inputs"] == "digest"


def test_the_report_says_what_the_ensemble_was_planned_and_why_it_was_kept():
    from tfguess.training.summary import decisions

    summary = {"config": {}, "backbone": {"resize": "squash"}, "timings_s": {"total": 962.4},
               "time_limit": {"limit_s": 1800.0, "recipe": "lite0, 288 px", "estimated_s": 291.0,
                              "ensemble": {"second": "lite2, 288 px", "estimated_s": 1229.0}},
               "ensemble": {"built": True, "why": "on the 65 validation photos the ensemble got "
                            "60 right"}}
    made = {d["what"]: d for d in decisions(summary)}
    assert made["recipe"]["chosen"] == "lite0, 288 px, then lite2, 288 px"
    assert "(estimated 1229.0 s, took 962 s)" in made["recipe"]["why"]
    assert made["ensemble"] == {"what": "ensemble", "chosen": "two backbones, probabilities "
                                "averaged", "why": "on the 65 validation photos the ensemble got "
                                "60 right"}
    # a second member left to the time the first leaves: the plan's own estimate, the time
    later = {**summary, "time_limit": {**summary["time_limit"], "limit_s": 300.0, "ensemble": {
        "second": "lite2, 288 px", "if_time_left": True, "estimated_s": 533.1}},
        "ensemble": {**summary["ensemble"], "time": {
            "needed_s": 138.3, "left_s": 177.8, "by": "the first member's time here"}}}
    made = {d["what"]: d for d in decisions(later)}
    assert made["recipe"]["chosen"] == "lite0, 288 px, then lite2, 288 px if the time left holds it"
    assert "fits 5 min here (estimated 291.0 s, took 962 s)" in made["recipe"]["why"]
    assert made["ensemble"]["why"] == ("about 138 s needed by the first member's time here, 178 s "
                                       "left; on the 65 validation photos the ensemble got 60 right")


def _fake_model(path, seed: int):
    """A model file as far as the ensemble's layout reads it: its description and its head."""
    import io
    import zipfile

    from tfguess.engine.model import HEAD_MEMBER, META_MEMBER
    from tfguess.engine.runtime import Head

    rng = np.random.default_rng(seed)
    head = Head(rng.normal(size=(8, 2)).astype(np.float32), rng.normal(size=2).astype(np.float32))
    arrays = io.BytesIO()
    np.savez(arrays, **head.arrays())
    meta = {"format_version": 1, "labels": ["a", "b"],
            "backbone": {"name": f"net{seed}", "input_size": 224, "resize": "squash"}}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(META_MEMBER, json.dumps(meta))
        archive.writestr(HEAD_MEMBER, arrays.getvalue())
        archive.writestr("model.weights.h5", rng.bytes(4096))
    return head


def test_a_members_head_and_file_are_had_without_unpacking_it_twice(tmp_path, monkeypatch):
    """Guessing on an ensemble reads the member's head from its own small entry and finds its
    unpacked file by the digest the model records: neither reads the member's bytes again. A model
    written before the head entry existed still loads (its head read from inside the member)."""
    import zipfile

    from tfguess.engine import model
    from tfguess.engine.model import ensemble_members, member_file, member_head, save_ensemble

    monkeypatch.setenv("TFGUESS_CACHE", str(tmp_path / "cache"))
    _fake_model(tmp_path / "first.keras", 0)
    head = _fake_model(tmp_path / "second.keras", 1)
    save_ensemble(tmp_path / "first.keras", [tmp_path / "second.keras"], {"built": True})
    (member,) = ensemble_members(model.read_meta(tmp_path / "first.keras"))
    unpacked = member_file(tmp_path / "first.keras", member)
    assert unpacked.read_bytes() == (tmp_path / "second.keras").read_bytes()

    read = []
    real = model._read_member
    monkeypatch.setattr(model, "_read_member", lambda p, name: read.append(name) or real(p, name))
    np.testing.assert_array_equal(member_head(tmp_path / "first.keras", member).kernel, head.kernel)
    assert member_file(tmp_path / "first.keras", member) == unpacked
    assert read == ["tfguess_member_1.head.npz"]

    # the layout before: no head entry, no digest in the description
    old = {k: v for k, v in member.items() if k in ("file", "backbone")}
    np.testing.assert_array_equal(member_head(tmp_path / "first.keras", old).bias, head.bias)
    assert member_file(tmp_path / "first.keras", old) == unpacked
    with zipfile.ZipFile(tmp_path / "first.keras") as archive:
        names = archive.namelist()
    # saving again (a re-train) leaves one of each, never two
    save_ensemble(tmp_path / "first.keras", [tmp_path / "second.keras"], {"built": True})
    with zipfile.ZipFile(tmp_path / "first.keras") as archive:
        assert sorted(archive.namelist()) == sorted(names)
    # a head entry the description names but the file lacks: damaged, said so
    with pytest.raises(ModelError, match=r"is damaged \(its member tfguess_member_9.head.npz is "
                       r"missing\): train again"):
        member_head(tmp_path / "first.keras", {**member, "head": "tfguess_member_9.head.npz"})
