"""Every error a user or the OS can cause ends in one line naming the path or value, exit code 2;
no traceback unless --debug. One case per error type, through the command line's ``main``."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import DEMO_DATA, TEST_DATA

from tfguess import cli
from tfguess.core.errors import (
    ConfigError,
    DatasetError,
    ExportError,
    ModelError,
    ReportError,
    TfguessError,
    WeightsUnavailableError,
)


def run(capsys, *args) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_every_error_type_is_a_tfguess_error():
    for cls in (ConfigError, DatasetError, ExportError, ModelError, ReportError,
                WeightsUnavailableError):
        assert issubclass(cls, TfguessError) and cls.exit_code == 2


def test_config_error_names_the_setting(capsys, tmp_path):
    code, _, err = run(capsys, "train", tmp_path, "--validation-pct", "100")
    assert code == 2 and "validation_pct" in one_line(err)


def test_unknown_backbone_suggests_the_closest(capsys, tmp_path):
    code, _, err = run(capsys, "train", tmp_path, "--backbone", "efficientnet_lite9")
    assert code == 2 and "Did you mean 'efficientnet_lite" in one_line(err)


def test_dataset_error_names_the_folder(capsys, tmp_path):
    code, _, err = run(capsys, "train", tmp_path / "nowhere")
    assert code == 2 and str(tmp_path / "nowhere" / "data") in one_line(err)


def test_model_error_for_a_folder_without_model(capsys, tmp_path):
    code, _, err = run(capsys, "guess", tmp_path, TEST_DATA / "face_091.jpg")
    line = one_line(err)
    assert code == 2 and str(tmp_path) in line and "tfguess train" in line


@pytest.mark.parametrize("damage", ["not a zip", "no description", "bad member"])
def test_model_error_for_a_damaged_model(capsys, tmp_path, damage):
    model = tmp_path / "model.keras"
    if damage == "not a zip":
        model.write_bytes(b"PK\x03\x04 this is not really a zip file")
    else:
        with zipfile.ZipFile(model, "w") as z:
            z.writestr("config.json", "{}")
            if damage == "bad member":
                z.writestr("tfguess.json", "{not json")
    code, _, err = run(capsys, "guess", model, TEST_DATA / "face_091.jpg")
    line = one_line(err)
    assert code == 2 and str(model) in line


def test_report_error_for_an_untrained_folder(capsys, tmp_path):
    code, _, err = run(capsys, "evaluate", tmp_path)
    assert code == 2 and "run_summary.json" in one_line(err)


def test_export_error_names_the_conflicting_flags(capsys, tmp_path):
    code, _, err = run(capsys, "export", tmp_path, "--format", "coreml", "--quantize", "float16")
    assert code == 2 and "--format tflite" in one_line(err)


def test_export_checks_its_flags_and_model_before_importing_tensorflow(tmp_path):
    # a user's mistake is answered at once, not after TensorFlow's seconds of start-up
    script = ("import sys; from tfguess import cli; "
              "codes = [cli.main(['export', sys.argv[1], '--format', 'coreml', '--quantize', 'float16']), "
              "cli.main(['export', sys.argv[1] + '/missing'])]; "
              "print(codes, 'tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.split() == ["[2,", "2]", "False"], done.stdout + done.stderr
    assert "--format tflite" in done.stderr and "model not found" in done.stderr


def test_weights_error_names_the_file(capsys, tmp_path):
    shutil.copytree(DEMO_DATA, tmp_path / "data")
    code, _, err = run(capsys, "train", tmp_path, "--weights", tmp_path / "missing.pth")
    assert code == 2 and str(tmp_path / "missing.pth") in one_line(err)


def test_os_error_names_the_path_and_the_fix(capsys, tmp_path):
    blocker = tmp_path / "a file"
    blocker.write_text("x")
    code, _, err = run(capsys, "guess-dir", TEST_DATA, TEST_DATA, blocker / "out")
    # the model is checked first: a folder without a model
    assert code == 2
    code, _, err = run(capsys, "train", blocker / "tf_files", "--image-dir", DEMO_DATA)
    line = one_line(err)
    assert code == 2 and str(blocker) in line and "path" in line


def test_broken_pipe_exits_quietly(capsys, monkeypatch):
    class Closed(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):
            return sys.__stdout__.fileno()

    monkeypatch.setattr(cli, "_silence_stdout", lambda: None)
    monkeypatch.setattr(sys, "stdout", Closed())
    assert cli.main(["backbones"]) == 141
    assert capsys.readouterr().err == ""


def test_a_bug_is_one_line_without_debug_and_a_traceback_with(capsys, monkeypatch):
    def boom(args):
        raise RuntimeError("something impossible")

    monkeypatch.setattr(cli, "_run", boom)
    code, _, err = run(capsys, "backbones")
    assert code == 70 and "RuntimeError: something impossible" in one_line(err)
    assert "--debug" in err
    code, _, err = run(capsys, "--debug", "backbones")
    assert code == 70 and "Traceback" in err


def test_ctrl_c_exits_130(capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_run", interrupted)
    code, _, err = run(capsys, "backbones")
    assert code == 130 and "Traceback" not in err
