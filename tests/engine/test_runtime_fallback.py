"""Where ai-edge-litert has no wheel (Linux arm64), TFLite files run on TensorFlow's own
``tf.lite.Interpreter``: same features, and the run summary says which runtime was used."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import DEMO_DATA, TEST_DATA

pytestmark = pytest.mark.slow  # every test here trains or loads a model

HIDE_LITERT = "import sys; sys.modules['ai_edge_litert'] = None  # as if it were not installed\n"

CHILD = HIDE_LITERT + """
import json, sys
import numpy as np
from pathlib import Path
from tfguess.core.config import TrainConfig
from tfguess.training.train import train
from tfguess.guess.predict import Predictor
from tfguess.engine.features import BackboneRef
from tfguess.engine.model import read_meta
from tfguess.engine.runtime import TFLiteEngine, runtime_name
from tfguess.data.images import load_image

tf_files, out = Path(sys.argv[1]), Path(sys.argv[2])
train(tf_files, TrainConfig(quick=True, epochs=20, report=False), progress=False, log=lambda *_: None)
ref = BackboneRef.from_meta(read_meta(tf_files)["backbone"])
paths = sorted(Path(sys.argv[3]).glob("*.jpg"))
pixels = np.stack([load_image(p, ref.input_size, ref.resize) for p in paths])
np.save(out / "features.npy", TFLiteEngine(ref.engine_file)(pixels))
preds = list(Predictor.load(tf_files).predict(paths))
json.dump({"runtime": runtime_name(), "labels": [p.label for p in preds],
           "litert_loaded": "ai_edge_litert.interpreter" in sys.modules}, open(out / "out.json", "w"))
"""


@pytest.mark.slow
def test_train_and_guess_without_litert_match_litert(tmp_path):
    from tfguess.data.images import load_image
    from tfguess.engine.features import BackboneRef
    from tfguess.engine.model import read_meta
    from tfguess.engine.runtime import TFLiteEngine, runtime_name

    tf_files = tmp_path / "tf"
    shutil.copytree(DEMO_DATA, tf_files / "data")
    result = subprocess.run([sys.executable, "-c", CHILD, str(tf_files), str(tmp_path), str(TEST_DATA)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    child = json.loads((tmp_path / "out.json").read_text())
    assert child["runtime"] == "tf.lite" and not child["litert_loaded"]
    summary = json.loads((tf_files / "run_summary.json").read_text())
    assert summary["runtime"] == "tf.lite" and summary["engine"] == "tflite (tf.lite)"

    assert runtime_name() == "ai-edge-litert"
    ref = BackboneRef.from_meta(read_meta(tf_files)["backbone"])
    paths = sorted(TEST_DATA.glob("*.jpg"))
    pixels = np.stack([load_image(p, ref.input_size, ref.resize) for p in paths])
    ours = TFLiteEngine(ref.engine_file)(pixels)
    np.testing.assert_allclose(np.load(tmp_path / "features.npy"), ours, atol=1e-5, rtol=0)
    truth = [p.name.rsplit("_", 1)[0] for p in paths]
    assert sum(a == b for a, b in zip(child["labels"], truth)) >= 18
