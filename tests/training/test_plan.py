"""``--time-limit``: duration parsing, the recipe choice, and a run on the demo data that ends in time."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest
from conftest import DEMO_DATA

from tfguess.core.errors import ConfigError
from tfguess.training.plan import HEADROOM, RECIPES, candidates, choose, estimate, parse_duration
from tfguess.training.summary import fine_tune_hint
from tfguess.training.throughput import REFERENCE, Speed, busy_cores

SPEED = Speed(extract=95.0, views=90.0, fine_tune=55.0, source="test")


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("10m", 600), ("1h30m", 5400), ("600", 600),
                                          ("1.5h", 5400), ("2m30s", 150), (" 5M ", 300)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10x", "m", "-5m", "0s", "ten minutes", "1e9999", "0.0001s", "0.4"])
def test_a_bad_duration_is_one_config_error(text):
    with pytest.raises(ConfigError, match="invalid duration"):
        parse_duration(text)


def test_the_cli_says_a_bad_duration_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tfguess", "train", str(tmp_path), "--time-limit", "5 parsecs"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "invalid duration '5 parsecs'" in lines[0], out.stderr


def test_more_time_never_chooses_a_worse_recipe():
    values = []
    for minutes in (0.5, 1, 2, 5, 10, 20, 40, 80):
        plan = choose(minutes * 60, 650, 520, 0, SPEED)
        assert plan.chosen.seconds <= HEADROOM * minutes * 60 or not plan.fits
        values.append(plan.chosen.recipe.value)
    assert values == sorted(values)
    assert values[-1] == max(r.value for r in RECIPES)  # with time enough, the best recipe


def test_a_short_budget_gets_the_frozen_path_and_an_impossible_one_the_fastest():
    short = choose(60, 180, 144, 0, SPEED)
    assert not short.chosen.recipe.fine_tune and short.fits
    impossible = choose(5, 100_000, 80_000, 0, SPEED)
    assert not impossible.fits
    fastest = min(estimate(r, 100_000, 80_000, 0, SPEED).seconds for r in RECIPES)
    assert impossible.chosen.seconds == fastest
    assert "over the budget" in impossible.describe()


def test_fewer_epochs_fit_where_ten_do_not():
    best = max(RECIPES, key=lambda r: r.value)
    ten = estimate(best, 650, 520, 0, SPEED).seconds
    plan = choose(ten / HEADROOM * 0.85, 650, 520, 0, SPEED)  # a bit short of ten epochs
    r = plan.chosen.recipe
    assert r.fine_tune and r.fine_tune_epochs < 10
    assert [c.fine_tune_epochs for c in candidates(best)][-1] == 3


def test_estimates_grow_with_images_views_and_size():
    lite0 = next(r for r in RECIPES if r.image_size == 224 and r.views == 2 and not r.fine_tune)
    at288 = next(r for r in RECIPES if r.image_size == 288 and not r.fine_tune)
    assert estimate(lite0, 2000, 1600, 0, SPEED).seconds > estimate(lite0, 1000, 800, 0, SPEED).seconds
    assert estimate(at288, 1000, 800, 0, SPEED).seconds > estimate(lite0, 1000, 800, 0, SPEED).seconds
    slower = Speed(extract=10.0, views=9.0, fine_tune=5.0, source="test")
    assert estimate(lite0, 1000, 800, 0, slower).seconds > estimate(lite0, 1000, 800, 0, SPEED).seconds


def test_settings_map_onto_the_config():
    from tfguess.core.config import TrainConfig

    for recipe in RECIPES:
        config = TrainConfig(**recipe.settings())
        assert config.fine_tune == recipe.fine_tune and config.views == recipe.views
        assert config.image_size in (None, 288)


def test_speed_from_history_and_from_load():
    idle = Speed.estimate(2, 0.0)
    loaded = Speed.estimate(2, 8.0)
    assert loaded.extract < idle.extract and idle.extract == pytest.approx(REFERENCE["extract"])
    # two cores busy elsewhere leave this run half of them
    assert Speed.estimate(2, 2.0).extract == pytest.approx(REFERENCE["extract"] / 2)
    summary = {"backbone": {"name": "efficientnet_lite0", "input_size": 224},
               "features": {"computed": 200}, "timings_s": {"features": 4.0},
               "fine_tune": {"images_per_second": 40.0, "cached_views": 10}}
    measured = Speed.estimate(2, 8.0, summary)
    assert measured.extract == pytest.approx(50.0) and measured.fine_tune == pytest.approx(40.0)
    assert "last run" in measured.source


def test_busy_cores_sees_a_busy_core():
    """The planner's view of the machine: another process spinning on a core shows up now,
    not a minute later as in the load average."""
    import os

    if not os.path.exists("/proc/stat"):
        assert busy_cores() is None
        return
    quiet = busy_cores(0.3)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy = busy_cores(0.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert 0.0 <= quiet <= os.cpu_count()
    assert busy >= 0.7, f"a spinning process and {busy:.2f} busy cores (before: {quiet:.2f})"


def test_the_hint_only_when_the_features_are_weak():
    assert fine_tune_hint(0.99, 0.97, 500, 400, SPEED) is None
    hint = fine_tune_hint(0.99, 0.86, 500, 400, SPEED)
    assert "--fine-tune" in hint and "--time-limit" in hint and "about" in hint


@pytest.mark.slow
def test_time_limit_on_the_demo_data_ends_in_time(tmp_path):
    tf_files = tmp_path / "tf"
    shutil.copytree(DEMO_DATA, tf_files / "data")
    limit = 75
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "tfguess", "-q", "train", str(tf_files), "--no-report",
                          "--time-limit", f"{limit}s"], capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t
    assert out.returncode == 0, out.stderr
    plan = out.stdout.splitlines()[0]
    assert plan.startswith("Time limit 1 min 15 s: ") and "estimated" in plan, out.stdout
    if "over the budget" in plan:  # the machine's load leaves too little for any recipe
        pytest.skip(f"the plan says no recipe fits here: {plan}")
    assert seconds <= 1.1 * limit, f"took {seconds:.0f} s for a limit of {limit} s\n{out.stdout}"
    import json

    summary = json.loads((tf_files / "run_summary.json").read_text())
    assert summary["time_limit"]["limit_s"] == limit and summary["time_limit"]["recipe"]
