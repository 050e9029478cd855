"""The ``tflite`` format: ``model.tflite`` (float32), ``model_float16.tflite``,
``model_dynamic.tflite`` or ``model_int8.tflite``, with the labels, the input normalisation and a
``tfguess.json`` description inside (standard TFLite metadata + packed files), so it works alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tfguess.core.errors import ExportError
from tfguess.core.runfolder import RunFolder
from tfguess.data.images import ImageError, load_image
from tfguess.engine.runtime import new_interpreter
from tfguess.engine.tflite_metadata import (
    DESCRIPTION_FILE,
    ImageClassifierInfo,
    add_metadata,
    op_versions,
    tensor_types,
    tflite_schema,
)
from tfguess.export.common import (
    ExportJob,
    description,
    keras_function,
    publish_bytes,
    resize_text,
    squash_client_note,
)

TFLITE_FILENAMES = {
    "none": "model.tflite",
    "float16": "model_float16.tflite",
    "dynamic": "model_dynamic.tflite",
    "int8": "model_int8.tflite",
}
REPRESENTATIVE_IMAGES = 100
# The highest operator versions that the TFLite Task Library 0.4.4 (tflite-support's last
# release) and MediaPipe load, for the operators tfguess exports contain (checked by
# tests/export/test_export_clients.py). A newer version needs a newer runtime (LiteRT / ai-edge-litert).
TASK_LIBRARY_RUNTIME = "the TFLite Task Library (tflite-support 0.4.4)"
TASK_LIBRARY_OP_VERSIONS = {
    "ADD": 4, "CONV_2D": 5, "DEPTHWISE_CONV_2D": 6, "DEQUANTIZE": 4, "FULLY_CONNECTED": 9,
    "MEAN": 3, "MUL": 5, "QUANTIZE": 2, "SOFTMAX": 3,
}


def write(job: ExportJob) -> list[Path]:
    """The ``.tflite`` file of ``job.config.quantize``; notes what may keep it from loading in
    the Task Library."""
    quantize = job.config.quantize
    images = representative_images(RunFolder.of_model(job.model_path)) if quantize == "int8" else None
    data = tflite_bytes(job.classifier, quantize, images)
    path = publish_bytes(data, job.out / TFLITE_FILENAMES[quantize], job.log)
    for note in tflite_runtime_notes(data):
        job.log(f"Note: {path.name}: {note}")
    return [path]


def representative_images(run: RunFolder, n: int = REPRESENTATIVE_IMAGES) -> list[str]:
    """Up to ``n`` training image paths (spread evenly over the list in ``run_summary.json``)."""
    summary = run.summary
    try:
        train = json.loads(summary.read_text(encoding="utf-8"))["splits"]["train"]
    except (OSError, KeyError, ValueError) as exc:
        raise ExportError(
            f"int8 quantization calibrates on the training images listed in {summary}, which "
            f"cannot be read ({exc.__class__.__name__}): train the model in this folder first"
        ) from exc
    paths = [str(run.resolve(row[0])) for row in train if run.resolve(row[0]).is_file()]
    if len(paths) < min(10, len(train)) or not paths:
        raise ExportError(f"int8 quantization needs the training images; only {len(paths)} of the "
                          f"{len(train)} listed in {summary} are still on disk")
    step = max(1, len(paths) / n)
    return [paths[int(i * step)] for i in range(min(n, len(paths)))]


def tflite_bytes(classifier, quantize: str = "none", images: list[str] | None = None) -> bytes:
    """The ``.tflite`` file, metadata included; int8 needs ``images`` to calibrate on."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [keras_function(classifier, None)], tf.Module()
    )
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "dynamic":
        # Per-channel int8 dense weights make FULLY_CONNECTED version 12, which the TFLite Task
        # Library 0.4.4 cannot load; per-tensor (version 9) loads everywhere. Conv layers keep
        # per-channel weights.
        converter._experimental_disable_per_channel_quantization_for_dense_layers = True
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        pixels = []
        for path in images or []:
            try:
                pixels.append(load_image(path, classifier.input_size, classifier.resize))
            except (ImageError, OSError):
                continue
        if not pixels:
            raise ExportError("int8 quantization needs representative images; none could be read")

        def representative():
            for p in pixels:
                yield [p[None].astype(np.float32)]

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    data = converter.convert()
    check_tflite_types(data, quantize)
    return add_metadata(data, _metadata(classifier, quantize, data))


def _metadata(classifier, quantize: str, data: bytes) -> ImageClassifierInfo:
    """The file's metadata: labels, input normalisation, description (``tfguess.json``)."""
    mean, std = [0.0], [1.0]
    if quantize == "int8":
        scale, zero = _input_quantization(data)
        # The uint8 input is q = pixel / scale + zero, i.e. (pixel - mean) / std with:
        mean, std = [-zero * scale], [scale]
    return ImageClassifierInfo(
        name=f"tfguess classifier ({classifier.backbone_name})",
        description=(f"Classifies an RGB image into {len(classifier.labels)} labels. Input: "
                     f"{classifier.input_size}x{classifier.input_size} pixels, 0..255 "
                     f"(resize: {resize_text(classifier)}). Output: label probabilities."
                     + squash_client_note(classifier.resize)),
        version=str(classifier.meta.get("format_version", 1)),
        labels=classifier.labels,
        norm_mean=mean,
        norm_std=std,
        input_uint8=quantize == "int8",
        extra_files={DESCRIPTION_FILE: json.dumps(description(classifier, quantize), indent=2).encode()},
        extra_descriptions={DESCRIPTION_FILE: "tfguess description: labels, input size, resize recipe."},
    )


def _input_quantization(data: bytes) -> tuple[float, int]:
    scale, zero = new_interpreter(model_content=data).get_input_details()[0]["quantization"]
    return float(scale), int(zero)


def check_tflite_types(data: bytes, quantize: str) -> dict:
    """Raise ExportError unless the file's tensors have the types ``quantize`` promises."""
    types = tensor_types(data)
    weights = [t for ts in types["weights"].values() for t in ts]
    integer = {"UINT8", "INT8"}
    problems = []
    if quantize == "int8":
        io_types = types["inputs"] + types["outputs"]
        if not set(io_types) <= integer:
            problems.append(f"inputs/outputs are {io_types}, not uint8/int8")
        if not weights or set(weights) != {"INT8"}:
            problems.append(f"conv/dense weights are {sorted(set(weights))}, not all INT8")
    elif quantize == "dynamic" and "INT8" not in weights:
        problems.append(f"no int8 weights (conv/dense weights are {sorted(set(weights))})")
    elif quantize == "float16" and "FLOAT16" not in _all_tensor_types(data):
        problems.append("no float16 tensors in the file")
    if problems:
        raise ExportError(f"the TFLite converter did not quantize the model to {quantize}: "
                          + "; ".join(problems))
    return types


def tflite_runtime_notes(data: bytes) -> list[str]:
    """What keeps a ``.tflite`` from loading in the Task Library 0.4.4 (its operator versions)."""
    too_new = [f"{op} v{v}" for op, v in sorted(op_versions(data).items())
               if v > TASK_LIBRARY_OP_VERSIONS.get(op, 0)]
    if not too_new:
        return []
    return [f"{', '.join(too_new)} may be newer than {TASK_LIBRARY_RUNTIME} and MediaPipe load "
            "(checked up to " + ", ".join(f"{op} v{v}" for op, v in TASK_LIBRARY_OP_VERSIONS.items()
                                           if op in op_versions(data))
            + "); LiteRT (ai-edge-litert) and `tfguess guess` load it"]


def _all_tensor_types(data: bytes) -> set[str]:
    schema = tflite_schema()
    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    graph = schema.Model.GetRootAs(data, 0).Subgraphs(0)
    return {names[graph.Tensors(i).Type()] for i in range(graph.TensorsLength())}
