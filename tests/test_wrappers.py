"""The shell wrappers without Docker: argument checks, paths, and a local end-to-end run."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "tf_files"
TEST_DATA = REPO / "test_data"
WRAPPERS = ["train.sh", "guess.sh", "guessDir.sh", "export.sh", "serve.sh"]
GUESS_LINE = re.compile(r"^(\S.*) \(score = (\d\.\d{5})\)$", re.MULTILINE)


def local_env(**extra: str) -> dict[str, str]:
    """Local mode with the virtual environment running these tests (no second venv)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TFGUESS_")}
    env.update(TFGUESS_LOCAL="1", TFGUESS_VENV=sys.prefix, TQDM_DISABLE="1")
    env.update(extra)
    return env


def wrapper(name: str, *args: str | Path, cwd: Path | None = None,
            env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / name), *map(str, args)], cwd=cwd,
                          env=env or local_env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module", autouse=True)
def _installed() -> None:
    if not (Path(sys.prefix) / "bin" / "tfguess").exists():
        pytest.fail(f"tfguess is not installed in {sys.prefix}: pip install -e .")


@pytest.mark.parametrize("name", WRAPPERS)
def test_wrong_call_prints_usage_and_exits_2(name: str) -> None:
    result = wrapper(name)
    assert result.returncode == 2
    assert f"usage: bash {name} TF_FILES" in result.stderr


@pytest.mark.parametrize("name", WRAPPERS)
def test_help_exits_0(name: str) -> None:
    result = wrapper(name, "--help")
    assert result.returncode == 0
    assert "usage:" in result.stdout


def test_guessdir_needs_three_paths() -> None:
    result = wrapper("guessDir.sh", DEMO, TEST_DATA)
    assert result.returncode == 2 and "usage:" in result.stderr


def test_missing_tf_files_is_named_with_its_absolute_path(tmp_path: Path) -> None:
    result = wrapper("train.sh", "no such dir", cwd=tmp_path)
    assert result.returncode == 1
    assert f"{tmp_path}/no such dir: no such folder" in result.stderr


def test_missing_image_is_named(tmp_path: Path) -> None:
    result = wrapper("guess.sh", tmp_path, "missing.jpg", cwd=tmp_path)
    assert result.returncode == 1
    assert f"{tmp_path}/missing.jpg: no such file or folder" in result.stderr


def test_relative_path_with_space_is_resolved_and_shown(tmp_path: Path) -> None:
    work = tmp_path / "my photos"
    (work / "tf files").mkdir(parents=True)
    result = wrapper("train.sh", "tf files", "--help", cwd=work)
    assert result.returncode == 0, result.stderr
    assert f"relative path 'tf files' taken as '{work}/tf files'" in result.stderr
    assert f"running locally ({sys.prefix})" in result.stderr


def test_docker_forced_without_daemon_fails_clearly(tmp_path: Path) -> None:
    env = local_env(TFGUESS_LOCAL="", TFGUESS_DOCKER="1",
                    DOCKER_HOST=f"unix://{tmp_path}/no.sock")
    result = wrapper("train.sh", tmp_path, env=env)
    assert result.returncode == 1
    assert "TFGUESS_DOCKER=1 but no Docker daemon answers" in result.stderr


def test_no_daemon_falls_back_to_local(tmp_path: Path) -> None:
    env = local_env(TFGUESS_LOCAL="", DOCKER_HOST=f"unix://{tmp_path}/no.sock")
    result = wrapper("train.sh", tmp_path, "--help", env=env)
    assert result.returncode == 0, result.stderr
    assert "no Docker daemon answers; running locally" in result.stderr


@pytest.mark.slow
def test_local_end_to_end_in_a_path_with_spaces(tmp_path: Path) -> None:
    work = tmp_path / "my work"
    tf_files = work / "tf files"
    shutil.copytree(DEMO / "data", tf_files / "data")
    source = {p: p.read_bytes() for p in (tf_files / "data").rglob("*") if p.is_file()}

    result = wrapper("train.sh", tf_files)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Time limit 5 min 00 s: " in result.stdout   # the default: the recipe that fits 5 min
    summary = json.loads((tf_files / "run_summary.json").read_text())
    assert summary["time_limit"]["limit_s"] == 300 and summary["auto_resize"]["chosen"]
    if summary["fine_tune"] and summary["fine_tune"]["weights_id"]:   # kept: then fine-tuned again
        assert summary["refit"]["done"] or "s needed" in summary["refit"]["why"], summary["refit"]
    assert (tf_files / "model.keras").is_file()
    labels = (tf_files / "retrained_labels.txt").read_text().split()
    assert sorted(labels) == sorted(p.name for p in (DEMO / "data").iterdir() if p.is_dir())

    image = sorted(TEST_DATA.glob("*.jpg"))[0]
    result = wrapper("guess.sh", "tf files", image, cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    guesses = GUESS_LINE.findall(result.stdout)
    assert guesses and {label for label, _ in guesses} <= set(labels)
    assert all(0.0 <= float(score) <= 1.0 for _, score in guesses)

    dst = work / "sorted out"
    result = wrapper("guessDir.sh", tf_files, TEST_DATA, dst)
    assert result.returncode == 0, result.stderr[-3000:]
    copies = [p for p in dst.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"}]
    assert len(copies) == len(list(TEST_DATA.glob("*.jpg")))
    assert all(any(p.name.startswith(f"{label}-") for label in [*labels, "unknown"])
               for p in copies)
    with open(dst / "manifest.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(copies)

    result = wrapper("export.sh", tf_files, "--format", "tflite")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tf_files / "export" / "model.tflite").stat().st_size > 10_000

    after = {p: p.read_bytes() for p in (tf_files / "data").rglob("*") if p.is_file()}
    assert after == source, "the training photos were modified"


def test_serve_rejects_a_bad_port(tmp_path: Path) -> None:
    result = wrapper("serve.sh", tmp_path, "80x")
    assert result.returncode == 2 and "PORT: a number from 1 to 65535, not '80x'" in result.stderr


@pytest.mark.slow
def test_serve_locally_answers_on_loopback(demo_trained: Path) -> None:
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["bash", str(REPO / "serve.sh"), str(demo_trained), str(port)],
                            env=local_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline, page = time.monotonic() + 180, None
        while page is None and proc.poll() is None and time.monotonic() < deadline:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
            except OSError:
                time.sleep(0.5)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert page is not None and "<title>tfguess</title>" in page, out[-3000:]
    assert "running locally" in out and f"http://127.0.0.1:{port}/" in out
