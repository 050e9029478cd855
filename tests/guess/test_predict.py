"""guess and guess-dir: classic output, safe copies, bad files, accuracy on real photos."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil

import pytest
from conftest import TEST_DATA
from PIL import Image

from tfguess.core.config import GuessConfig
from tfguess.core.errors import ConfigError
from tfguess.guess.predict import Prediction, Predictor, guess, guess_dir

QUIET = {"progress": False, "log": lambda *_: None}


def _digests(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_guess_prints_classic_lines(demo_trained):
    lines = []
    failed = guess(demo_trained, [TEST_DATA / "face_090.jpg"], out=lines.append)
    assert failed == 0
    assert [line.split(" (")[0] for line in lines] == ["face", "not_face"]
    for line in lines:
        label, rest = line.split(" (score = ")
        assert rest.endswith(")") and len(rest[:-1].split(".")[1]) == 5


@pytest.mark.slow
def test_guess_top_k_json_and_bad_file(demo_trained, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    out = []
    failed = guess(demo_trained, [TEST_DATA / "not_face_090.jpg", bad], top_k=1, as_json=True,
                   out=out.append)
    assert failed == 1
    results = json.loads(out[0])
    assert results[0]["predictions"][0]["label"] == "not_face"
    assert len(results[0]["predictions"]) == 1
    assert results[1]["error"] and "not an image" in results[1]["error"]


@pytest.mark.slow
def test_demo_test_data_is_classified(demo_trained, monkeypatch):
    """Guessing loads the model without hashing its file: the digest (guess-dir's resume key) is
    computed once, when asked."""
    from tfguess.guess import journal

    hashed, real = [], journal.file_digest
    monkeypatch.setattr(journal, "file_digest", lambda path, *a: hashed.append(path) or real(path, *a))
    predictor = Predictor.load(demo_trained)
    paths = sorted(TEST_DATA.glob("*.jpg"))
    preds = list(predictor.predict(paths))
    correct = sum(p.label == p.path.name.rsplit("_", 1)[0] for p in preds)
    assert correct >= 18, f"{correct}/20 held-out demo images right"
    assert not hashed
    assert predictor.identity == predictor.identity == "sha256:" + real(
        demo_trained / "model.keras")[:16]
    assert len(hashed) == 1


@pytest.mark.slow
def test_guess_dir_never_overwrites_and_keeps_sources(demo_trained, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(TEST_DATA / "face_090.jpg", src / "a.jpg")
    shutil.copy(TEST_DATA / "face_090.jpg", src / "b.JPG")  # identical content: same label and score
    shutil.copy(TEST_DATA / "not_face_091.jpg", src / "c.jpeg")
    before = _digests(src)
    dst = tmp_path / "out"

    first = guess_dir(demo_trained, src, dst, **QUIET)
    assert len(first.copied) == 3
    names = sorted(p.name for p in dst.iterdir() if p.name != "manifest.csv")
    assert len(names) == 3
    faces = [n for n in names if n.startswith("face-")]
    assert len(faces) == 2 and faces[0] != faces[1]
    assert any(n.endswith(".JPG") for n in names) and any(n.endswith(".jpeg") for n in names)
    copies = {p.name: p.read_bytes() for p in dst.iterdir()}

    resumed = guess_dir(demo_trained, src, dst, **QUIET)
    assert len(resumed.copied) == 0 and resumed.resumed == 3  # already there: not copied again
    second = guess_dir(demo_trained, src, dst, again=True, **QUIET)
    assert len(second.copied) == 3
    after = {p.name: p.read_bytes() for p in dst.iterdir()}
    assert len(after) == 7  # 6 copies + one manifest
    for name, data in copies.items():
        if name != "manifest.csv":
            assert after[name] == data
    with open(dst / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    assert len({r["destination"] for r in rows}) == 6
    assert _digests(src) == before


@pytest.mark.slow
def test_guess_dir_bad_files_are_listed(demo_trained, tmp_path):
    from skimage import data as skdata

    src = tmp_path / "src"
    src.mkdir()
    (src / "readme.txt").write_text("hello")
    (src / "empty.jpg").write_bytes(b"")
    Image.fromarray(skdata.chelsea()).convert("CMYK").save(src / "cmyk.jpg")
    Image.fromarray(skdata.chelsea()).convert("RGBA").save(src / "alpha.png")
    Image.fromarray(skdata.chelsea()).save(src / "anim.gif")
    result = guess_dir(demo_trained, src, tmp_path / "out", **QUIET)
    assert sorted(c["source"].rsplit("/", 1)[-1] for c in result.copied) == [
        "alpha.png", "anim.gif", "cmyk.jpg"]
    skipped = {s["path"].rsplit("/", 1)[-1]: s["reason"] for s in result.skipped}
    assert set(skipped) == {"readme.txt", "empty.jpg"}
    assert "zero-byte" in skipped["empty.jpg"]


@pytest.mark.slow
def test_guess_dir_dst_inside_src_by_label_min_score(demo_trained, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(TEST_DATA, src)
    dst = src / "sorted"
    result = guess_dir(demo_trained, src, dst, by_label=True, min_score=0.999999, recursive=True, **QUIET)
    assert len(result.copied) == 20
    again = guess_dir(demo_trained, src, dst, by_label=True, recursive=True, again=True, **QUIET)
    assert len(again.copied) == 20  # the copies inside DST were not scanned again
    labels = {p.name for p in dst.iterdir() if p.is_dir()}
    assert labels <= {"face", "not_face", "unknown"}
    for folder in dst.iterdir():
        if folder.is_dir():
            assert all(p.name.startswith(folder.name + "-") for p in folder.iterdir())


class FakePredictor:
    """Every image: ``a`` 0.4, ``b`` 0.3; records how it was asked."""

    labels, identity = ["a", "b"], "fake"

    def __init__(self):
        self.calls = []

    def predict(self, paths, top_k=0, batch_size=32, workers=0, progress=False):
        self.calls.append({"top_k": top_k, "batch_size": batch_size, "workers": workers})
        for p in paths:
            yield Prediction(p, [("a", 0.4), ("b", 0.3)][:top_k or 2])


def test_guess_dir_reads_its_config_and_keyword_overrides(tmp_path):
    src = tmp_path / "src"
    (src / "deep").mkdir(parents=True)
    shutil.copy(TEST_DATA / "face_090.jpg", src / "x.jpg")
    shutil.copy(TEST_DATA / "face_091.jpg", src / "deep" / "y.jpg")
    config = GuessConfig(by_label=True, min_score=0.5, batch_size=4, workers=1, top_k=1)
    fake = FakePredictor()
    result = guess_dir("unused", src, tmp_path / "out", config, predictor=fake, recursive=True,
                       **QUIET)
    assert fake.calls == [{"top_k": 1, "batch_size": 4, "workers": 1}]
    assert {p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.jpg")
            } == {"unknown/unknown-0.40000.jpg", "unknown/unknown-0.40000-1.jpg"}
    assert len(result.copied) == 2 and config.recursive is False  # the config is left as it was
    plain = guess_dir("unused", src, tmp_path / "plain", predictor=FakePredictor(), **QUIET)
    assert [c["destination"].rsplit("/", 1)[-1] for c in plain.copied] == ["a-0.40000.jpg"]


def test_unknown_settings_are_refused_before_any_work(tmp_path):
    from tfguess.guess.distributed import guess_dir_ray

    (tmp_path / "src").mkdir()
    with pytest.raises(ConfigError, match="unknown setting bogus"):
        guess_dir("unused", tmp_path / "src", tmp_path / "dst", bogus=1, **QUIET)
    with pytest.raises(ConfigError, match="unknown setting address"):
        guess_dir_ray("unused", tmp_path / "src", tmp_path / "dst", address="auto", **QUIET)
    with pytest.raises(ConfigError, match="unknown setting as_jsn"):
        guess("unused", [TEST_DATA / "face_090.jpg"], as_jsn=True)
    assert not (tmp_path / "dst").exists()


@pytest.mark.slow
@pytest.mark.shared
def test_guess_dir_accuracy_equals_train_evaluation(hymenoptera_trained, hymenoptera, tmp_path):
    summary = json.loads((hymenoptera_trained / "run_summary.json").read_text())
    result = guess_dir(hymenoptera_trained, hymenoptera / "val", tmp_path / "sorted", recursive=True,
                       **QUIET)
    with open(result.manifest) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 153
    correct = sum(r["label"] == r["source"].split("/")[-2] for r in rows)
    accuracy = round(correct / len(rows), 4)
    print(f"guess-dir on hymenoptera/val: accuracy {accuracy}, {result.images_per_second:.1f} images/s")
    assert accuracy == summary["metrics"]["eval_dir"]["accuracy"]
