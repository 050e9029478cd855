"""The run folder owns its layout: a copied or moved TF_FILES keeps working."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import DEMO_DATA, TEST_DATA

from tfguess.core.runfolder import RunFolder


def test_paths_inside_the_folder_are_stored_relative(tmp_path):
    run = RunFolder.at(tmp_path / "tf")
    assert run.store(run.data / "cat" / "a.jpg") == "data/cat/a.jpg"
    assert run.store("/elsewhere/b.jpg") == "/elsewhere/b.jpg"
    assert run.resolve("data/cat/a.jpg") == run.data / "cat" / "a.jpg"
    assert run.resolve("/elsewhere/b.jpg") == Path("/elsewhere/b.jpg")
    assert RunFolder.of_model(tmp_path) == RunFolder.at(tmp_path)


@pytest.mark.slow
def test_a_copied_run_folder_trains_warm_evaluates_exports_and_guesses(tmp_path):
    from tfguess.core.config import TrainConfig
    from tfguess.curate.report import write_report
    from tfguess.export import export
    from tfguess.guess.predict import Predictor
    from tfguess.training.train import train

    original = tmp_path / "original"
    shutil.copytree(DEMO_DATA, original / "data")
    config = TrainConfig(quick=True, epochs=30, report=False)
    train(original, config, progress=False, log=lambda *_: None)
    copy = tmp_path / "moved" / "copy"
    shutil.copytree(original, copy)
    shutil.rmtree(original)

    result = train(copy, config, progress=False, log=lambda *_: None)
    assert result.summary["features"] == {"computed": 0, "cached": 180}
    summary = json.loads((copy / "run_summary.json").read_text())
    assert summary["image_dir"] == "data"
    assert all(not Path(p).is_absolute() for rows in summary["splits"].values() for p, _, _ in rows)

    page = write_report(copy, log=lambda *_: None)
    assert page == copy / "report" / "index.html" and page.stat().st_size > 1000
    written = export(copy, formats=["tflite"], quantize="int8", log=lambda *_: None)
    assert written == [copy / "export" / "model_int8.tflite"]
    predictor = Predictor.load(copy)
    preds = list(predictor.predict(sorted(TEST_DATA.glob("face_*.jpg"))))
    assert sum(p.label == "face" for p in preds) >= len(preds) - 1
