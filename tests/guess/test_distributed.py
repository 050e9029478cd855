"""Bottleneck extraction and guess-dir on a local Ray instance (2 CPUs): the same features, the
same cache, the same copies and manifest as the single-process path, and a job that survives a
killed actor. Ray is optional locally and required under CI=true (tests/run.sh installs it)."""

from __future__ import annotations

import csv
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from conftest import DEMO_DATA, TEST_DATA

from tfguess.core.errors import DatasetError

QUIET = {"progress": False, "log": lambda *_: None}


def _require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("Ray is not installed: CI must run the Ray tests (pip install -e '.[ray]')")
        pytest.skip("ray[data] not installed")
    return ray


@pytest.fixture(scope="module")  # shut down before other modules' tests: no Ray threads left
def ray_local():
    ray = _require_ray()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             _node_ip_address="127.0.0.1")  # the test cluster stays on loopback
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """TF_FILES with 16 demo images per label and one truncated JPEG (a per-image failure)."""
    tf_files = tmp_path_factory.mktemp("ray") / "tf_files"
    for label in ("face", "not_face"):
        out = tf_files / "data" / label
        out.mkdir(parents=True)
        for src in sorted((DEMO_DATA / label).iterdir())[:16]:
            shutil.copy2(src, out / src.name)
    jpeg = sorted((DEMO_DATA / "face").iterdir())[0].read_bytes()
    (tf_files / "data" / "face" / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    return tf_files


def _backbone_ref():
    from tfguess.engine.backbones import get_backbone
    from tfguess.engine.features import BackboneRef

    spec = get_backbone("efficientnet_lite0")
    return spec, BackboneRef(spec.name, spec.weights_id(None), spec.input_size, spec.resize)


def _items(folder: Path):
    from tfguess.data.dataset import scan_dataset

    scan = scan_dataset(folder, min_per_label=1, decode_check=False, progress=False)
    return [(it.path, it.digest) for it in scan.items]


@pytest.mark.slow  # the offline lookup takes a few seconds
def test_s3_uri_is_parsed_and_fails_with_a_clear_message_offline(monkeypatch):
    pytest.importorskip("pyarrow")
    from tfguess.guess.distributed import list_files, resolve_filesystem

    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    uri = "s3://tfguess-no-such-bucket/photos?region=us-east-1"
    fs, path = resolve_filesystem(uri)
    assert fs.type_name == "s3" and path == "tfguess-no-such-bucket/photos"
    with pytest.raises(DatasetError, match=r"cannot list s3://tfguess-no-such-bucket/photos.*"
                                           r"Check the URI, the credentials"):
        list_files(uri)
    with pytest.raises(DatasetError, match="cannot open nosuch://x"):
        resolve_filesystem("nosuch://x")


def test_ray_missing_is_one_clear_error(monkeypatch):
    import builtins

    from tfguess.core.errors import ConfigError
    from tfguess.guess.distributed import import_ray

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ConfigError, match=r"pip install 'tfguess\[ray\]'"):
        import_ray()


@pytest.mark.slow
def test_train_on_ray_fills_the_cache_a_local_train_reuses(ray_local, small_run, tmp_path):
    from tfguess.core.config import TrainConfig
    from tfguess.engine.bottlenecks import BottleneckCache, compute_features
    from tfguess.engine.features import make_extractor
    from tfguess.training.train import train

    config = TrainConfig(quick=True, report=False, epochs=20, min_per_label=2, resize="squash")
    on_ray = train(small_run, TrainConfig(**{**config.to_dict(), "ray": "auto"}), **QUIET)
    assert on_ray.summary["features"] == {"computed": 33, "cached": 0}
    skipped = {Path(s["path"]).name: s["reason"] for s in on_ray.summary["skipped"]}

    # The same features as the single-process engine, and the same failure reason.
    spec, ref = _backbone_ref()
    local = compute_features(_items(small_run / "data"), BottleneckCache(tmp_path, ref.cache_key),
                             lambda: make_extractor(ref, spec.build, "tflite"), ref.input_size,
                             ref.resize, progress=False)
    ray_cache = BottleneckCache(small_run / "bottlenecks", ref.cache_key)
    diffs = [np.abs(ray_cache.get(d) - f).max() for d, f in local.features.items()]
    assert len(diffs) == 32 and max(diffs) <= 1e-5
    assert len(local.skipped) == 1
    assert skipped == {"cut.jpg": next(iter(local.skipped.values()))}
    assert skipped["cut.jpg"].startswith("truncated or corrupt")

    # A following local train computes nothing.
    again = train(small_run, config, **QUIET)
    assert again.summary["features"] == {"computed": 0, "cached": 33}
    assert again.labels == on_ray.labels


def _manifest(dst: Path) -> list[list[str]]:
    with open(dst / "manifest.csv", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return [[r[0], Path(r[1]).relative_to(dst).as_posix(), *r[2:]] for r in rows[1:]]


@pytest.mark.slow
def test_guess_dir_on_ray_equals_local(ray_local, small_run, tmp_path):
    from tfguess.cli import main
    from tfguess.core.config import TrainConfig
    from tfguess.guess.distributed import guess_dir_ray
    from tfguess.guess.predict import guess_dir
    from tfguess.training.train import train

    if not (small_run / "model.keras").exists():
        train(small_run, TrainConfig(quick=True, report=False, epochs=20, precision="float32"), **QUIET)
    src = tmp_path / "src"
    src.mkdir()
    for p in sorted(TEST_DATA.iterdir())[:12]:
        shutil.copy2(p, src / p.name)
        shutil.copy2(p, src / f"again-{p.name}")  # same label and score: the -N names
    (src / "notes.jpg").write_text("not a photo")
    jpeg = sorted(TEST_DATA.iterdir())[0].read_bytes()
    (src / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    before = {p.name: p.read_bytes() for p in src.iterdir()}

    local = guess_dir(small_run, src, tmp_path / "local", by_label=True, **QUIET)
    on_ray = guess_dir_ray(small_run, src, tmp_path / "ray", by_label=True, **QUIET)
    assert _manifest(tmp_path / "ray") == _manifest(tmp_path / "local")
    assert len(_manifest(tmp_path / "ray")) == 24
    assert on_ray.skipped == local.skipped and len(local.skipped) == 2
    assert sorted(p.relative_to(tmp_path / "ray").as_posix() for p in (tmp_path / "ray").rglob("*")) \
        == sorted(p.relative_to(tmp_path / "local").as_posix() for p in (tmp_path / "local").rglob("*"))
    for row in _manifest(tmp_path / "ray"):
        assert (tmp_path / "ray" / row[1]).read_bytes() == Path(row[0]).read_bytes()

    # A second run (from the command line) resumes: nothing is copied again; with --again every
    # copy gets a new name and the manifest keeps both runs. Nothing is ever overwritten.
    first = {p: p.read_bytes() for p in (tmp_path / "ray").rglob("*.jpg")}
    assert main(["-q", "guess-dir", str(small_run), str(src), str(tmp_path / "ray"), "--by-label",
                 "--ray", "auto"]) == 1  # 1: files were skipped
    assert len(_manifest(tmp_path / "ray")) == 24
    assert main(["-q", "guess-dir", str(small_run), str(src), str(tmp_path / "ray"), "--by-label",
                 "--ray", "auto", "--again"]) == 1
    rows = _manifest(tmp_path / "ray")
    assert len(rows) == 48 and len({r[1] for r in rows}) == 48
    assert all(p.read_bytes() == data for p, data in first.items())
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before


@pytest.mark.slow
def test_actors_read_uris_with_the_local_reasons(ray_local, tmp_path):
    """file:// URIs go through the pyarrow file-system reader that s3:// and gs:// use."""
    from tfguess.engine.bottlenecks import BottleneckCache, compute_features
    from tfguess.engine.features import make_extractor
    from tfguess.guess.distributed import compute_features_ray

    spec, ref = _backbone_ref()
    items = _items(DEMO_DATA)[:6]
    missing = tmp_path / "gone.png"
    uris = [(p.resolve().as_uri(), d) for p, d in items] + [(missing.as_uri(), "0" * 64)]
    on_ray = compute_features_ray(uris, BottleneckCache(tmp_path / "ray", ref.cache_key), ref,
                                  spec.build, progress=False, log=lambda *_: None)
    local = compute_features([*items, (missing, "0" * 64)],
                             BottleneckCache(tmp_path / "local", ref.cache_key),
                             lambda: make_extractor(ref, spec.build, "tflite"), ref.input_size,
                             ref.resize, progress=False)
    assert on_ray.skipped == local.skipped == {"0" * 64: "file not found (or a broken link)"}
    assert max(np.abs(on_ray.features[d] - f).max() for d, f in local.features.items()) <= 1e-5


def _actor_pids() -> list[int]:
    """The processes of the Ray Data actors running :class:`distributed.ImageActor`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"ImageActor" in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return sorted(pids)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the actor processes in /proc")
def test_a_killed_actor_does_not_lose_or_corrupt_results(ray_local, tmp_path):
    from tfguess.engine.bottlenecks import BottleneckCache, compute_features
    from tfguess.engine.features import make_extractor
    from tfguess.guess.distributed import compute_features_ray

    spec, ref = _backbone_ref()
    items = _items(DEMO_DATA)[:96]
    killed: list[tuple[int, int]] = []
    seen: set[int] = set()

    def kill_one_actor(done: int) -> None:
        seen.update(_actor_pids())
        if not killed:
            pid = _actor_pids()[0]
            os.kill(pid, signal.SIGKILL)
            killed.append((pid, done))

    cache = BottleneckCache(tmp_path / "ray", ref.cache_key)
    result = compute_features_ray(items, cache, ref, spec.build, batch_size=4, on_batch=kill_one_actor,
                                  progress=False, log=lambda *_: None)
    assert killed and killed[0][1] < len(items)  # killed while most of the job was left
    assert killed[0][0] not in _actor_pids()
    assert len(seen) > 2, "no actor took the killed one's place"  # 2 actors, then a restart
    assert result.computed == len(items) and not result.skipped
    assert set(result.features) == {d for _, d in items}

    local = compute_features(items, BottleneckCache(tmp_path / "local", ref.cache_key),
                             lambda: make_extractor(ref, spec.build, "tflite"), ref.input_size,
                             ref.resize, progress=False)
    assert max(np.abs(cache.get(d) - f).max() for d, f in local.features.items()) <= 1e-5
    leftovers = [p for p in (tmp_path / "ray").rglob("*") if p.is_file() and not p.suffix == ".npy"]
    assert leftovers == []
