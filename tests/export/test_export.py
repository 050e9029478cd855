"""Export: every format checked against the trained Keras model it came from."""

from __future__ import annotations

import io
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import TEST_DATA

from tfguess.core.errors import ExportError, ModelError
from tfguess.core.runfolder import LABELS_FILENAME
from tfguess.data.images import load_image
from tfguess.engine.model import load_classifier
from tfguess.engine.runtime import TFLiteClassifier
from tfguess.engine.tflite_metadata import read_metadata, tensor_types
from tfguess.export import export
from tfguess.export.tflite import check_tflite_types

pytestmark = pytest.mark.slow  # every test here trains or loads a model


def keras_probs(classifier, paths: list[Path]) -> np.ndarray:
    x = np.stack([load_image(p, classifier.input_size, classifier.resize) for p in paths])
    return np.asarray(classifier.keras_model(x.astype(np.float32), training=False))


def tflite_probs(tfl: TFLiteClassifier, paths: list[Path]) -> np.ndarray:
    return tfl(np.stack([load_image(p, tfl.input_size, tfl.resize) for p in paths]))


def demo_images() -> list[Path]:
    return sorted(TEST_DATA.glob("*.jpg"))


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("demo_export")


def _export(tf_files: Path, out: Path, fmt: str, quantize: str = "none") -> dict[str, Path]:
    return {p.name: p for p in export(tf_files, formats=[fmt], quantize=quantize, out_dir=out,
                                      log=lambda *_: None, quiet=True)}


# One fixture per format: a missing optional exporter skips its own tests only.
@pytest.fixture(scope="module")
def tflite_export(demo_trained, export_dir) -> dict[str, Path]:
    return _export(demo_trained, export_dir, "tflite")


@pytest.fixture(scope="module")
def int8_export(demo_trained, export_dir) -> dict[str, Path]:
    return _export(demo_trained, export_dir, "tflite", "int8")


@pytest.fixture(scope="module")
def frozen_export(demo_trained, export_dir) -> dict[str, Path]:
    return _export(demo_trained, export_dir, "frozen-graph")


@pytest.fixture(scope="module")
def coreml_export(demo_trained, export_dir) -> dict[str, Path]:
    pytest.importorskip("coremltools", reason="Core ML export needs pip install 'tfguess[export]'")
    return _export(demo_trained, export_dir, "coreml")


@pytest.fixture(scope="module")
def savedmodel_export(demo_trained, export_dir) -> dict[str, Path]:
    return _export(demo_trained, export_dir, "savedmodel")


@pytest.fixture(scope="module")
def dynamic_export(demo_trained, export_dir) -> dict[str, Path]:
    return _export(demo_trained, export_dir, "tflite", "dynamic")


@pytest.fixture(scope="module")
def demo_exports(tflite_export, int8_export, dynamic_export, frozen_export,
                 savedmodel_export) -> dict[str, Path]:
    """Every format that needs no optional exporter (Core ML has a fixture of its own)."""
    return {**tflite_export, **int8_export, **dynamic_export, **frozen_export, **savedmodel_export}


def test_tflite_works_alone_with_labels_inside(demo_trained, tflite_export, tmp_path):
    alone = tmp_path / "shared" / "model.tflite"
    alone.parent.mkdir()
    shutil.copy(tflite_export["model.tflite"], alone)
    data = alone.read_bytes()

    # Independent readers: the appended zip holds the labels; the schema reads the metadata.
    labels = (demo_trained / LABELS_FILENAME).read_text().split()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.read("labels.txt").decode().split() == labels
        assert "tfguess.json" in zf.namelist()
    md = read_metadata(data)
    assert md.labels_file == "labels.txt" and md.labels == labels
    assert (md.norm_mean, md.norm_std) == ([0.0], [1.0])

    classifier = load_classifier(demo_trained)
    tfl = TFLiteClassifier(alone)
    assert (tfl.labels, tfl.input_size, tfl.resize) == (labels, classifier.input_size, classifier.resize)
    images = demo_images()
    ref, got = keras_probs(classifier, images), tflite_probs(tfl, images)
    assert np.abs(ref - got).max() < 1e-4
    assert (ref.argmax(1) == got.argmax(1)).all()
    assert np.allclose(tfl(np.stack([load_image(images[0], tfl.input_size, tfl.resize)]))[0], got[0],
                       atol=1e-6)  # batch size changes are handled

    from tfguess.guess.predict import guess

    lines: list[str] = []
    assert guess(alone, [images[0]], out=lines.append) == 0
    best = labels[int(got[0].argmax())]
    assert lines[0].startswith(f"{best} (score = ")


def test_int8_file_is_integer(demo_trained, tflite_export, int8_export):
    data = int8_export["model_int8.tflite"].read_bytes()
    types = tensor_types(data)
    assert set(types["inputs"] + types["outputs"]) <= {"UINT8", "INT8"}
    weights = {t for ts in types["weights"].values() for t in ts}
    assert weights == {"INT8"}
    classifier = load_classifier(demo_trained)
    images = demo_images()
    ref = keras_probs(classifier, images)
    got = tflite_probs(TFLiteClassifier(int8_export["model_int8.tflite"]), images)
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.9
    # A float file does not pass the int8 check.
    with pytest.raises(ExportError, match="did not quantize"):
        check_tflite_types(tflite_export["model.tflite"].read_bytes(), "int8")


def test_frozen_graph_classic_client(demo_trained, frozen_export):
    import tensorflow as tf
    from PIL import Image
    from skimage import data as skdata

    labels = frozen_export[LABELS_FILENAME].read_text().split()
    assert labels == (demo_trained / LABELS_FILENAME).read_text().split()
    jpegs = [p.read_bytes() for p in demo_images()]
    for photo in (skdata.chelsea(), skdata.coffee(), skdata.astronaut()):
        buf = io.BytesIO()
        Image.fromarray(photo).save(buf, "JPEG", quality=90)
        jpegs.append(buf.getvalue())

    # The classic TF1-style client, unchanged.
    gd = tf.compat.v1.GraphDef()
    gd.ParseFromString(frozen_export["retrained_graph.pb"].read_bytes())
    with tf.Graph().as_default() as g:
        tf.import_graph_def(gd, name="")
        with tf.compat.v1.Session(graph=g) as sess:
            probs = [sess.run("final_result:0", {"DecodeJpeg/contents:0": b}) for b in jpegs]
    assert all(p.shape == (1, len(labels)) for p in probs)

    from tfguess.guess.predict import Predictor

    predictor = Predictor.load(demo_trained)
    x = np.stack([load_image("x.jpg", predictor.input_size, predictor.resize, data=b) for b in jpegs])
    expected = predictor.probabilities(x)
    got = np.concatenate(probs)
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert np.abs(got - expected).max() < 0.02


def test_frozen_graph_has_no_default_valued_attrs(demo_exports):
    """TensorFlow 1.15 refuses attributes it does not know (explicit_paddings, ...): every
    attribute still in the graph differs from its op's default."""
    import tensorflow as tf
    from tensorflow.python.framework import op_def_registry

    gd = tf.compat.v1.GraphDef()
    gd.ParseFromString(demo_exports["retrained_graph.pb"].read_bytes())
    nodes = list(gd.node) + [n for f in gd.library.function for n in f.node_def]
    assert {"DecodeJpeg/contents", "final_result"} <= {n.name for n in gd.node}
    assert any(n.op == "DepthwiseConv2dNative" for n in nodes)
    for node in nodes:
        op_def = op_def_registry.get(node.op)
        for attr in op_def.attr:
            if attr.HasField("default_value") and attr.name in node.attr:
                assert node.attr[attr.name] != attr.default_value, (node.name, attr.name)
        assert "explicit_paddings" not in node.attr or node.attr["explicit_paddings"].list.i


def test_tflite_op_versions_load_in_the_task_library(demo_exports):
    """Per-channel dynamic-range dense layers would be FULLY_CONNECTED v12, which the Task
    Library 0.4.4 cannot load; every variant stays within the versions it loads."""
    from tfguess.engine.tflite_metadata import op_versions
    from tfguess.export.tflite import TASK_LIBRARY_OP_VERSIONS, tflite_runtime_notes

    for name in ("model.tflite", "model_int8.tflite", "model_dynamic.tflite"):
        data = demo_exports[name].read_bytes()
        versions = op_versions(data)
        assert "FULLY_CONNECTED" in versions
        assert all(v <= TASK_LIBRARY_OP_VERSIONS[op] for op, v in versions.items()), (name, versions)
        assert tflite_runtime_notes(data) == []
    assert op_versions(demo_exports["model_dynamic.tflite"].read_bytes())["FULLY_CONNECTED"] == 9


def test_onnx_runtime_parity(demo_trained, tmp_path):
    pytest.importorskip("tf2onnx")
    ort = pytest.importorskip("onnxruntime")
    import json

    (path,) = export(demo_trained, formats=["onnx"], out_dir=tmp_path, log=lambda *_: None, quiet=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    classifier = load_classifier(demo_trained)
    assert json.loads(props["labels"]) == classifier.labels
    description = json.loads(props["tfguess"])
    assert (description["input_size"], description["resize"]) == (classifier.input_size, classifier.resize)
    images = demo_images()
    x = np.stack([load_image(p, classifier.input_size, classifier.resize) for p in images])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert out.name == "probabilities"
    got = session.run(None, {inp.name: x.astype(np.float32)})[0]
    assert np.abs(got - keras_probs(classifier, images)).max() < 1e-4


def test_cli_export_prints_each_file_once(demo_trained, tmp_path, capsys):
    from tfguess.cli import main

    assert main(["-q", "export", str(demo_trained), "--format", "frozen-graph", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"Wrote {tmp_path / 'retrained_graph.pb'}", f"Wrote {tmp_path / LABELS_FILENAME}"]


def test_coreml_spec(demo_trained, coreml_export):
    ct = pytest.importorskip("coremltools")
    spec = ct.models.MLModel(str(coreml_export["model.mlpackage"]), skip_model_load=True).get_spec()
    assert spec.WhichOneof("Type") == "mlProgram"
    classifier = load_classifier(demo_trained)
    (image,) = spec.description.input
    kind = image.type.imageType
    assert image.name == "image" and image.type.WhichOneof("Type") == "imageType"
    assert (kind.width, kind.height) == (classifier.input_size, classifier.input_size)
    assert kind.colorSpace == ct.proto.FeatureTypes_pb2.ImageFeatureType.RGB
    assert spec.description.predictedFeatureName == "classLabel"
    assert spec.description.predictedProbabilitiesName == "classLabel_probs"
    # The description tells Vision users the resize the model was trained with.
    assert classifier.resize == "squash" and ".scaleFill" in image.shortDescription
    assert ".centerCrop" not in image.shortDescription

    ops = list(spec.mlProgram.functions["main"].block_specializations.values())[0].operations
    (classify,) = [op for op in ops if op.type == "classify"]
    classes = [v.immediateValue.tensor.strings.values[0]
               for v in classify.inputs["classes"].arguments[0].value.immediateValue.list.values]
    assert classes == (demo_trained / LABELS_FILENAME).read_text().split()

    # The image arrives as 0..255 pixels: the first arithmetic on it is the backbone's own
    # normalisation, (x - 127) / 128 for EfficientNet-Lite (no extra scale or bias folded in).
    assert classifier.meta["backbone"]["preprocessing"] == "(x - 127) / 128"
    consts = {op.outputs[0].name: op for op in ops if op.type == "const"}
    arithmetic = [op for op in ops if op.type in ("mul", "add", "sub", "real_div")][:2]
    assert [op.type for op in arithmetic] == ["mul", "add"]

    def value(op, key):
        raw = consts[op.inputs[key].arguments[0].name].attributes["val"].immediateValue.tensor
        return float(np.frombuffer(raw.bytes.values, np.float16)[0]) if raw.bytes.values else raw.floats.values[0]

    assert value(arithmetic[0], "y") == pytest.approx(1 / 128, rel=1e-3)
    assert value(arithmetic[1], "y") == pytest.approx(-127 / 128, rel=1e-3)


def test_savedmodel_signatures(demo_trained, demo_exports):
    import tensorflow as tf

    saved = demo_exports["saved_model"]
    labels = (demo_trained / LABELS_FILENAME).read_text().split()
    assert (saved / "assets" / LABELS_FILENAME).read_text().split() == labels
    loaded = tf.saved_model.load(str(saved))
    assert sorted(loaded.signatures) == ["classify_image", "serving_default"]
    classifier = load_classifier(demo_trained)
    images = demo_images()[:4]
    x = np.stack([load_image(p, classifier.input_size, classifier.resize) for p in images])
    got = loaded.signatures["serving_default"](pixels=tf.constant(x, tf.float32))["probabilities"]
    assert np.abs(np.asarray(got) - keras_probs(classifier, images)).max() < 1e-5

    # Encoded images in, labels and probabilities out, as `guess` prints them.
    from tfguess.guess.predict import Predictor

    predictor = Predictor.load(demo_trained)
    expected = {str(p.path): p.top for p in predictor.predict(images)}
    out = loaded.signatures["classify_image"](image_bytes=tf.constant([p.read_bytes() for p in images]))
    assert [row.decode() for row in out["labels"].numpy()[0]] == labels
    for path, label, score, probs in zip(images, out["label"].numpy(), out["score"].numpy(),
                                         out["probabilities"].numpy()):
        best, best_score = expected[str(path)][0]
        assert label.decode() == best and abs(score - best_score) < 0.02
        assert abs(probs.sum() - 1) < 1e-4


def test_existing_output_is_kept(demo_trained, tmp_path):
    target = tmp_path / "retrained_graph.pb"
    target.write_bytes(b"an older graph")
    messages: list[str] = []
    export(demo_trained, formats=["frozen-graph"], out_dir=tmp_path, log=messages.append)
    assert (tmp_path / "retrained_graph.previous.pb").read_bytes() == b"an older graph"
    assert target.stat().st_size > 1000
    assert any("previous" in m for m in messages)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temporary files left


def test_bad_requests_are_explained(demo_trained, tmp_path):
    with pytest.raises(ExportError, match="unknown export format pdf"):
        export(demo_trained, formats=["pdf"], out_dir=tmp_path)
    with pytest.raises(ExportError, match="tflite format only"):
        export(demo_trained, formats=["coreml"], quantize="int8", out_dir=tmp_path)
    with pytest.raises(ExportError, match="unknown quantization"):
        export(demo_trained, formats=["tflite"], quantize="int4", out_dir=tmp_path)
    with pytest.raises(ModelError, match="Train first"):
        export(tmp_path, formats=["tflite"])
    bare = tmp_path / "bare.tflite"
    bare.write_bytes(b"not a model at all")
    with pytest.raises(ModelError, match="bare.tflite"):
        TFLiteClassifier(bare)


@pytest.mark.shared
@pytest.mark.slow
def test_hymenoptera_exports_agree_with_keras(hymenoptera_trained, hymenoptera, tmp_path):
    """The closing figures: every TFLite variant and the frozen graph on hymenoptera/val."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from export_check import check

    rows = check(hymenoptera_trained, hymenoptera / "val", tmp_path)
    by_name = {r["model"]: r for r in rows}
    keras_acc = by_name["keras"]["accuracy"]
    assert by_name["tflite float32"]["agreement"] == 1.0
    assert by_name["tflite float32"]["max_diff"] < 1e-4
    assert by_name["tflite float16"]["agreement"] >= 0.99
    assert by_name["tflite dynamic"]["agreement"] >= 0.99
    assert by_name["tflite int8"]["agreement"] >= 0.97
    assert abs(by_name["tflite int8"]["accuracy"] - keras_acc) <= 0.02
    assert by_name["frozen graph (classic client)"]["agreement"] == 1.0


def test_coreml_without_coremltools_is_a_clear_error(demo_trained, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "coremltools", None)  # as on Windows or Linux arm64
    with pytest.raises(ExportError, match="Core ML export needs coremltools"):
        export(demo_trained, formats=["coreml"], out_dir=tmp_path, log=lambda *_: None)
    assert not list(tmp_path.iterdir())
