"""guess and guess-dir: classic output, safe copies, bad files, accuracy on real photos."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil

import pytest
from conftest import TEST_DATA
from PIL import Image

from tfguess.guess.predict import Predictor, guess, guess_dir

QUIET = {"progress": False, "log": lambda *_: None}


def _digests(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_guess_prints_classic_lines(demo_trained):
    lines = []
    failed = guess(demo_trained, [TEST_DATA / "face_090.jpg"], out=lines.append)
    assert failed == 0
    assert [line.split(" (")[0] for line in lines] == ["face", "not_face"]
    for line in lines:
        label, rest = line.split(" (score = ")
        assert rest.endswith(")") and len(rest[:-1].split(".")[1]) == 5


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


def test_demo_test_data_is_classified(demo_trained):
    predictor = Predictor.load(demo_trained)
    paths = sorted(TEST_DATA.glob("*.jpg"))
    preds = list(predictor.predict(paths))
    correct = sum(p.label == p.path.name.rsplit("_", 1)[0] for p in preds)
    assert correct >= 18, f"{correct}/20 held-out demo images right"


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
