"""Atomic writes: an interruption at any point leaves the old file or the new one in place, and
what a killed run left behind is cleaned up by the next one (fast: no TensorFlow)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tfguess.core import fsutil


class Interrupted(BaseException):
    """Stands for Ctrl-C or a signal arriving between two steps."""


def test_keep_previous_keeps_a_whole_file_in_place_at_every_step(tmp_path, monkeypatch):
    path = tmp_path / "model.keras"
    path.write_bytes(b"old model")
    real_replace = os.replace
    seen = []

    def replace_then_interrupt(src, dst):
        seen.append(path.read_bytes())  # what a reader finds just before each rename
        real_replace(src, dst)
        seen.append(path.read_bytes())
        raise Interrupted

    monkeypatch.setattr(fsutil.os, "replace", replace_then_interrupt)
    with pytest.raises(Interrupted):  # stopped right after the first rename
        fsutil.atomic_write(path, b"new model", keep_previous=True)
    assert path.read_bytes() == b"old model" and set(seen) == {b"old model"}
    monkeypatch.setattr(fsutil.os, "replace", real_replace)
    previous = fsutil.atomic_write(path, b"new model", keep_previous=True)
    assert path.read_bytes() == b"new model"
    assert previous == tmp_path / "model.previous.keras" and previous.read_bytes() == b"old model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras", "model.previous.keras"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("old")

    def broken(tmp):
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        fsutil.atomic_write(path, broken, keep_previous=True)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_temporary_files_of_killed_runs_are_cleaned(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f".model.keras.{dead}.tmp.keras"
    stale.write_bytes(b"half a model")
    mine = fsutil.temp_path(tmp_path / "model.keras")
    mine.write_bytes(b"being written by this process")
    other = tmp_path / ".notes.txt.123.tmp.txt"
    other.write_text("not one of ours")
    removed = fsutil.clean_stale_temp_files(tmp_path, ["model.keras"])
    assert removed == [stale] and not stale.exists()
    assert mine.exists() and other.exists()


def test_publish_dir_replaces_a_folder_whole(tmp_path):
    target = tmp_path / "report"
    target.mkdir()
    (target / "index.html").write_text("old")

    def build(folder):
        folder.mkdir()
        (folder / "index.html").write_text("new")

    assert fsutil.publish_dir(build, target, keep_previous=False) is None
    assert (target / "index.html").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["report"]

    def broken(folder):
        folder.mkdir()
        raise Interrupted

    with pytest.raises(Interrupted):
        fsutil.publish_dir(broken, target)
    assert (target / "index.html").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["report"]
