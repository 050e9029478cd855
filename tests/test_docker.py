"""The Docker launcher: unit checks without an engine, and the wrappers end to end through a
real engine, run as a non-root user on a copy of the demo data in a path with a space.

The engine tests need a running Docker engine and the base image TFGUESS_BASE_IMAGE (default
tfguess-base:bookworm, made by `sudo bash scripts/docker-engine.sh start`), and root to create
the test user. Without them they are skipped, or fail when CI=true.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import default_sigint
from packaging.requirements import Requirement

from tfguess import docker as launcher

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "tf_files"
TEST_DATA = REPO / "test_data"
BASE_IMAGE = os.environ.get("TFGUESS_BASE_IMAGE", "tfguess-base:bookworm")
IMAGE = os.environ.get("TFGUESS_IMAGE", "tfguess:latest")
TEST_USER = "tfguess-test"
WRAPPERS = ["train.sh", "guess.sh", "guessDir.sh", "export.sh", "serve.sh"]
GUESS_LINE = re.compile(r"^(\S.*) \(score = (\d\.\d{5})\)$", re.MULTILINE)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --- without an engine ---------------------------------------------------------------------

# The pin file of each image architecture, and the marker values of its Linux.
PIN_FILES = {"requirements-docker.txt": "x86_64", "requirements-docker-arm64.txt": "aarch64"}


@pytest.mark.parametrize("pin_file", PIN_FILES)
def test_pinned_requirements_cover_every_dependency(pin_file: str) -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pinned = {}
    for line in (REPO / pin_file).read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pinned[canonical(name)] = version
    env = {"sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
           "platform_machine": PIN_FILES[pin_file], "python_version": "3.11", "extra": ""}
    applicable = 0
    for spec in project["dependencies"] + project["optional-dependencies"]["export"] + \
            project["optional-dependencies"]["serve"]:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate(env):
            assert canonical(req.name) not in pinned or req.name == "tensorflow", (
                f"{req.name} is pinned in {pin_file} but not a dependency on that platform")
            continue
        applicable += 1
        assert canonical(req.name) in pinned, f"{req.name} is not pinned in {pin_file}"
        assert req.specifier.contains(pinned[canonical(req.name)], prereleases=True), (
            f"{req.name}=={pinned[canonical(req.name)]} does not satisfy {spec}: "
            "run scripts/pin-docker-requirements.py")
    assert applicable >= 15


def test_build_context_holds_only_what_the_image_needs() -> None:
    files = set(launcher._context_files(REPO))
    assert {"Dockerfile", "pyproject.toml", "requirements-docker.txt",
            "requirements-docker-arm64.txt", "src/tfguess/cli.py", "src/tfguess/docker.py"} <= files
    assert not any(f.startswith((".venv", ".git/", "tf_files", "tests", "test_data"))
                   for f in files)
    assert not any("__pycache__" in f for f in files)


def test_launcher_does_not_import_tensorflow() -> None:
    code = "import sys, tfguess.docker; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_unreachable_daemon_gives_a_clear_error(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    with pytest.raises(launcher.DockerError, match=r"(?s)does not answer.*TFGUESS_LOCAL=1"):
        launcher.connect()
    (tmp_path / "tf").mkdir()
    assert launcher.main(["run", "--", "train", str(tmp_path / "tf")]) == 1


def test_path_arguments_become_absolute_mounts(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a b").mkdir()
    (tmp_path / "w.bin").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    args, mounts = launcher.path_arguments(
        ["guess", "a b", "--top-k", "3", "--weights=w.bin", "--json"])
    assert args == ["guess", f"{tmp_path}/a b", "--top-k", "3", f"--weights={tmp_path}/w.bin",
                    "--json"]
    assert [m.path for m in mounts] == [tmp_path / "a b", tmp_path / "w.bin"]
    assert not any(m.writable for m in mounts)


def test_mounts_are_checked(tmp_path: Path) -> None:
    with pytest.raises(launcher.DockerError, match="no such file or folder"):
        launcher.resolve_mounts([launcher.HostPath(tmp_path / "missing")])
    with pytest.raises(launcher.DockerError, match="hide the image"):
        launcher.resolve_mounts([launcher.HostPath(Path("/usr/share"))])
    merged = launcher.resolve_mounts([launcher.HostPath(tmp_path),
                                      launcher.HostPath(tmp_path, writable=True)])
    assert merged == [launcher.HostPath(tmp_path, writable=True)]


def test_build_args_skip_local_indexes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "file:///opt/pypi/simple")
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example/simple")
    monkeypatch.setenv("TFGUESS_BASE_IMAGE", "debian-python:3.11")
    args = launcher.host_build_args()
    assert args["PIP_INDEX_URL"] == "https://mirror.example/simple"
    assert "PIP_EXTRA_INDEX_URL" not in args
    assert args["BASE_IMAGE"] == "debian-python:3.11"


class FakeImages:
    def __init__(self, labels: dict[str, str] | None) -> None:
        self.labels = labels

    def get(self, name: str) -> object:
        if self.labels is None:
            raise launcher.ImageNotFound(name)
        return type("Image", (), {"labels": self.labels})()


@pytest.mark.parametrize(("labels", "builds"), [
    (None, True),                                          # missing
    ({launcher.SOURCE_LABEL: "0" * 16}, True),             # built from other sources
    ({launcher.SOURCE_LABEL: launcher.source_hash()}, False),
    ({}, False),                                           # not built by the launcher
])
def test_image_is_built_when_missing_or_outdated(labels: dict[str, str] | None, builds: bool,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    built = []
    monkeypatch.setattr(launcher, "build_image", lambda client, image, **kw: built.append(image))
    client = type("Client", (), {"images": FakeImages(labels)})()
    launcher.ensure_image(client, "tfguess:x")
    assert built == (["tfguess:x"] if builds else [])


# --- through a real engine -----------------------------------------------------------------

def unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (required under CI=true)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def engine() -> Iterator[object]:
    try:
        client = launcher.connect()
    except launcher.DockerError as exc:
        unavailable(f"no Docker engine: {exc}")
    try:
        client.images.get(BASE_IMAGE)
    except Exception:  # noqa: BLE001 - any failure means the base is not usable
        unavailable(f"base image {BASE_IMAGE} missing: sudo bash scripts/docker-engine.sh start")
    if os.geteuid() != 0:
        unavailable("creating the test user needs root")
    yield client


@pytest.fixture(scope="module")
def docker_user(engine: object) -> tuple[int, int]:
    """A non-root user that may use the Docker socket."""
    if subprocess.run(["id", TEST_USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--create-home", TEST_USER], check=True)
    sock = (os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock").removeprefix("unix://")
    group = subprocess.run(["stat", "-c", "%G", sock], capture_output=True, text=True,
                           check=True).stdout.strip()
    if group == "root":
        unavailable(f"the socket {sock} belongs to group root; start the engine with "
                    "scripts/docker-engine.sh (group docker)")
    subprocess.run(["usermod", "-aG", group, TEST_USER], check=True)
    ids = subprocess.run(["id", "-u", TEST_USER], capture_output=True, text=True, check=True)
    gid = subprocess.run(["id", "-g", TEST_USER], capture_output=True, text=True, check=True)
    return int(ids.stdout), int(gid.stdout)


@pytest.fixture(scope="module")
def built(engine: object, request: pytest.FixtureRequest) -> str:
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "tfguess.docker", "build", "--image", IMAGE,
         "--base-image", BASE_IMAGE], cwd=REPO, capture_output=True, text=True, timeout=3000)
    elapsed = time.monotonic() - start
    capmanager = request.config.pluginmanager.getplugin("capturemanager")
    with capmanager.global_and_fixture_disabled():
        print(f"\n[docker stage] image build ({IMAGE} on {BASE_IMAGE}): {elapsed:.1f} s",
              flush=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return IMAGE


@pytest.fixture(scope="module")
def user_repo(docker_user: tuple[int, int]) -> Iterator[Path]:
    """The repository, or a copy of what the wrappers need when the test user cannot read it."""
    readable = subprocess.run(["runuser", "-u", TEST_USER, "--", "test", "-r",
                               str(REPO / "scripts" / "common.sh")]).returncode == 0
    if readable:
        yield REPO
        return
    copy = Path(tempfile.mkdtemp(prefix="tfguess-repo-"))
    for name in [*WRAPPERS, "Dockerfile", ".dockerignore", "pyproject.toml", "README.md",
                 "requirements-docker.txt", "requirements-docker-arm64.txt"]:
        shutil.copy2(REPO / name, copy / name)
    for name in ["scripts", "src"]:
        shutil.copytree(REPO / name, copy / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    copy.chmod(0o755)
    yield copy
    shutil.rmtree(copy, ignore_errors=True)


@pytest.fixture(scope="module")
def workdir(docker_user: tuple[int, int]) -> Iterator[Path]:
    """A copy of the demo data under /tmp/'tfguess docker XXXX'/, owned by the test user."""
    root = Path(tempfile.mkdtemp(prefix="tfguess docker "))
    shutil.copytree(DEMO / "data", root / "tf files" / "data")
    shutil.copytree(TEST_DATA, root / "test data")
    subprocess.run(["chown", "-R", f"{docker_user[0]}:{docker_user[1]}", str(root)], check=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def as_user(request: pytest.FixtureRequest, label: str, script: str, *args: str | Path,
            cwd: Path) -> subprocess.CompletedProcess:
    repo = request.getfixturevalue("user_repo")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TFGUESS_")}
    env.update(TFGUESS_DOCKER="1", TFGUESS_IMAGE=IMAGE, TQDM_DISABLE="1")
    start = time.monotonic()
    result = subprocess.run(
        ["runuser", "-u", TEST_USER, "--", "bash", str(repo / script), *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    capmanager = request.config.pluginmanager.getplugin("capturemanager")
    with capmanager.global_and_fixture_disabled():
        print(f"\n[docker stage] {label}: {time.monotonic() - start:.1f} s", flush=True)
    assert f"running in Docker (image {IMAGE})" in result.stderr, result.stderr[-3000:]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def assert_owned_by(root: Path, uid: int) -> None:
    wrong = [p for p in [root, *root.rglob("*")] if p.lstat().st_uid != uid]
    assert not wrong, f"not owned by uid {uid}: {wrong[:5]}"


@pytest.fixture(scope="module")
def trained(built: str, workdir: Path, docker_user: tuple[int, int],
            request: pytest.FixtureRequest) -> Path:
    tf_files = workdir / "tf files"
    as_user(request, "train.sh", "train.sh", tf_files, cwd=workdir)
    return tf_files


@pytest.mark.docker
@pytest.mark.slow
def test_train_through_docker(trained: Path, docker_user: tuple[int, int]) -> None:
    assert (trained / "model.keras").stat().st_size > 10_000
    summary = json.loads((trained / "run_summary.json").read_text())
    assert summary["time_limit"]["limit_s"] == 300   # the same default as the local command
    labels = (trained / "retrained_labels.txt").read_text().split()
    assert sorted(labels) == sorted(p.name for p in (DEMO / "data").iterdir() if p.is_dir())
    assert_owned_by(trained, docker_user[0])


@pytest.mark.docker
@pytest.mark.slow
def test_guess_through_docker_with_relative_paths(trained: Path, workdir: Path,
                                                  request: pytest.FixtureRequest) -> None:
    image = sorted((workdir / "test data").glob("*.jpg"))[0]
    result = as_user(request, "guess.sh", "guess.sh", "tf files",
                     f"test data/{image.name}", cwd=workdir)
    assert f"relative path 'tf files' taken as '{workdir}/tf files'" in result.stderr
    labels = set((trained / "retrained_labels.txt").read_text().split())
    guesses = GUESS_LINE.findall(result.stdout)
    assert guesses and {label for label, _ in guesses} <= labels


@pytest.mark.docker
@pytest.mark.slow
def test_engine_cache_persists_between_docker_runs(trained: Path, workdir: Path,
                                                   request: pytest.FixtureRequest) -> None:
    """The converted engine lives in a host folder mounted into every container: only the first
    guess.sh after the cache is emptied converts the backbone, or, when the model carries its
    engine (the int8 one of ``--precision auto`` on a CPU with int8 dot products), none does:
    the engine is copied out of the model file into the cache."""
    import pwd
    import zipfile

    from tfguess.engine.model import ENGINE_MEMBER

    with zipfile.ZipFile(trained / "model.keras") as archive:
        carried = ENGINE_MEMBER in archive.namelist()
    cache = Path(pwd.getpwnam(TEST_USER).pw_dir) / ".cache" / "tfguess" / "docker"
    assert list((cache / "engines").glob("*.tflite")), "train.sh left no engine in the cache"
    shutil.rmtree(cache / "engines")
    image = sorted((workdir / "test data").glob("*.jpg"))[0]
    times = []
    for run in ("first", "second"):
        start = time.monotonic()
        result = as_user(request, f"guess.sh ({run}, engine cache {'empty' if run == 'first' else 'kept'})",
                         "guess.sh", trained, image, cwd=workdir)
        times.append(time.monotonic() - start)
        converted = "Converting the backbone" in result.stdout + result.stderr
        assert converted == (run == "first" and not carried), result.stdout + result.stderr
        assert list((cache / "engines").glob("*.tflite")), "the engine is not back in the cache"
    if not carried:
        assert times[1] < times[0]


@pytest.mark.docker
@pytest.mark.slow
def test_guess_dir_through_docker(trained: Path, workdir: Path, docker_user: tuple[int, int],
                                  request: pytest.FixtureRequest) -> None:
    src, dst = workdir / "test data", workdir / "sorted out"
    before = sorted(p.name for p in src.iterdir())
    as_user(request, "guessDir.sh", "guessDir.sh", trained, src, dst, cwd=workdir)
    labels = [*(trained / "retrained_labels.txt").read_text().split(), "unknown"]
    copies = [p for p in dst.iterdir() if p.name != "manifest.csv"]
    assert len(copies) == len(before)
    assert all(any(p.name.startswith(f"{label}-") for label in labels) for p in copies)
    assert (dst / "manifest.csv").is_file()
    assert sorted(p.name for p in src.iterdir()) == before
    assert_owned_by(workdir, docker_user[0])


@pytest.mark.docker
@pytest.mark.slow
def test_export_through_docker(trained: Path, workdir: Path, docker_user: tuple[int, int],
                               request: pytest.FixtureRequest) -> None:
    as_user(request, "export.sh", "export.sh", trained, "--format", "tflite", cwd=workdir)
    assert (trained / "export" / "model.tflite").stat().st_size > 10_000
    assert_owned_by(trained, docker_user[0])


@pytest.mark.slow
@pytest.mark.docker
def test_exit_status_is_propagated(built: str, tmp_path: Path) -> None:
    # argparse in the container exits with 2 on an unknown option
    status = launcher.run_in_docker(["train", str(tmp_path), "--no-such-option"], image=built)
    assert status == 2


@pytest.mark.docker
@pytest.mark.slow
def test_ctrl_c_stops_and_removes_the_container(built: str, engine, tmp_path: Path) -> None:
    tf_files = tmp_path / "tf_files"
    shutil.copytree(DEMO / "data", tf_files / "data")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TFGUESS_")}
    env.update(TFGUESS_DOCKER="1", TFGUESS_IMAGE=built)
    proc = subprocess.Popen(["bash", str(REPO / "train.sh"), str(tf_files)], env=env,
                            preexec_fn=default_sigint,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    mounted = str(tf_files)

    def ours() -> list:
        return [c for c in engine.containers.list(all=True)
                if any(m.get("Source") == mounted for m in c.attrs.get("Mounts", []))]

    deadline = time.monotonic() + 120
    while not ours() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ours(), "the container did not start"
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted, stopping the container" in err
    assert not ours(), "the container was left behind"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening_addresses(port: int) -> set[str]:
    """The local addresses that listen on ``port`` (read from ``ss``; no traffic is sent)."""
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True,
                         check=True).stdout
    return {line.split()[3].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()}


@pytest.mark.docker
@pytest.mark.slow
def test_serve_through_docker_answers_on_loopback_only(trained: Path, engine) -> None:
    import json
    import urllib.error
    import urllib.request
    import uuid

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TFGUESS_")}
    env.update(TFGUESS_DOCKER="1", TFGUESS_IMAGE=IMAGE)
    proc = subprocess.Popen(["bash", str(REPO / "serve.sh"), str(trained), str(port)], env=env,
                            preexec_fn=default_sigint,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline, page = time.monotonic() + 300, None
        while page is None and proc.poll() is None and time.monotonic() < deadline:
            try:
                page = urllib.request.urlopen(url + "/", timeout=5).read().decode()
            except OSError:
                time.sleep(1)
        assert page is not None, "serve.sh did not answer on 127.0.0.1"
        assert "<title>tfguess</title>" in page
        boundary = uuid.uuid4().hex
        image = (TEST_DATA / "face_090.jpg").read_bytes()
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
                f"filename=\"face_090.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()
        body += image + f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(
            url + "/api/predict", data=body, method="POST",
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
        assert answer[0]["path"] == "face_090.jpg" and answer[0]["predictions"][0]["label"] == "face"
        listening = _listening_addresses(port)
        assert listening and listening <= {"127.0.0.1"}, listening
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:  # never leave a server running behind a failed test
            proc.kill()
            for c in engine.containers.list(all=True):
                if any(m.get("Source") == str(trained) for m in c.attrs.get("Mounts", [])):
                    c.remove(force=True)
            raise
    assert f"port {port} published on 127.0.0.1 only" in out, out[-3000:]
    assert "interrupted, stopping the container" in out, out[-3000:]
