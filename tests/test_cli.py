"""The installed console script, end to end on the demo data."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import DEMO_DATA, TEST_DATA

TFGUESS = [sys.executable, "-m", "tfguess"]


def run(*args, **kwargs):
    return subprocess.run([*TFGUESS, *map(str, args)], capture_output=True, text=True, **kwargs)


@pytest.mark.slow
def test_train_guess_guess_dir_from_the_command_line(tmp_path):
    tf_files = tmp_path / "my tf files"
    shutil.copytree(DEMO_DATA, tf_files / "data")
    result = run("-q", "train", tf_files, "--quick", "--epochs", "20", "--no-report")
    assert result.returncode == 0, result.stderr
    assert "Accuracy" in result.stdout
    assert (tf_files / "model.keras").exists()
    assert (tf_files / "retrained_labels.txt").read_text() == "face\nnot_face\n"

    result = run("guess", tf_files, TEST_DATA / "face_091.jpg")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("face (score = ")

    result = run("-q", "guess-dir", tf_files, TEST_DATA, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "out").glob("*.jpg"))) == 20


@pytest.mark.slow
def test_clear_errors(tmp_path):
    result = run("guess", tmp_path, TEST_DATA / "face_091.jpg")
    assert result.returncode == 2
    assert "no trained model" in result.stderr and "tfguess train" in result.stderr
    result = run("train", tmp_path, "--backbone", "efficientnet_lite9")
    assert result.returncode == 2
    assert "efficientnet_lite" in result.stderr and "Did you mean" in result.stderr


def test_backbones_listing():
    result = run("backbones")
    assert result.returncode == 0
    assert "efficientnet_lite0" in result.stdout and "inception_v3" in result.stdout
