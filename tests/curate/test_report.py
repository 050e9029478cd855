"""The evaluation report: contents, data hygiene (suspects, duplicates, junk) and the page in a browser."""

from __future__ import annotations

import csv
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ARTIFACTS, DEMO_DATA, TEST_DATA, require_shared
from pagecheck import assert_report_loads
from PIL import Image

from tfguess.curate.report import ReportError, load_report, write_report
from tfguess.data import hygiene

# ---------------------------------------------------------------- hygiene on synthetic features


def _clusters(n_per: int = 60, dim: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2, dim)) * 3
    y = np.repeat([0, 1], n_per)
    x = centres[y] + rng.normal(size=(2 * n_per, dim))
    return x.astype(np.float32), y


def test_find_suspects_ranks_flipped_labels_first():
    x, y = _clusters()
    flipped = np.array([3, 17, 70, 99])
    noisy = y.copy()
    noisy[flipped] = 1 - noisy[flipped]
    probs = hygiene.out_of_sample_probs(x, noisy, 2)
    suspects = hygiene.find_suspects(noisy, probs)
    top = {s.index for s in suspects[:6]}
    assert set(flipped) <= top
    s = next(s for s in suspects if s.index == 3)
    assert s.given == noisy[3] and s.suggested == y[3] and s.self_confidence < 0.5
    scores = [s.self_confidence for s in suspects]
    assert scores == sorted(scores)


def test_near_duplicates_and_atypical_on_planted_rows():
    x, _ = _clusters()
    rng = np.random.default_rng(1)
    x[5] = x[40] * 1.7 + rng.normal(scale=0.01, size=x.shape[1])  # same direction: cosine ~1
    pairs = hygiene.near_duplicates(x, threshold=0.99, block=16)  # small blocks: the tiling is exercised
    assert [(i, j) for i, j, _ in pairs] == [(5, 40)]
    assert pairs[0][2] > 0.99
    x[77] = rng.normal(size=x.shape[1]) * 40  # far from everything
    assert hygiene.atypical(x, 3)[0][0] == 77


# ---------------------------------------------------------------- the demo data, with planted problems

FLIPPED = ["face/face_010.png", "face/face_050.png", "not_face/not_face_020.png", "not_face/not_face_060.png"]


def _placeholder_gif(path: Path) -> None:
    """An "image not found" picture: a flat background with a few words and a line in the middle."""
    im = Image.new("P", (200, 150), 0)
    im.putpalette([255, 255, 255, 200, 200, 200, 90, 90, 90] + [0] * 759)
    for x0 in range(60, 140, 20):
        im.paste(1, (x0, 60, x0 + 14, 85))
    im.paste(2, (60, 92, 140, 97))
    im.save(path)


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    """Demo data with 4 labels swapped, an exact and a near duplicate, junk files; trained, reported."""
    from tfguess.core.config import TrainConfig
    from tfguess.training.train import train

    tf_files = tmp_path_factory.mktemp("report") / "tf_files"
    data = tf_files / "data"
    shutil.copytree(DEMO_DATA, data)
    moved = []
    for rel in FLIPPED:
        label, name = rel.split("/")
        other = "not_face" if label == "face" else "face"
        (data / rel).rename(data / other / name)
        moved.append(f"{other}/{name}")
    shutil.copy(data / "face" / "face_001.png", data / "face" / "face_001 copy.png")
    # The near duplicate: the same 25 px face saved again as a JPEG (a resized copy of so small a
    # picture is no longer alike enough once both are scaled up to the input size).
    Image.open(data / "face" / "face_002.png").convert("RGB").save(
        data / "face" / "face_002_resaved.jpg", quality=95)
    _placeholder_gif(data / "not_face" / "imageNotFound.gif")
    (data / "face" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 40)
    held_out = tf_files.parent / "held_out"  # the repo's test_data, sorted into label folders
    for path in TEST_DATA.glob("*.jpg"):
        label = "not_face" if path.name.startswith("not_face") else "face"
        (held_out / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, held_out / label / path.name)
    logs: list[str] = []
    train(tf_files, TrainConfig(quick=True, report=False, eval_dir=str(held_out), test_pct=10), progress=False,
          log=lambda *_: None)
    t = time.perf_counter()
    page = write_report(tf_files, log=logs.append)
    seconds = time.perf_counter() - t
    return {"tf_files": tf_files, "page": page, "moved": moved, "logs": logs, "seconds": seconds,
            "data": load_report(tf_files)}


@pytest.mark.slow
def test_report_files_and_terminal_summary(demo_report):
    page, tf_files = demo_report["page"], demo_report["tf_files"]
    assert page == tf_files / "report" / "index.html"
    for name in ("confusion.png", "curves.png"):
        with Image.open(page.parent / name) as im:
            assert im.format == "PNG" and im.width > 300
    text = "\n".join(demo_report["logs"])
    assert "accuracy" in text and str(page) in text and "suspected label error" in text
    assert len(demo_report["logs"]) <= 6
    assert demo_report["seconds"] < 30


@pytest.mark.slow
def test_report_metrics_match_the_training_summary(demo_report):
    data = demo_report["data"]
    summary = json.loads((demo_report["tf_files"] / "run_summary.json").read_text())
    test = summary["metrics"]["test"]
    assert data["eval_split"] == "test" and data["metrics"] == test
    html = demo_report["page"].read_text()
    assert "id='confusion-matrix'" in html
    for label, m in test["per_label"].items():
        assert re.search(rf">{label}</td><td class='num'>{m['precision']:.3f}</td>", html)
    wrong = int(test["n"] - np.trace(np.array(test["confusion"])))
    assert len(data["misclassified"]) == wrong
    assert data["imbalance"]["totals"] == {k: sum(v.values()) for k, v in summary["counts"].items()}
    precision = summary["precision"]    # what guessing runs, and why, is said on the page
    why = (precision.get("int8_check") or {}).get("why") or precision.get("cpu")
    from html import escape

    assert f"Guessing runs {precision['guess']}: {escape(why)}." in html


@pytest.mark.slow
def test_extra_evaluation_folder_is_reported(demo_report):
    extra = demo_report["data"]["eval_dir"]
    assert extra["n"] == len(list(TEST_DATA.glob("*.jpg")))
    html = demo_report["page"].read_text()
    assert "id='confusion-eval-dir'" in html and "held_out" in html
    assert (demo_report["page"].parent / "confusion_eval_dir.png").exists()


@pytest.mark.slow
def test_swapped_labels_are_the_top_suspects(demo_report):
    data = demo_report["data"]
    top = [Path(s["path"]).relative_to(demo_report["tf_files"] / "data").as_posix()
           for s in data["suspects"][:8]]
    found = [m for m in demo_report["moved"] if m in top]
    assert len(found) >= 3, (demo_report["moved"], top)
    rows = list(csv.DictReader(open(demo_report["page"].parent / "suspects.csv", encoding="utf-8")))
    assert [r["path"] for r in rows] == [s["path"] for s in data["suspects"]]
    first = data["suspects"][0]
    assert first["suggested"] != first["given"] and float(rows[0]["self_confidence"]) < 0.5
    html = demo_report["page"].read_text()
    assert Path(first["path"]).name in html


@pytest.mark.slow
def test_junk_duplicates_and_near_duplicates_are_shown(demo_report):
    data, html = demo_report["data"], demo_report["page"].read_text()
    skipped = {Path(s["path"]).name: s["reason"] for s in data["skipped"]}
    assert "broken.jpg" in skipped and "broken.jpg" in html
    gif_seen = ("imageNotFound.gif" in skipped
                or any(Path(s["path"]).name == "imageNotFound.gif" for s in data["suspects"] + data["atypical"]))
    assert gif_seen and "imageNotFound.gif" in html
    assert any(Path(d["duplicate"]).name in ("face_001 copy.png", "face_001.png")
               for d in data["exact_duplicates"])
    pairs = {frozenset((Path(p["a"]).name, Path(p["b"]).name)) for p in data["near_duplicates"]["pairs"]}
    assert frozenset(("face_002.png", "face_002_resaved.jpg")) in pairs
    threshold = data["near_duplicates"]["threshold"]
    assert threshold >= hygiene.NEAR_DUPLICATE_THRESHOLD and f"{threshold:.3f}" in html
    assert all(p["similarity"] >= threshold for p in data["near_duplicates"]["pairs"])


@pytest.mark.slow
def test_rewriting_replaces_the_report_and_says_so(demo_report):
    tf_files = demo_report["tf_files"]
    stale = tf_files / "report" / "thumbs" / "stale.jpg"
    stale.write_bytes(b"x")
    logs: list[str] = []
    write_report(tf_files, log=logs.append)
    assert any("Replaced the previous report" in line for line in logs)
    assert not stale.exists()
    assert not [p for p in tf_files.iterdir() if p.name.startswith(".report")]


def test_untrained_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ReportError, match="tfguess train"):
        write_report(tmp_path, log=lambda *_: None)


# ---------------------------------------------------------------- the page in a browser

@pytest.mark.slow
def test_report_loads_in_a_browser(demo_report):
    images = assert_report_loads(demo_report["page"], ARTIFACTS / "report-demo.png")["images"]
    assert sum(im["src"].startswith("thumbs/") for im in images) >= 4


# ---------------------------------------------------------------- hymenoptera: 10 known label errors

@pytest.mark.shared
@pytest.mark.slow
def test_hymenoptera_planted_label_errors_are_found(tmp_path):
    from tfguess.core.config import TrainConfig
    from tfguess.training.train import train

    source = require_shared() / "train"
    data = (tmp_path / "images").resolve()
    shutil.copytree(source, data)
    moved = []
    for label, other in (("ants", "bees"), ("bees", "ants")):
        names = sorted(p.name for p in (data / label).glob("*.jpg"))
        for name in names[7::24][:5]:  # 5 spread-out photos of each label, chosen by name
            (data / label / name).rename(data / other / name)
            moved.append(f"{other}/{name}")
    tf_files = tmp_path / "tf_files"
    train(tf_files, TrainConfig(quick=True, image_dir=str(data), report=False), progress=False, log=lambda *_: None)
    t = time.perf_counter()
    page = write_report(tf_files, log=lambda *_: None)
    seconds = time.perf_counter() - t
    report = load_report(tf_files)
    top20 = [Path(s["path"]).relative_to(data).as_posix() for s in report["suspects"][:20]]
    found = sorted(m for m in moved if m in top20)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "report-hymenoptera.json").write_text(json.dumps({
        "planted": moved, "found_in_top20": found, "n_found": len(found),
        "suspects": len(report["suspects"]), "report_seconds": round(seconds, 2),
        "analysis_timings_s": report["timings_s"], "test_accuracy": report["metrics"]["accuracy"],
        "out_of_sample_accuracy": report["suspect_method"]["out_of_sample_accuracy"],
    }, indent=2))
    print(f"{len(found)} of 10 planted label errors in the top 20 suspects; report took {seconds:.1f} s")
    assert len(found) >= 7, (moved, top20)
    assert seconds < 30

    placeholder = "ants/imageNotFound.gif"
    where = [section for section in ("skipped", "suspects", "atypical")
             if placeholder in {Path(s["path"]).relative_to(data).as_posix() for s in report[section]}]
    artifact = json.loads((ARTIFACTS / "report-hymenoptera.json").read_text())
    (ARTIFACTS / "report-hymenoptera.json").write_text(json.dumps({**artifact, "placeholder_in": where}, indent=2))
    assert where, "the placeholder GIF is neither skipped, suspect nor atypical"
    assert "imageNotFound.gif" in page.read_text()
    assert_report_loads(page, ARTIFACTS / "report-hymenoptera.png")


def test_the_weakest_label_is_flagged_only_when_it_is_not_perfect():
    from tfguess.curate.report.render import _metrics_table

    def metrics(f1_a: float, f1_b: float) -> dict:
        row = lambda f1: {"precision": f1, "recall": f1, "f1": f1, "support": 5}  # noqa: E731
        return {"per_label": {"a": row(f1_a), "b": row(f1_b)}, "n": 10, "accuracy": 1.0}

    assert "class='bad'" not in _metrics_table(metrics(1.0, 1.0), ["a", "b"], "a")
    flagged = _metrics_table(metrics(0.8, 1.0), ["a", "b"], "a")
    assert "<td class='bad'>a</td>" in flagged


# ---------------------------------------------------------------- the review page's journal


def test_journal_rows_say_what_is_undoable_and_what_waits_for_a_retraining(tmp_path):
    """Every change still in effect is undoable whatever report came since, unless its image
    moved again (the newer change first); a change counts as waiting for a re-training when the
    report's data did not include it (``journal_seen``), an undo of a change it did include too."""
    from tfguess.curate.relabel import DataSetEditor, last_change_id

    tf = tmp_path / "tf"
    for label in ("a", "b", "c"):
        (tf / "data" / label).mkdir(parents=True)
    for name in ("x.png", "y.png"):
        shutil.copy(sorted((DEMO_DATA / "face").iterdir())[0], tf / "data" / "a" / name)
    ed = DataSetEditor(tf, tf / "data", ["a", "b", "c"])
    state = lambda seen: [(r["id"], r["undoable"], r["pending"]) for r in ed.journal_rows(seen)]  # noqa: E731
    assert last_change_id(tf) == 0 and state(None) == []
    first = ed.move("data/a/x.png", "b")
    ed.remove("data/a/y.png")
    seen = last_change_id(tf)   # a re-training reads the data now
    assert seen == 2 and state(seen) == [(1, True, False), (2, True, False)]
    ed.move("data/b/x.png", "c")   # the same image again: undo that one first
    assert state(seen) == [(1, False, False), (2, True, False), (3, True, True)]
    ed.undo(3)
    assert state(seen) == [(1, True, False), (2, True, False), (3, False, False), (4, False, False)]
    ed.undo(first.id)   # a change the report saw: the data differ from it again
    assert state(seen) == [(1, False, False), (2, True, False), (3, False, False), (4, False, False),
                           (5, False, True)]
    assert [r["pending"] for r in ed.journal_rows()] == [False, True, False, False, False]


def test_the_mistakes_shown_after_a_refit_are_the_model_before_it():
    """When the held-out figure is the model's before its last refit (which then trained on those
    photos), the report's mistakes are that model's, from the guesses the run recorded, the most
    confident first; photos of other splits are not among them."""
    from tfguess.curate.report.analysis import Row, _misclassified, _recorded_guesses

    rows = [Row(Path(f"/d/{name}.jpg"), label, name, split) for name, label, split in (
        ("t1", "ant", "test"), ("t2", "bee", "test"), ("t3", "bee", "test"), ("v1", "ant", "train"))]
    recorded = {"digests": ["t1", "t2", "t3", "v1"], "guess": [0, 0, 0, 1],
                "score": [0.9, 0.6, 0.8, 0.99], "label_score": [0.9, 0.4, 0.2, 0.01]}
    mistakes = _misclassified(_recorded_guesses(recorded), rows, np.array([0, 1, 1, 0]),
                              ["ant", "bee"], "test")
    assert [(m["digest"], m["predicted"], m["score"], m["label_score"]) for m in mistakes] == [
        ("t3", "ant", 0.8, 0.2), ("t2", "ant", 0.6, 0.4)]
