"""Installation on every supported platform: the dependency markers, and pip's resolver for each
platform (scripts/check-platforms.py; the resolver tests need the package index)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "check-platforms.py"


def _load_check():
    spec = importlib.util.spec_from_file_location("check_platforms", SCRIPT)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check = _load_check()
TF_PACKAGES = {"tensorflow", "tensorflow-cpu"}


def names(platform: str) -> set[str]:
    return {r.name for r in check.project_requirements(check.PLATFORMS[platform].env)}


@pytest.mark.parametrize("platform", check.PLATFORMS)
def test_one_tensorflow_package_everywhere(platform: str) -> None:
    assert len(names(platform) & TF_PACKAGES) == 1


def test_tensorflow_hub_is_an_extra() -> None:
    # tensorflow-hub pulls tf-keras, which pulls the full tensorflow beside tensorflow-cpu.
    assert not any("tensorflow-hub" in names(p) for p in check.PLATFORMS)
    extra = {r.name for r in check.project_requirements(check.PLATFORMS["linux-x86_64"].env,
                                                         ("tfhub",))}
    assert "tensorflow-hub" in extra


@pytest.mark.slow
def test_a_tfhub_handle_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from tfguess.core.errors import WeightsUnavailableError
    from tfguess.engine.backbones import tfhub

    monkeypatch.setitem(sys.modules, "tensorflow_hub", None)  # not installed
    with pytest.raises(WeightsUnavailableError, match=r"pip install 'tfguess\[tfhub\]'"):
        tfhub._hub_load("https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5")
    with pytest.raises(OSError):  # a local folder is TensorFlow's own business: no extra needed
        tfhub._hub_load(str(tmp_path))


def test_tensorflow_cpu_only_where_it_has_wheels() -> None:
    cpu = {p for p in check.PLATFORMS if "tensorflow-cpu" in names(p)}
    assert cpu == {"linux-x86_64", "windows-amd64"}


def test_platform_specific_packages() -> None:
    litert = {p for p in check.PLATFORMS if "ai-edge-litert" in names(p)}
    coreml = {p for p in check.PLATFORMS if "coremltools" in names(p)}
    assert litert == set(check.PLATFORMS) - {"macos-x86_64"}
    assert coreml == {"linux-x86_64", "macos-arm64", "macos-x86_64"}
    # Everything else is wanted everywhere.
    common = set.intersection(*(names(p) for p in check.PLATFORMS))
    assert common == names("linux-x86_64") - {"tensorflow-cpu", "ai-edge-litert", "coremltools"}


def test_platform_tags_are_listed_explicitly() -> None:
    linux = check.PLATFORMS["linux-aarch64"].tags
    assert {"manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_28_aarch64"} <= set(linux)
    assert not [t for t in linux if "x86_64" in t]
    mac = check.PLATFORMS["macos-arm64"].tags
    assert {"macosx_11_0_arm64", "macosx_14_0_arm64", "macosx_10_9_universal2"} <= set(mac)
    assert "macosx_10_9_x86_64" in check.PLATFORMS["macos-x86_64"].tags


# --- pip's resolver (the package index) -----------------------------------------------------

@pytest.mark.slow
def test_markers_of_dependencies_are_evaluated_for_the_target() -> None:
    # tqdm needs colorama on Windows only; docker needs pywin32 there.
    windows = check.pip_resolve(check.PLATFORMS["windows-amd64"], ["tqdm", "docker"])
    linux = check.pip_resolve(check.PLATFORMS["linux-x86_64"], ["tqdm", "docker"])
    assert {"colorama", "pywin32"} <= set(windows)
    assert not {"colorama", "pywin32"} & set(linux)


@pytest.mark.slow
def test_a_package_without_wheels_for_the_platform_fails() -> None:
    with pytest.raises(check.ResolveError, match="tensorflow-cpu"):
        check.pip_resolve(check.PLATFORMS["macos-arm64"], ["tensorflow-cpu>=2.16"])


@pytest.mark.slow
def test_every_platform_resolves() -> None:
    """The CI check: `pip install 'tfguess[export]'` on five platforms, and the Docker pins."""
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                          timeout=900)
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(check.TARGETS)} of {len(check.TARGETS)} targets resolve" in proc.stdout


# --- without ai-edge-litert (macOS x86_64): TensorFlow's copy of the TFLite schema ----------

@pytest.mark.slow
def test_tflite_metadata_is_the_same_with_tensorflows_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np
    import tensorflow as tf
    from tensorflow.lite.python import schema_py_generated as tf_schema

    from tfguess.engine import tflite_metadata as tm

    inputs = tf.keras.Input((4,))
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(2, activation="softmax")(inputs))
    tflite = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    info = tm.ImageClassifierInfo(name="m", description="d", version="1", labels=["ant", "bee"],
                                  norm_mean=[127.5], norm_std=[127.5])
    with_litert = tm.add_metadata(tflite, info)
    monkeypatch.setattr(tm, "tflite_schema", lambda: tf_schema)
    with_tf = tm.add_metadata(tflite, info)
    assert with_tf == with_litert
    assert tm.read_metadata(with_tf).labels == ["ant", "bee"]
    x = np.ones((1, 4), np.float32)
    interpreter = tf.lite.Interpreter(model_content=with_tf)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(out, model(x).numpy(), atol=1e-6)
