"""``train`` with no flags: the time plan by default, ``--quick``, the user's own recipe
settings kept, the resize measured on the photos, and a re-run with nothing new doing nothing."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import DEMO_DATA

from tfguess.core.config import DEFAULT_TIME_LIMIT, TrainConfig
from tfguess.core.errors import ConfigError
from tfguess.core.runfolder import RunFolder
from tfguess.training import unchanged
from tfguess.training.plan import HEADROOM, plan_run


def plan(config, photos):
    said = []
    out, chosen = plan_run(config, photos, photos.parent / "run_summary.json", said.append)
    return out, chosen, "\n".join(said)


def test_no_flags_plan_the_default_budget(photos):
    config, chosen, said = plan(TrainConfig(), photos)
    assert TrainConfig().time_limit == DEFAULT_TIME_LIMIT == 300
    assert chosen is not None and chosen.limit == 300
    assert said.startswith("Time limit 5 min 00 s: ") and "estimated" in said
    assert config.fine_tune == chosen.chosen.recipe.fine_tune   # the plan's recipe is the run's


def test_quick_is_the_frozen_recipe_without_a_plan(photos):
    config, chosen, said = plan(TrainConfig(quick=True), photos)
    assert chosen is None and config == TrainConfig(quick=True)
    assert said == ("Quick recipe: efficientnet_lite0, 224 px, 2 views, no fine-tuning "
                    "(no time plan)")
    with pytest.raises(ConfigError, match="--quick trains without a time plan"):
        TrainConfig(quick=True, time_limit=900)


def test_recipe_settings_the_user_gives_are_kept(photos):
    config, chosen, said = plan(TrainConfig(views=0), photos)
    assert chosen is not None and config.views == 0 and chosen.chosen.recipe.views == 0
    assert "kept from your settings: views=0" in said
    config, chosen, _ = plan(TrainConfig(fine_tune=True, fine_tune_blocks=3), photos)
    assert config.fine_tune and config.fine_tune_blocks == 3 and chosen.chosen.recipe.fine_tune
    config, chosen, said = plan(TrainConfig(hidden_units=16), photos)  # in no recipe
    assert chosen is None and config == TrainConfig(hidden_units=16)
    assert said.startswith("Your recipe: efficientnet_lite0, 224 px, 2 views, 16 hidden units")


def test_the_cli_refuses_quick_with_a_time_limit(tmp_path, capsys):
    from tfguess.cli import main

    assert main(["train", str(tmp_path), "--quick", "--time-limit", "10m"]) == 2
    assert "--quick trains without a time plan" in capsys.readouterr().err


# --- a re-run with nothing new -------------------------------------------------------------------

def test_the_inputs_digest_sees_every_change_and_only_changes(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(DEMO_DATA, data)
    config = TrainConfig()
    first = unchanged.inputs_digest(config, data)
    # settings that change nothing in the model
    assert unchanged.inputs_digest(TrainConfig(force=True, report=False, workers=1), data) == first
    assert unchanged.inputs_digest(TrainConfig(quick=True), data) != first
    assert unchanged.inputs_digest(TrainConfig(seed=1), data) != first
    photo = next((data / "face").iterdir())
    stamp = photo.stat()
    os.utime(photo, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1_000_000))   # edited
    assert unchanged.inputs_digest(config, data) != first
    os.utime(photo, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert unchanged.inputs_digest(config, data) == first
    photo.rename(data / "not_face" / photo.name)                               # relabelled
    assert unchanged.inputs_digest(config, data) != first


def test_a_model_replaced_by_hand_is_a_change(tmp_path):
    run = RunFolder.at(tmp_path)
    run.model.write_bytes(b"model")
    run.labels.write_text("a\nb\n")
    run.write_summary({"labels": ["a", "b"], "inputs": unchanged.record(run, "d1")})
    assert unchanged.last_run_if_unchanged(run, "d1")["labels"] == ["a", "b"]
    assert unchanged.last_run_if_unchanged(run, "d2") is None
    run.model.write_bytes(b"another model")
    assert unchanged.last_run_if_unchanged(run, "d1") is None


NO_TF = """
import sys
from tfguess.cli import main
code = main(sys.argv[1:])
assert "tensorflow" not in sys.modules, "a re-run with nothing new imported TensorFlow"
sys.exit(code)
"""


@pytest.mark.slow
def test_a_rerun_with_nothing_new_does_nothing_and_imports_no_tensorflow(tmp_path):
    tf_files = tmp_path / "tf"
    shutil.copytree(DEMO_DATA, tf_files / "data")
    cli = [sys.executable, "-m", "tfguess", "-q", "train", str(tf_files), "--quick"]
    first = subprocess.run(cli, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    model = (tf_files / "model.keras").stat().st_mtime_ns
    again = subprocess.run([sys.executable, "-c", NO_TF, "-q", "train", str(tf_files), "--quick"],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "Nothing changed since the last run" in again.stdout and "--force" in again.stdout
    assert (tf_files / "model.keras").stat().st_mtime_ns == model
    assert not (tf_files / "model.previous.keras").exists()
    # other settings, --force, or a new photo: trained again
    forced = subprocess.run([*cli, "--force", "--no-report"], capture_output=True, text=True,
                            timeout=600)
    assert forced.returncode == 0 and "Nothing changed" not in forced.stdout
    assert (tf_files / "model.keras").stat().st_mtime_ns != model
    shutil.copy(DEMO_DATA / "face" / sorted(os.listdir(DEMO_DATA / "face"))[0],
                tf_files / "data" / "face" / "copy.jpg")
    added = subprocess.run([*cli, "--no-report"], capture_output=True, text=True, timeout=600)
    assert added.returncode == 0 and "Nothing changed" not in added.stdout
    summary = json.loads((tf_files / "run_summary.json").read_text())
    assert summary["inputs"]["inputs"] == unchanged.inputs_digest(TrainConfig(quick=True),
                                                                  tf_files / "data")


# --- --resize auto, measured on the photos -------------------------------------------------------

def fake_resize_choice(monkeypatch, features_of):
    """:func:`choices.choose_resize` on 60 photos of two labels, with the features each resize
    gives from ``features_of(resize, label index, photo number)``."""
    from tfguess.training import choices, extraction

    labels = ["a", "b"]
    items = [SimpleNamespace(digest=f"{i}", label=labels[i % 2], split="train") for i in range(60)]
    scan = SimpleNamespace(items=items, labels=labels)

    def extract(run, ref, backbone, items, config, progress, log):
        feats = {it.digest: features_of(ref.resize, labels.index(it.label), int(it.digest))
                 for it in items}
        return SimpleNamespace(result=SimpleNamespace(features=feats))

    monkeypatch.setattr(extraction, "extract", extract)
    spec = SimpleNamespace(name="efficientnet_lite0", input_size=224, resize="squash")
    return choices.choose_resize(None, scan, spec, "w", None, TrainConfig(), False,
                                 lambda *_: None)


def test_crop_replaces_the_backbones_own_squash_only_when_clearly_better(monkeypatch):
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(60, 8))

    def separable(label, i):
        return np.eye(8)[label] * 3 + noise[i] * 0.3

    chosen, facts = fake_resize_choice(
        monkeypatch, lambda resize, label, i: separable(label, i) if resize == "crop" else noise[i])
    assert chosen == "crop" and facts["prior"] == "squash" and facts["correct"]["crop"] == 60
    assert "sign test" in facts["rule"] and "crop alone right on" in facts["why"]
    # the same features both ways: the prior stands
    chosen, facts = fake_resize_choice(monkeypatch, lambda resize, label, i: separable(label, i))
    assert chosen == "squash" and facts["correct"] == {"squash": 60, "crop": 60}


# --- the time plan's backbone and size, measured on the photos -----------------------------------

def test_the_plan_names_the_alternatives_it_measures_and_counts_their_time(photos):
    config, chosen, said = plan(TrainConfig(), photos)
    alternatives = chosen.alternatives
    assert alternatives and "measured on your photos against" in said
    assert {(a.recipe.backbone, a.recipe.image_size) for a in alternatives}.isdisjoint(
        {(chosen.chosen.recipe.backbone, chosen.chosen.recipe.image_size)})
    assert all(a.recipe.fine_tune == chosen.chosen.recipe.fine_tune
               and a.seconds <= HEADROOM * chosen.limit for a in alternatives)
    assert chosen.chosen.choice_seconds > 0 and chosen.summary()["alternatives"]
    # what the user names is not measured: the backbone, the size, their weights; nor a Ray run
    for given in (TrainConfig(backbone="efficientnet_lite2"), TrainConfig(image_size=224),
                  TrainConfig(ray="auto"), TrainConfig(weights="w.h5")):
        _, kept, _ = plan(given, photos)
        assert kept is not None and not kept.alternatives and not kept.chosen.choice_seconds
    # an ensemble measures its second backbone on the validation photos instead
    _, two, _ = plan(TrainConfig(time_limit=3600), photos)
    assert two.second is not None and not two.alternatives


def test_measuring_the_backbone_takes_no_epoch_from_the_recipe():
    """The measurement is paid from the plan's reserve: the recipe is the one a plan without it
    chooses, and it is measured only when both fit CHOICE_HEADROOM of the budget, else the plan
    says why not."""
    from tfguess.training.plan import CHOICE_HEADROOM, choose
    from tfguess.training.throughput import Speed

    speed = Speed(extract=95.0, views=90.0, fine_tune=55.0, source="test")
    kinds = set()
    for limit in range(60, 900, 5):
        measured = choose(limit, 3000, 2400, 0, speed, choice_images=1000)
        alone = choose(limit, 3000, 2400, 0, speed)
        assert measured.chosen.recipe == alone.chosen.recipe
        assert measured.chosen.seconds == alone.chosen.seconds + measured.chosen.choice_seconds
        if measured.alternatives:
            kinds.add("measured")
            assert measured.chosen.seconds <= CHOICE_HEADROOM * limit and not measured.unmeasured
        elif measured.unmeasured:
            kinds.add("unmeasured")
            assert "more than the time limit leaves" in measured.unmeasured
            assert "not measured against" in measured.describe()
    assert kinds == {"measured", "unmeasured"}


def fake_backbone_choice(monkeypatch, photos, right_of, given=None):
    """:func:`choices.choose_planned_backbone` on the plan of ``photos`` (``given``: its config),
    with 400 training photos of two labels whose features say their label when
    ``right_of(backbone and size, photo number)``, else noise."""
    from tfguess.training import choices, extraction

    config, chosen, _ = plan(given or TrainConfig(), photos)
    labels = ["a", "b"]
    items = [SimpleNamespace(digest=f"{i}", label=labels[i % 2], split="train") for i in range(400)]
    noise = np.random.default_rng(0).normal(size=(400, 8))

    def extract(run, ref, backbone, items, config, progress, log):
        name = f"{ref.name.replace('efficientnet_', '')} at {ref.input_size} px"
        feats = {it.digest: np.eye(8)[labels.index(it.label)] * 3 + noise[int(it.digest)] * 0.3
                 if right_of(name, int(it.digest)) else noise[int(it.digest)] for it in items}
        return SimpleNamespace(result=SimpleNamespace(features=feats))

    monkeypatch.setattr(extraction, "extract", extract)
    return chosen, choices.choose_planned_backbone(
        None, SimpleNamespace(items=items, labels=labels), "squash", config, chosen, False,
        lambda *_: None)


def test_another_backbone_replaces_the_plans_only_when_clearly_better(monkeypatch, photos):
    def prior_right(name, i, prior="lite0 at 288 px"):
        return name == prior or i % 10 == 0

    before, (config, after, facts) = fake_backbone_choice(monkeypatch, photos, prior_right)
    assert facts["prior"] == facts["chosen"] == "lite0 at 288 px" and after is before
    assert config.backbone == "efficientnet_lite0" and config.image_size == 288
    assert "sign test" in facts["rule"] and facts["correct"]["lite0 at 288 px"] == 400
    # an alternative right on every photo where the prior is right on 80 %: it replaces the prior,
    # and the run's config and plan become its recipe (the user's settings kept)
    given = TrainConfig(fine_tune_epochs=4)
    before, (config, after, facts) = fake_backbone_choice(
        monkeypatch, photos, lambda name, i: name == "lite2 at 260 px" or i % 5 != 0, given)
    assert facts["chosen"] == "lite2 at 260 px" and "lite0 at 288 px alone on 0)" in facts["why"]
    assert (config.backbone, config.image_size, config.fine_tune_epochs) == ("efficientnet_lite2", None, 4)
    assert after.chosen.recipe.backbone == "efficientnet_lite2" and after.chosen in before.alternatives
    assert before.chosen in after.alternatives
    # one photo in a hundred more: chance, the prior stands
    _, (_, _, facts) = fake_backbone_choice(
        monkeypatch, photos, lambda name, i: name == "lite2 at 260 px" or i % 100 != 0)
    assert facts["chosen"] == "lite0 at 288 px"


@pytest.mark.slow
def test_a_run_whose_photos_favour_another_backbone_trains_and_saves_that_one(tmp_path, monkeypatch):
    """The run follows the measurement: its features, fine-tuning and saved model are the winning
    backbone's, and the summary and the report's decisions say so. The measurement's result is
    forced (the prior wrong on every photo out of fold); everything after it is real."""
    import tfguess.training.plan as plan_module
    import tfguess.training.throughput as throughput
    from tfguess.engine.model import read_meta
    from tfguess.training import choices
    from tfguess.training.summary import decisions
    from tfguess.training.train import train

    quick = tuple(dataclasses.replace(r, image_size=224 if r.backbone.endswith("lite0") else r.image_size,
                                      fine_tune_epochs=2, fine_tune_blocks=1, base=None)
                  for r in plan_module.RECIPES)
    monkeypatch.setattr(plan_module, "RECIPES", quick)
    monkeypatch.setattr(throughput, "busy_cores", lambda *a, **k: 0.0)
    measured = choices.right_out_of_fold

    def lite2_wins(feats, items, labels, seed):
        right, n = measured(feats, items, labels, seed)
        if right and "lite2 at 260 px" in right:
            right = {k: np.full(n, k == "lite2 at 260 px") for k in right}
        return right, n

    monkeypatch.setattr(choices, "right_out_of_fold", lite2_wins)
    tf_files = tmp_path / "tf"
    shutil.copytree(DEMO_DATA, tf_files / "data")
    result = train(tf_files, TrainConfig(one_backbone=True, report=False), progress=False,
                   log=lambda *_: None)
    summary = result.summary
    assert summary["auto_backbone"]["prior"] == "lite0 at 224 px"
    assert summary["auto_backbone"]["chosen"] == "lite2 at 260 px"
    assert summary["time_limit"]["recipe"].startswith("lite2, 260 px")
    meta = read_meta(result.model_path)["backbone"]
    assert (meta["name"], meta["input_size"]) == ("efficientnet_lite2", 260)
    assert summary["bottleneck_key"] and result.metrics["test"]["n"] > 0
    made = {d["what"]: d for d in decisions(summary)}
    assert made["backbone"]["chosen"] == "lite2 at 260 px"
    assert "measured on the photos" in made["recipe"]["why"]


# --- --head-only: the review page's Re-train ------------------------------------------------------

@pytest.mark.slow
def test_head_only_keeps_a_fine_tuned_backbone_and_needs_no_tensorflow(tmp_path):
    """After photos moved between labels, ``--head-only`` fits the head again on the cached
    features of the model's own fine-tuned backbone: no TensorFlow, the backbone kept."""
    from tfguess.engine.model import read_meta

    tf_files = tmp_path / "tf"
    shutil.copytree(DEMO_DATA, tf_files / "data")
    first = subprocess.run([sys.executable, "-m", "tfguess", "-q", "train", str(tf_files), "--quick",
                            "--fine-tune", "--fine-tune-blocks", "1", "--fine-tune-epochs", "1",
                            "--no-report"], capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr
    before = read_meta(tf_files / "model.keras")["backbone"]
    assert "fine-tuned" in before["weights_source"]
    moved = sorted((tf_files / "data" / "face").iterdir())[0]
    moved.rename(tf_files / "data" / "not_face" / moved.name)
    again = subprocess.run([sys.executable, "-c", NO_TF, "-q", "train", str(tf_files), "--head-only",
                            "--no-report"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "--head-only: the head again on the features" in again.stdout
    after = read_meta(tf_files / "model.keras")["backbone"]
    assert (after["weights_id"], after["weights_source"]) == (before["weights_id"],
                                                              before["weights_source"])
    summary = json.loads((tf_files / "run_summary.json").read_text())
    # every feature from the cache (the blank image the demo data holds is only read again)
    assert summary["features"]["computed"] == len(summary["skipped"]) == 1
    assert summary["fine_tune"] is None
    rows = {p: label for rows in summary["splits"].values() for p, label, _ in rows}
    assert rows[f"data/not_face/{moved.name}"] == "not_face"


def test_each_decision_is_recorded_with_its_evidence():
    from tfguess.curate.report.render import _decisions
    from tfguess.training.summary import decisions

    summary = {
        "config": {"quick": False},
        "time_limit": {"limit_s": 300.0, "recipe": "lite0, 288 px, 2 views, fine-tuning 6 blocks x "
                       "10 epochs", "estimated_s": 169.2},
        "timings_s": {"total": 110.4},
        "auto_backbone": {"prior": "lite0 at 288 px", "chosen": "lite0 at 288 px",
                          "why": "out of fold, right of 572 photos: lite0 at 288 px 470, lite2 at 260 px 471"},
        "auto_resize": {"chosen": "crop", "why": "out of fold, squash right on 470 of 572, crop on 483"},
        "backbone": {"resize": "crop"},
        "fine_tune": {"weights_id": "ft-1", "history": [{"epoch": 0, "val_accuracy": 0.8},
                                                         {"epoch": "average", "val_accuracy": 0.9}]},
        "precision": {"guess": "float32", "int8_check": {"why": "int8's top label is float32's on 98.0%"}},
    }
    made = {d["what"]: d for d in decisions(summary)}
    assert made["recipe"]["chosen"].startswith("lite0, 288 px") and "took 110 s" in made["recipe"]["why"]
    assert "measured on the photos" not in made["recipe"]["why"]
    assert made["backbone"] == {"what": "backbone", "chosen": "lite0 at 288 px",
                                "why": "out of fold, right of 572 photos: lite0 at 288 px 470, lite2 at 260 px 471"}
    assert made["resize"] == {"what": "resize", "chosen": "crop",
                              "why": "out of fold, squash right on 470 of 572, crop on 483"}
    assert made["fine-tuning"]["chosen"] == "the fine-tuned backbone"
    assert "0.8 before fine-tuning, 0.9 after" in made["fine-tuning"]["why"]
    assert made["guessing"]["chosen"] == "float32" and "98.0%" in made["guessing"]["why"]
    html = "\n".join(_decisions(decisions(summary)))
    assert "How it was trained" in html and "out of fold" in html and "guessing" not in html
    moved = decisions({**summary, "auto_backbone": {"prior": "lite0 at 288 px", "chosen": "lite2 at 260 px"}})
    assert "its backbone and size measured on the photos" in moved[0]["why"]
    short = {**summary, "auto_backbone": None,
             "time_limit": {**summary["time_limit"], "unmeasured": "not measured against x: y"}}
    assert {"what": "backbone", "chosen": "the plan's",
            "why": "not measured against x: y"} in decisions(short)
    quick = decisions({"config": {"quick": True}, "mode": "frozen+views", "backbone": {"resize": "squash"}})
    assert quick[0] == {"what": "recipe", "chosen": "frozen+views", "why": "--quick"}


def test_no_second_fine_tuning_without_a_validation_split_or_the_time_for_it():
    """The fine-tuning runs again on the held-out photos too only when there are validation
    photos and its estimate (the first fine-tuning's views and epochs, measured, scaled by the
    photos, the test photos' among them unless --hold-out-test) fits what is left: the same
    schedule, never a shorter one."""
    import time

    from tfguess.training.refit import refit, refit_epochs

    first = SimpleNamespace(history=[{"epoch": e} for e in range(11)], views_seconds=20.0)
    seconds = {"fine_tune": 90.0, "fine_tune_features": 5.0}   # 7 s an epoch, 20 s of views
    config = TrainConfig(time_limit=300)
    # 100 training + 10 validation photos: 1.1 x (20 + 7 e) + 5 + 10 s
    assert refit_epochs(first, seconds, 100, 10, config, 1000.0) == (10, pytest.approx(114.0))
    assert refit_epochs(first, seconds, 100, 10, config, 100.0) == (0, pytest.approx(114.0))

    features = SimpleNamespace(ref=SimpleNamespace(precision="float32"))

    def data(n_val, n_test=0):
        return SimpleNamespace(splits={"train": [1] * 100, "validation": [1] * n_val,
                                       "test": [1] * n_test}, usable=[1] * (100 + n_val + n_test))

    said = []
    started = time.perf_counter() - 199.5        # 100 s left of the limit
    out = refit(None, None, config, None, None, (features, data(0), first), started, seconds,
                False, said.append)
    assert out.fine_tuned is None and out.summary == {"done": False, "why": "no validation split"}
    out = refit(None, None, config, None, None, (features, data(10), first), started, seconds,
                False, said.append)
    assert out.fine_tuned is None and out.summary["why"] == "about 114 s needed, 100 s left of the time limit"
    assert said[-1] == "Not fine-tuned again on the held-out photos too: " + out.summary["why"]
    # 10 test photos more to train on: 1.2 x (20 + 7 x 10) + 5 + 10 s; kept out, 114 s again
    out = refit(None, None, config, None, None, (features, data(10, 10), first), started, seconds,
                False, said.append)
    assert out.summary["why"] == "about 123 s needed, 100 s left of the time limit"
    out = refit(None, None, dataclasses.replace(config, hold_out_test=True), None, None,
                (features, data(10, 10), first), started, seconds, False, said.append)
    assert out.summary["why"] == "about 114 s needed, 100 s left of the time limit"


def test_the_figures_of_photos_a_refit_trained_on_are_the_model_before_it(monkeypatch):
    """After a refit on the held-out photos, their figures and guesses are the first model's,
    marked so in the summary and the model's description, with the words a person reads; a
    --head-only re-train on such a backbone marks its test figure as not held out."""
    import tfguess.engine.model as model_module
    from tfguess.training.evaluation import figure_note, meta_metrics
    from tfguess.training.refit import Refit, held_out_figures
    from tfguess.training.summary import before_refit

    first_test = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])      # right, wrong, right
    refitted = Refit(object(), None, None, {}, before={
        "validation": ({"accuracy": 0.5, "n": 2, "before_refit": True},
                       np.array([[0.6, 0.4], [0.6, 0.4]])),
        "test": ({"accuracy": 2 / 3, "n": 3, "before_refit": True}, first_test)})
    saved = np.array([[1.0, 0.0], [0.0, 1.0]])   # the refitted model on photos it trained on
    metrics = {"train": {"accuracy": 1.0, "n": 4}, "validation": {"accuracy": 1.0, "n": 2},
               "test": {"accuracy": 1.0, "n": 3}}
    heldout = {"validation": (["v1", "v2"], np.array([0, 1]), saved),
               "test": (["t1", "t2", "t3"], np.array([0, 1, 1]), saved[[0, 1, 1]])}
    assert held_out_figures(refitted, metrics, heldout, None)
    assert metrics["test"]["accuracy"] == pytest.approx(2 / 3) and heldout["test"][2] is first_test
    assert metrics["validation"]["accuracy"] == 0.5
    assert before_refit(metrics, heldout)["before_refit"]["test"] == {
        "digests": ["t1", "t2", "t3"], "guess": [0, 0, 1], "score": [0.9, 0.8, 0.7],
        "label_score": [0.9, 0.2, 0.7]}
    assert meta_metrics(metrics)["test"] == {"accuracy": pytest.approx(2 / 3), "n": 3,
                                             "before_refit": True}
    assert meta_metrics(metrics)["train"] == {"accuracy": 1.0, "n": 4}
    assert figure_note(metrics["test"]).startswith("measured with the model before its last refit")
    assert figure_note(metrics["train"]) == "" and before_refit(
        {"test": {"accuracy": 1.0}}, heldout) == {}

    # --head-only: the model's description says whether its backbone trained on the test photos
    for saw in (True, False):
        monkeypatch.setattr(model_module, "read_meta",
                            lambda path, saw=saw: {"backbone": {"fine_tuned_on_test": saw}})
        metrics = {"test": {"accuracy": 1.0, "n": 3}}
        assert held_out_figures(None, metrics, heldout, Path("model.keras")) is saw
        assert metrics["test"].get("seen_by_backbone", False) is saw
    assert "not a held-out figure" in figure_note(metrics["test"] | {"seen_by_backbone": True})


@pytest.mark.slow
def test_the_second_fine_tuning_is_the_model_the_file_holds(tmp_path):
    """Under a time plan the fine-tuning runs again on the training and validation photos; the
    model file then holds that backbone: its Keras model and the cached engine guessing runs agree,
    and the validation figures are the first model's."""
    from tfguess.data.images import load_image
    from tfguess.engine.model import load_classifier, read_meta
    from tfguess.guess.predict import Predictor
    from tfguess.training.train import train

    tf_files = tmp_path / "tf"
    shutil.copytree(DEMO_DATA, tf_files / "data")
    config = TrainConfig(report=False, fine_tune=True, fine_tune_blocks=1, fine_tune_epochs=1,
                         time_limit=600)
    result = train(tf_files, config, progress=False, log=lambda *_: None)
    again, splits = result.summary["refit"], result.summary["splits"]
    assert again["done"] and again["test_photos"] == len(splits["test"]) > 0
    assert again["photos"] == sum(len(splits[s]) for s in ("train", "validation", "test"))
    first = result.summary["fine_tune"]["weights_id"]
    assert again["weights_id"] != first
    meta = read_meta(tf_files / "model.keras")
    assert meta["backbone"]["weights_id"] == again["weights_id"]
    assert meta["backbone"]["fine_tuned_on_test"] and meta["metrics"]["test"]["before_refit"]
    # the held-out figures are the first model's, said so, with its guesses for the report
    assert result.metrics["validation"]["accuracy"] == again["validation_accuracy_before"]
    assert result.metrics["test"]["accuracy"] == again["test_accuracy_before"]
    assert result.metrics["test"]["before_refit"] and result.metrics["validation"]["before_refit"]
    guesses = result.summary["before_refit"]["test"]
    assert guesses["digests"] == [digest for *_, digest in splits["test"]]
    right = sum(g == result.labels.index(label) for g, (_, label, _) in zip(
        guesses["guess"], splits["test"], strict=True))
    assert right / len(splits["test"]) == pytest.approx(result.metrics["test"]["accuracy"])
    classifier = load_classifier(tf_files)
    size = classifier.input_size
    paths = sorted((DEMO_DATA / "face").glob("*.png"))[:3] + sorted(
        (DEMO_DATA / "not_face").glob("*.png"))[:3]
    pixels = np.stack([load_image(p, size, classifier.resize) for p in paths]).astype(np.float32)
    keras_probs = np.asarray(classifier.keras_model(pixels, training=False))
    engine = Predictor.load(tf_files, precision="float32", log=lambda *_: None)
    np.testing.assert_allclose(engine.probabilities(pixels), keras_probs, atol=1e-4)


def test_fewer_fine_tuning_epochs_than_the_plans_minimum_are_kept(photos):
    config, chosen, said = plan(TrainConfig(fine_tune=True, fine_tune_epochs=1), photos)
    assert chosen is not None and config.fine_tune_epochs == 1 and config.fine_tune
    assert "kept from your settings: fine_tune=True, fine_tune_epochs=1" in said


def test_a_ray_run_plans_without_fine_tuning(photos):
    config, chosen, _ = plan(TrainConfig(ray="auto"), photos)
    assert chosen is not None and not config.fine_tune and not chosen.chosen.recipe.fine_tune
