"""Shared fixtures: the repo's demo data, the shared hymenoptera data set, trained models."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

pytest_plugins = ["pytester"]   # tests/test_architecture.py runs the tier check on sample tests

REPO = Path(__file__).resolve().parents[1]
DEMO_DATA = REPO / "tf_files" / "data"
TEST_DATA = REPO / "test_data"
HYMENOPTERA = REPO.parent / "shared" / "datasets" / "hymenoptera"
ARTIFACTS = REPO / "test-artifacts"


# The slow tier is marked explicitly: `pytestmark = pytest.mark.slow` in a module whose tests all
# train or load a model, `@pytest.mark.slow` on a single test. `pytest -m "not slow"` runs the
# rest (logic, metrics, config, CLI errors) in well under 30 s. A test without the mark that
# takes longer than FAST_TEST_BUDGET_S (setup + call) fails, saying to mark it: a new heavy
# fixture can no longer land in the fast tier unseen.
FAST_TEST_BUDGET_S = float(os.environ.get("TFGUESS_FAST_TEST_BUDGET_S", "10"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "setup":
        item.stash[_setup_seconds] = report.duration
    if report.when != "call" or report.failed or item.get_closest_marker("slow"):
        return
    seconds = item.stash.get(_setup_seconds, 0.0) + report.duration
    if seconds > FAST_TEST_BUDGET_S:
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} took {seconds:.1f} s without @pytest.mark.slow: the "
                           f"fast tier's budget is {FAST_TEST_BUDGET_S:g} s a test; mark it slow "
                           "or make it faster")


_setup_seconds = pytest.StashKey[float]()


def demo_inbox(root: Path, in_data: int = 4, in_pile: slice = slice(40, 52),
               features: bool = True) -> tuple[Path, Path]:
    """``root/tf`` with the first ``in_data`` demo photos of each label in ``data/`` and
    ``root/inbox`` with the ``in_pile`` ones; with ``features``, a feature cache that holds every
    demo photo (vectors that separate the two labels), so no backbone runs and a photo put into
    the inbox later has its features too. (tests/curate/test_inbox.py keeps its own cache of
    the photos it uses: its expected orders and scores are those of its vectors.)"""
    import hashlib

    import numpy as np

    tf_files, pile = root / "tf", root / "inbox"
    pile.mkdir(parents=True)
    for label in ("face", "not_face"):
        photos = sorted((DEMO_DATA / label).iterdir())
        (tf_files / "data" / label).mkdir(parents=True)
        for p in photos[:in_data]:
            shutil.copy2(p, tf_files / "data" / label / p.name)
        for p in photos[in_pile]:
            shutil.copy2(p, pile / p.name)
    if features:
        from tfguess.core.runfolder import RunFolder
        from tfguess.curate.inbox import _backbone_source, run_config
        from tfguess.engine.bottlenecks import BottleneckCache

        run = RunFolder.at(tf_files)
        cache = BottleneckCache(run.bottlenecks, _backbone_source(run, run_config(run))[0].cache_key)
        rng = np.random.default_rng(0)
        for axis, label in enumerate(("face", "not_face")):
            for p in sorted((DEMO_DATA / label).iterdir()):
                v = rng.normal(0, 0.15, 16).astype(np.float32)
                v[axis] += 1.0
                cache.put(hashlib.sha256(p.read_bytes()).hexdigest(), v)
    return tf_files, pile


def require_shared() -> Path:
    """The hymenoptera data set: skipped when absent, a failure under CI=true."""
    if not HYMENOPTERA.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{HYMENOPTERA} is missing: CI must run the shared-data tests")
        pytest.skip(f"{HYMENOPTERA} not present")
    return HYMENOPTERA


@pytest.fixture
def photos(tmp_path, monkeypatch) -> Path:
    """A folder of 100 files in two labels (the time planner only counts them), on an idle
    machine (the planner's half-second sample of the other work is skipped)."""
    import tfguess.training.throughput as throughput

    monkeypatch.setattr(throughput, "busy_cores", lambda *a, **k: 0.0)
    for label in ("a", "b"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(50):
            (tmp_path / "data" / label / f"{i}.jpg").write_bytes(b"x")
    return tmp_path / "data"


@pytest.fixture(scope="session")
def hymenoptera() -> Path:
    return require_shared()


@pytest.fixture(scope="session")
def demo_trained(tmp_path_factory) -> Path:
    """A TF_FILES folder with a copy of the demo data, trained once for the session."""
    from tfguess.core.config import TrainConfig
    from tfguess.training.train import train

    tf_files = tmp_path_factory.mktemp("demo") / "tf_files"
    shutil.copytree(DEMO_DATA, tf_files / "data")
    # float32 guessing (no int8 engine beside it): tests compare guesses with the training
    # features; --precision auto is tested in test_speed.py.
    train(tf_files, TrainConfig(quick=True, report=False, epochs=60, precision="float32",
                                resize="squash"), progress=False,
          log=lambda *_: None)
    return tf_files


@pytest.fixture(scope="session")
def hymenoptera_trained(tmp_path_factory, hymenoptera) -> Path:
    """A TF_FILES folder trained (default settings) on hymenoptera/train, evaluated on val."""
    from tfguess.core.config import TrainConfig
    from tfguess.training.train import train

    tf_files = tmp_path_factory.mktemp("hymenoptera") / "tf_files"
    config = TrainConfig(quick=True, image_dir=str(hymenoptera / "train"), eval_dir=str(hymenoptera / "val"),
                         report=False, precision="float32")  # guess-dir == train's evaluation
    train(tf_files, config, progress=False, log=lambda *_: None)
    return tf_files


def default_sigint() -> None:
    """``preexec_fn`` for a child a test interrupts with SIGINT: a process started in the
    background by a non-interactive shell (``cmd &``) inherits SIGINT *ignored*, and Python then
    never raises KeyboardInterrupt, so the test would not test anything."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
