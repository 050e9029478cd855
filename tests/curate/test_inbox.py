"""The inbox without TensorFlow: ordering and strategies, the copy that never overwrites, the
journal and undo, the read-only inbox folder, suggest's CSV.

The inbox's features come from the bottleneck cache; here the cache is filled beforehand with
vectors that separate the demo photos' two labels (the features a backbone would give are the
slow tier's business), so nothing is extracted.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tfguess.core.runfolder import RunFolder
from tfguess.curate import active
from tfguess.curate.inbox import (
    JOURNAL_FILENAME,
    Inbox,
    InboxError,
    _backbone_source,
    add_photo,
    copy_no_overwrite,
    ready_to_train,
    run_config,
    write_suggestions,
)

DEMO = Path(__file__).resolve().parents[2] / "tf_files" / "data"
DIM = 16


def _feature(path: Path, label_axis: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(0, 0.15, DIM).astype(np.float32)
    v[label_axis] += 1.0
    return v


def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    return {p.relative_to(folder).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                                p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


@pytest.fixture
def inbox_setup(tmp_path):
    """TF_FILES with 4 photos per label in data/, an inbox of 24 other demo photos, and a
    feature cache that holds every one of them."""
    from tfguess.engine.bottlenecks import BottleneckCache

    tf_files, inbox = tmp_path / "tf", tmp_path / "inbox"
    for label in ("face", "not_face"):
        (tf_files / "data" / label).mkdir(parents=True)
        photos = sorted((DEMO / label).iterdir())
        for p in photos[:4]:
            shutil.copy2(p, tf_files / "data" / label / p.name)
        inbox.mkdir(exist_ok=True)
        for p in photos[40:52]:
            shutil.copy2(p, inbox / p.name)
    run = RunFolder.at(tf_files)
    ref, _ = _backbone_source(run, run_config(run))
    cache = BottleneckCache(run.bottlenecks, ref.cache_key)
    rng = np.random.default_rng(0)
    for p in list(inbox.iterdir()) + list((tf_files / "data").rglob("*.*")):
        axis = 1 if p.name.startswith("not_face") else 0
        cache.put(hashlib.sha256(p.read_bytes()).hexdigest(), _feature(p, axis, rng))
    return tf_files, inbox


# ---- strategies and ordering (numpy only)

def test_margin_entropy_score_label_orders():
    probs = np.array([[0.9, 0.1, 0.0], [0.4, 0.35, 0.25], [0.6, 0.4, 0.0], [0.34, 0.33, 0.33]])
    assert list(active.order(probs, "margin")) == [3, 1, 2, 0]
    assert list(active.order(probs, "entropy")) == [3, 1, 2, 0]
    assert list(active.order(probs, "score")) == [0, 2, 1, 3]
    assert list(active.order(probs, "label", ["b", "a", "c"])) == [0, 2, 1, 3]  # all predict "b"
    probs2 = np.array([[0.2, 0.8], [0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    # label "a" (index 0) sorts before "b"; most confident first inside a label
    assert list(active.order(probs2, "label", ["a", "b"])) == [1, 3, 0, 2]
    assert sorted(active.order(probs2, "random", seed=3)) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="unknown order"):
        active.order(probs2, "nope")


def test_margins_and_entropy_match_definitions():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(5), 50)
    s = np.sort(probs, 1)
    assert np.allclose(active.margins(probs), s[:, -1] - s[:, -2])
    assert np.allclose(active.entropy(probs), [-sum(q * np.log(q) for q in row) for row in probs])


def test_kcenter_margin_spreads_its_picks():
    # 30 near-identical images (the 10 most uncertain of all among them) and 2 groups of 5 others
    # almost as uncertain: margin picks 3 look-alikes, k-center one of each group
    rng = np.random.default_rng(0)
    same = np.tile(np.eye(8)[0], (30, 1)) + rng.normal(0, 0.01, (30, 8))
    other = np.eye(8)[[1, 2] * 5] + rng.normal(0, 0.01, (10, 8))  # the groups alternate
    feats = np.vstack([same, other]).astype(np.float32)
    margin = np.concatenate([np.linspace(0, 0.009, 10), np.full(20, 0.5), np.linspace(0.01, 0.019, 10)])
    probs = np.stack([(1 + margin) / 2, (1 - margin) / 2], 1)
    margin_pick = active.select("margin", probs, 3)
    assert list(margin_pick) == [0, 1, 2]
    diverse = active.select("kcenter-margin", probs, 3, feats, np.zeros((0, 8)))
    groups = {0 if i < 30 else 1 + (i - 30) % 2 for i in diverse}
    assert groups == {0, 1, 2}
    with pytest.raises(ValueError, match="unknown strategy"):
        active.select("best", probs, 3)


def test_remaining_mistakes_calibration():
    pool = np.array([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5]])
    assert active.remaining_mistakes(pool) == pytest.approx(0.1 + 0.4 + 0.5)
    # labelled images: mean doubt 0.1 out of sample, but 20 % wrong: the factor is 2
    y = np.array([0, 0, 0, 0, 1])
    oos = np.array([[0.9, 0.1]] * 5)
    assert active.calibration(y, oos) == pytest.approx(2.0)
    assert active.remaining_mistakes(pool, 2.0) == pytest.approx(2.0)
    assert active.remaining_mistakes(pool, 10.0) == 3.0  # at most the pool


def test_fit_is_the_products_head_and_learns():
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(0, 0.3, (20, 32)) + 2 * np.eye(32)[k] for k in range(3)]).astype(np.float32)
    y = np.repeat(np.arange(3), 20)
    r = active.refit(x, y, 3, x[:5])
    assert (r.head(x).argmax(1) == y).mean() > 0.95
    assert r.cv_accuracy is not None and r.cv_accuracy > 0.9
    assert r.pool_probs.shape == (5, 3)


# ---- files: never overwritten, the inbox folder never touched

def test_copy_never_overwrites(tmp_path):
    src = sorted((DEMO / "face").iterdir())[0]
    folder = tmp_path / "data" / "face"
    folder.mkdir(parents=True)
    (folder / src.name).write_bytes(b"someone else's file")
    first = copy_no_overwrite(src, folder)
    second = copy_no_overwrite(src, folder)
    assert (folder / src.name).read_bytes() == b"someone else's file"
    assert first.name == f"{src.stem}-1{src.suffix}" and second.name == f"{src.stem}-2{src.suffix}"
    assert first.read_bytes() == src.read_bytes() == second.read_bytes()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_label_undo_journal_and_read_only_inbox(inbox_setup):
    tf_files, inbox_dir = inbox_setup
    before = _snapshot(inbox_dir)
    taken = tf_files / "data" / "face" / "face_040.png"
    taken.write_bytes(b"not the inbox's photo")  # a name already used in data/face
    inbox = Inbox(tf_files, inbox_dir, auto_every=0, log=lambda *_: None)
    assert inbox.stats()["pending"] == 24 and inbox.head is not None
    a = inbox.label("face_040.png", "face")
    assert a["destination"] == "data/face/face_040-1.png"
    assert taken.read_bytes() == b"not the inbox's photo"
    inbox.label("not_face_041.png", "not_face")
    inbox.none_of_these("face_042.png")
    new = inbox.label("face_043.png", "baby")  # a new label
    assert (tf_files / "data" / "baby" / "face_043.png").is_file() and "baby" in inbox.labels
    assert inbox.stats()["pending"] == 20
    with pytest.raises(InboxError, match="labelled already"):
        inbox.label("face_040.png", "face")
    with pytest.raises(InboxError, match="not an image of the inbox"):
        inbox.label("../tf/data/face/face_000.png", "face")
    with pytest.raises(InboxError, match="cannot be a label"):
        inbox.label("face_044.png", "../escape")

    undone = inbox.undo()  # the last action: the copy into baby/
    assert undone["undoes"] == new["id"]
    assert not (tf_files / "data" / "baby" / "face_043.png").exists()
    inbox.undo(a["id"])
    assert not (tf_files / "data" / "face" / "face_040-1.png").exists()
    assert taken.read_bytes() == b"not the inbox's photo"

    # the journal and the disk agree: every live copy is there with the content recorded
    with open(tf_files / JOURNAL_FILENAME, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["action"] for r in rows] == ["copy", "copy", "none", "copy", "undo", "undo"]
    undone_ids = {r["undoes"] for r in rows if r["action"] == "undo"}
    live = [r for r in rows if r["action"] == "copy" and r["id"] not in undone_ids]
    assert [r["source"] for r in live] == ["not_face_041.png"]
    copy = tf_files / live[0]["destination"]
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == live[0]["sha256"]
    assert inbox.stats()["pending"] == 22
    assert _snapshot(inbox_dir) == before


def test_undo_leaves_a_changed_copy(inbox_setup):
    tf_files, inbox_dir = inbox_setup
    inbox = Inbox(tf_files, inbox_dir, auto_every=0, log=lambda *_: None)
    a = inbox.label("face_044.png", "face")
    (tf_files / a["destination"]).write_bytes(b"edited since")
    with pytest.raises(InboxError, match="changed since it was copied"):
        inbox.undo()
    assert (tf_files / a["destination"]).read_bytes() == b"edited since"


def test_retrain_every_n_and_bulk_accept(inbox_setup):
    tf_files, inbox_dir = inbox_setup
    inbox = Inbox(tf_files, inbox_dir, auto_every=3, log=lambda *_: None)
    results = [inbox.label(n, "face") for n in ("face_040.png", "face_041.png", "face_042.png")]
    assert [r["retrained"] for r in results] == [False, False, True]
    s = inbox.stats()
    assert s["since_retrain"] == 0 and "cv_accuracy" not in s
    # three guesses recorded (the model's guess shown when each was labelled)
    assert s["guesses"]["checked"] == 3 and s["guesses"]["estimated_accuracy"] is not None
    done = inbox.accept("not_face", 0.8)
    assert done and all(d["label"] == "not_face" for d in done)
    assert all(n.startswith("not_face") for n in (d["source"] for d in done))
    with pytest.raises(InboxError, match="unknown label"):
        inbox.accept("cat", 0.5)


def test_inbox_inside_tf_files_is_refused(inbox_setup):
    tf_files, _ = inbox_setup
    with pytest.raises(InboxError, match="inside one another"):
        Inbox(tf_files, tf_files / "data", log=lambda *_: None)
    with pytest.raises(InboxError, match="not found"):
        Inbox(tf_files, tf_files.parent / "nope", log=lambda *_: None)


def test_suggest_csv(inbox_setup, tmp_path):
    tf_files, inbox_dir = inbox_setup
    inbox = Inbox(tf_files, inbox_dir, log=lambda *_: None)
    rows = inbox.suggest(5, "margin")
    text = write_suggestions(rows, tmp_path / "s.csv")
    parsed = list(csv.DictReader(io.StringIO((tmp_path / "s.csv").read_text())))
    assert text == (tmp_path / "s.csv").read_text() and len(parsed) == 5
    assert [int(r["rank"]) for r in parsed] == [1, 2, 3, 4, 5]
    margins = [float(r["margin"]) for r in parsed]
    assert margins == sorted(margins)
    assert all(Path(r["path"]).parent == inbox_dir for r in parsed)
    assert {r["predicted"] for r in parsed} <= {"face", "not_face"}
    with pytest.raises(InboxError, match="exists already"):
        write_suggestions(rows, tmp_path / "s.csv")


def test_suggest_command(inbox_setup, tmp_path, capsys):
    from tfguess.cli import main

    tf_files, inbox_dir = inbox_setup
    assert main(["-q", "suggest", str(tf_files), str(inbox_dir), "--n", "3",
                 "--strategy", "entropy"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("rank,path,predicted") and len(out.strip().splitlines()) == 4
    assert main(["-q", "suggest", str(tf_files), str(tmp_path / "missing")]) == 2
    assert "inbox folder not found" in capsys.readouterr().err


def test_start_from_nothing_uploads(tmp_path):
    tf_files = tmp_path / "tf"
    assert ready_to_train(tf_files) == "create at least 2 labels"
    photo = sorted((DEMO / "face").iterdir())[0]
    first = add_photo(tf_files, "cat", "../../evil.png", photo.read_bytes())
    assert first == tf_files / "data" / "cat" / "evil.png"
    again = add_photo(tf_files, "cat", "evil.png", photo.read_bytes())
    assert again.name == "evil-1.png" and first.read_bytes() == photo.read_bytes()
    with pytest.raises(InboxError, match="not a usable image"):
        add_photo(tf_files, "cat", "notes.txt", b"hello")
    add_photo(tf_files, "dog", "d.png", photo.read_bytes())
    assert "each label needs" in ready_to_train(tf_files)
    assert sorted(os.listdir(tf_files / "data" / "cat")) == ["evil-1.png", "evil.png"]


# ---- the page's API: the token and same-origin checks on every action

def test_inbox_api_needs_the_page_token(inbox_setup):
    pytest.importorskip("fastapi")
    import re

    from starlette.testclient import TestClient

    from tfguess.serve import create_app

    tf_files, inbox_dir = inbox_setup
    (tf_files / "bottlenecks").mkdir(exist_ok=True)
    app = create_app(tf_files, log=lambda *_: None, inbox_dir=inbox_dir, inbox_every=0)
    before = _snapshot(inbox_dir)
    with TestClient(app, base_url="http://127.0.0.1:8080") as client:
        page = client.get("/inbox")
        assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
        token = re.search(r'name="tfguess-token" content="([^"]+)"', page.text).group(1)
        state = client.get("/api/inbox").json()
        assert state["stats"]["pending"] == 24 and len(state["items"]) == 24
        name = state["items"][0]["name"]
        image = client.get("/api/inbox/image", params={"name": name})
        assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
        assert client.get("/api/inbox/image", params={"name": "../tf/data"}).status_code == 404
        writes = [("/api/inbox/label", {"name": name, "label": "face"}), ("/api/inbox/undo", {}),
                  ("/api/inbox/accept", {"label": "face", "min_score": 0.9}),
                  ("/api/inbox/retrain", {}), ("/api/inbox/finish", {}),
                  ("/api/inbox/labels", {"name": "cat"}), ("/api/inbox/train", {})]
        for url, body in writes:
            assert client.post(url, json=body).status_code == 403, url
            assert client.post(url, json=body, headers={"X-Tfguess-Token": "wrong"}).status_code == 403
            assert client.post(url, json=body, headers={"X-Tfguess-Token": token,
                                                        "Origin": "http://evil.example"}).status_code == 403
        assert client.post("/api/inbox/photos?label=cat", files={"files": ("a.png", b"x")}).status_code == 403
        ok = client.post("/api/inbox/label", json={"name": name, "label": "face"},
                         headers={"X-Tfguess-Token": token, "Origin": "http://127.0.0.1:8080"})
        assert ok.status_code == 200 and ok.json()["destination"] == f"data/face/{name}"
        again = client.post("/api/inbox/label", json={"name": name, "label": "face"},
                            headers={"X-Tfguess-Token": token})
        assert again.status_code == 409 and "labelled already" in again.json()["detail"]
        assert client.get("/api/inbox", params={"order": "nope"}).status_code == 422
    assert _snapshot(inbox_dir) == before
    assert not (tf_files / "data" / "cat").exists()


# ---- the page's figures: the model's guesses shown when each photo was labelled

def test_guess_figures_are_the_fraction_right_among_recorded_labels():
    guesses = [(True, 0.9)] * 60 + [(False, 0.6)] * 3 + [(True, 0.7)] * 7
    pool = np.array([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2]])
    g = active.guess_figures(guesses, pool, window=50)
    assert (g["right"], g["checked"], g["recorded"]) == (47, 50, 70)
    assert g["accuracy"] == pytest.approx(47 / 50)
    doubt = 60 * 0.1 + 3 * 0.4 + 7 * 0.3
    factor = (3 + active.OVERCONFIDENCE_PRIOR) / (doubt + active.OVERCONFIDENCE_PRIOR)
    assert g["overconfidence"] == pytest.approx(factor, abs=1e-3)
    mistakes = (0.1 + 0.4 + 0.2) * factor
    assert g["remaining_mistakes"] == pytest.approx(mistakes, abs=0.05)
    assert g["estimated_accuracy"] == pytest.approx(1 - mistakes / 3)
    none = active.guess_figures([], np.zeros((4, 0)))
    assert none["accuracy"] is None and none["estimated_accuracy"] is None and none["checked"] == 0
    assert active.guess_figures([], pool)["overconfidence"] == 1.0  # no record: its own scores


def test_inbox_figure_counts_the_guesses_shown_when_labelled(inbox_setup):
    """The page's figure is the fraction of the photos a person labelled whose guess, shown at
    that moment and written into the journal, was the label given; bulk-accepted photos and
    undone labels are not counted."""
    tf_files, inbox_dir = inbox_setup
    inbox = Inbox(tf_files, inbox_dir, auto_every=0, log=lambda *_: None)
    shown = {i["name"]: i["top"][0][0] for i in inbox.items()}
    labels = {"face_040.png": "face", "face_041.png": "face", "not_face_040.png": "not_face",
              "face_042.png": "not_face", "not_face_041.png": "face"}  # 2 against the guess
    for name, label in labels.items():
        inbox.label(name, label)
    inbox.label("face_043.png", "face")
    inbox.undo()                        # not counted
    inbox.accept("face", 0.0)           # bulk: not counted
    with open(tf_files / JOURNAL_FILENAME, newline="") as f:
        rows = {r["source"]: r for r in csv.DictReader(f) if r["action"] == "copy"}
    assert all(rows[n]["guess"] == shown[n] for n in labels)
    g = inbox.stats()["guesses"]
    right = sum(shown[n] == lb for n, lb in labels.items())
    assert (g["right"], g["checked"]) == (right, 5) and g["accuracy"] == pytest.approx(right / 5)


# ---- a label is its copy and its journal row, or neither

def test_row_that_cannot_be_written_takes_the_copy_back(inbox_setup, monkeypatch):
    import errno

    from tfguess.curate.inbox_journal import InboxJournal

    tf_files, inbox_dir = inbox_setup
    inbox = Inbox(tf_files, inbox_dir, auto_every=0, log=lambda *_: None)
    kept = inbox.label("face_040.png", "face")
    journal = (tf_files / JOURNAL_FILENAME).read_bytes()
    before = _snapshot(tf_files / "data" / "face")

    def disk_full(self, header, row):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

    monkeypatch.setattr(InboxJournal, "_write", disk_full)
    with pytest.raises(InboxError, match="disk is full.*not labelled.*taken back"):
        inbox.label("face_041.png", "face")
    with pytest.raises(InboxError, match="Nothing was undone"):
        inbox.undo()
    assert _snapshot(tf_files / "data" / "face") == before  # the undone copy is back, unchanged
    assert (tf_files / JOURNAL_FILENAME).read_bytes() == journal
    monkeypatch.undo()
    assert inbox.undo()["undoes"] == kept["id"]
    assert not (tf_files / kept["destination"]).exists()


def test_torn_row_is_cut_off(tmp_path, monkeypatch):
    from tfguess.curate.inbox_journal import InboxJournal

    journal = InboxJournal(tmp_path / JOURNAL_FILENAME)
    journal.append(action="none", source="a.jpg", sha256="1", destination="", label="")
    size = journal.path.stat().st_size
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real(fd, data[:5]))  # a short write
    with pytest.raises(InboxError, match="cannot write the inbox journal"):
        journal.append(action="none", source="b.jpg", sha256="2", destination="", label="")
    monkeypatch.undo()
    assert journal.path.stat().st_size == size and [a.source for a in journal.read()] == ["a.jpg"]


def test_older_journal_gets_the_new_columns_and_a_damaged_one_is_named(tmp_path):
    from tfguess.curate.inbox_journal import InboxJournal

    path = tmp_path / JOURNAL_FILENAME
    path.write_text("id,time,action,source,sha256,destination,label,undoes\n"
                    "1,2024-01-01T00:00:00+00:00,copy,a.jpg,abc,data/x/a.jpg,x,\n")
    journal = InboxJournal(path)
    assert journal.read()[0].guess == ""
    journal.append(action="none", source="b.jpg", sha256="d", destination="", label="",
                   guess="x", guess_score="0.90000")
    rows = journal.read()
    assert [a.id for a in rows] == [1, 2] and rows[1].guess == "x" and rows[0].label == "x"
    assert path.read_text().splitlines()[0].endswith(",guess,guess_score")
    path.write_text(path.read_text() + "three,x,copy\n")
    with pytest.raises(InboxError, match=f"{JOURNAL_FILENAME} line 4 is damaged"):
        journal.read()


def test_labelled_photo_replaced_in_the_inbox_is_a_new_photo(inbox_setup):
    tf_files, inbox_dir = inbox_setup
    inbox = Inbox(tf_files, inbox_dir, auto_every=0, log=lambda *_: None)
    inbox.label("face_040.png", "face")
    assert "face_040.png" not in inbox.pending() and not inbox.refresh()
    shutil.copyfile(inbox_dir / "face_041.png", inbox_dir / "face_040.png")
    assert inbox.refresh() and "face_040.png" in inbox.pending()
    assert inbox.label("face_040.png", "face")["destination"] == "data/face/face_040-1.png"
