"""``export``: the trained model as TFLite, Core ML, a SavedModel or a classic frozen graph.

Outputs go to ``TF_FILES/export/`` (or ``out_dir``):

=================  ==========================================================================
tflite             ``model.tflite`` (float32), ``model_float16.tflite``, ``model_dynamic.tflite``
                   or ``model_int8.tflite`` (``quantize``). The labels, the input normalisation
                   and a ``tfguess.json`` description (input size, resize recipe) are inside
                   the file (standard TFLite metadata + packed files), so it works alone.
coreml             ``model.mlpackage``: an ML Program classifier with an RGB image input.
savedmodel         ``saved_model/``: one ``serving_default`` signature, pixels -> probabilities.
frozen-graph       ``retrained_graph.pb`` + ``retrained_labels.txt``: JPEG bytes at
                   ``DecodeJpeg/contents:0`` -> probabilities ``[1, labels]`` at
                   ``final_result:0``, for TF1-style clients.
=================  ==========================================================================

All models take RGB pixels in 0..255 (the normalisation is inside them). Every output is written
under a temporary name and renamed into place; an output that already exists is kept as
``<name>.previous<ext>`` (replacing an older ``.previous``), and the log says so.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import ExportError
from .features import frozen_function
from .fsutil import atomic_write, publish_dir
from .images import CROP_FRACTION, ImageError, load_image
from .model import load_classifier, resolve_model_path
from .runfolder import LABELS_FILENAME, RunFolder
from .runtime import new_interpreter
from .tflite_metadata import (
    DESCRIPTION_FILE,
    ImageClassifierInfo,
    add_metadata,
    tensor_types,
    tflite_schema,
)

FORMATS = ("tflite", "coreml", "savedmodel", "frozen-graph")
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
TFLITE_FILENAMES = {
    "none": "model.tflite",
    "float16": "model_float16.tflite",
    "dynamic": "model_dynamic.tflite",
    "int8": "model_int8.tflite",
}
COREML_DIRNAME = "model.mlpackage"
SAVEDMODEL_DIRNAME = "saved_model"
FROZEN_GRAPH_FILENAME = "retrained_graph.pb"
REPRESENTATIVE_IMAGES = 100
JPEG_INPUT = "DecodeJpeg/contents"
OUTPUT_NAME = "final_result"
_ALIASES = {"frozen_graph": "frozen-graph", "pb": "frozen-graph", "saved_model": "savedmodel",
            "saved-model": "savedmodel", "mlpackage": "coreml"}


def export(
    tf_files: str | Path,
    formats: list[str],
    quantize: str = "none",
    out_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Export the model of ``tf_files`` (the folder or its ``model.keras``) in ``formats``.

    ``quantize`` applies to ``tflite``; ``int8`` calibrates on up to 100 of the training images
    listed in ``run_summary.json``. Returns the written paths.
    """
    wanted = [_ALIASES.get(f.lower(), f.lower()) for f in formats]
    unknown = [f for f in wanted if f not in FORMATS]
    if unknown or not wanted:
        raise ExportError(f"unknown export format {', '.join(unknown) or '(none given)'}: "
                          f"choose from {', '.join(FORMATS)}")
    if quantize not in QUANTIZATIONS:
        raise ExportError(f"unknown quantization {quantize!r}: choose from {', '.join(QUANTIZATIONS)}")
    if quantize != "none" and "tflite" not in wanted:
        raise ExportError(f"quantize={quantize} applies to the tflite format only: add --format tflite")
    model_path = resolve_model_path(tf_files)
    classifier = load_classifier(model_path)
    out = Path(out_dir).expanduser() if out_dir else RunFolder.of_model(model_path).export
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for fmt in dict.fromkeys(wanted):
        if fmt == "tflite":
            images = representative_images(RunFolder.of_model(model_path)) if quantize == "int8" else None
            data = tflite_bytes(classifier, quantize, images)
            written.append(_publish_bytes(data, out / TFLITE_FILENAMES[quantize], log))
        elif fmt == "coreml":
            written.append(_publish_dir(lambda d: save_coreml(classifier, d), out / COREML_DIRNAME, log))
        elif fmt == "savedmodel":
            written.append(_publish_dir(lambda d: save_savedmodel(classifier, d), out / SAVEDMODEL_DIRNAME, log))
        else:
            written.append(_publish_bytes(frozen_graph_bytes(classifier), out / FROZEN_GRAPH_FILENAME, log))
            labels = ("\n".join(classifier.labels) + "\n").encode()
            written.append(_publish_bytes(labels, out / LABELS_FILENAME, log))
    for path in written:
        log(f"Wrote {path}")
    return written


# --- writing outputs atomically, keeping what was there ----------------------------------------


def _publish_bytes(data: bytes, path: Path, log: Callable[[str], None]) -> Path:
    if path.is_file() and path.read_bytes() == data:
        return path
    previous = atomic_write(path, data, keep_previous=True)
    if previous:
        log(f"Kept the previous {path.name} as {previous.name}")
    return path


def _publish_dir(build: Callable[[Path], None], path: Path, log: Callable[[str], None]) -> Path:
    previous = publish_dir(build, path)
    if previous:
        log(f"Kept the previous {path.name} as {previous.name}")
    return path


# --- TFLite ------------------------------------------------------------------------------------


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


def _keras_function(classifier, batch: int | None, name: str = "pixels"):
    """The model as one concrete function with its weights frozen into constants."""
    return frozen_function(classifier.keras_model, classifier.input_size, batch, name)


def tflite_bytes(classifier, quantize: str = "none", images: list[str] | None = None) -> bytes:
    """The ``.tflite`` file, metadata included; int8 needs ``images`` to calibrate on."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [_keras_function(classifier, None)], tf.Module()
    )
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
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
    mean, std = [0.0], [1.0]
    if quantize == "int8":
        scale, zero = _input_quantization(data)
        # The uint8 input is q = pixel / scale + zero, i.e. (pixel - mean) / std with:
        mean, std = [-zero * scale], [scale]
    info = ImageClassifierInfo(
        name=f"tfguess classifier ({classifier.meta['backbone']['name']})",
        description=(f"Classifies an RGB image into {len(classifier.labels)} labels. Input: "
                     f"{classifier.input_size}x{classifier.input_size} pixels, 0..255 "
                     f"(resize: {_resize_text(classifier)}). Output: label probabilities."),
        version=str(classifier.meta.get("format_version", 1)),
        labels=classifier.labels,
        norm_mean=mean,
        norm_std=std,
        input_uint8=quantize == "int8",
        extra_files={DESCRIPTION_FILE: json.dumps(_description(classifier, quantize), indent=2).encode()},
        extra_descriptions={DESCRIPTION_FILE: "tfguess description: labels, input size, resize recipe."},
    )
    return add_metadata(data, info)


def _resize_text(classifier) -> str:
    if classifier.resize == "crop":
        return (f"shorter side to {round(classifier.input_size / CROP_FRACTION)}, centre crop, "
                "bicubic")
    return "whole image squashed to the input size, bicubic"


def _description(classifier, quantize: str) -> dict:
    meta = classifier.meta
    return {
        "format_version": meta.get("format_version", 1),
        "labels": classifier.labels,
        "backbone": meta["backbone"],
        "input_size": classifier.input_size,
        "resize": classifier.resize,
        "resize_recipe": _resize_text(classifier),
        "input": "RGB pixels 0..255",
        "quantize": quantize,
        "metrics": meta.get("metrics"),
    }


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


def _all_tensor_types(data: bytes) -> set[str]:
    schema = tflite_schema()
    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    graph = schema.Model.GetRootAs(data, 0).Subgraphs(0)
    return {names[graph.Tensors(i).Type()] for i in range(graph.TensorsLength())}


# --- Core ML -----------------------------------------------------------------------------------


def _coremltools_platform() -> bool:
    """Whether coremltools publishes wheels for this machine (macOS, Linux x86_64)."""
    import platform
    import sys

    return sys.platform == "darwin" or (sys.platform == "linux" and platform.machine() == "x86_64")


def save_coreml(classifier, path: Path) -> None:
    """An ML Program classifier: image input ``image`` (RGB, 0..255 as is), labels built in."""
    try:
        import coremltools as ct
    except ImportError:
        import platform

        raise ExportError(
            "Core ML export needs coremltools, which is not installed here"
            + (f" (it has no wheel for {platform.system()} {platform.machine()}: export on macOS "
               "or Linux x86_64 instead)" if not _coremltools_platform() else
               ": pip install 'tfguess[export]'")) from None

    size = classifier.input_size
    mlmodel = ct.convert(
        [_keras_function(classifier, 1, name="image")],
        source="tensorflow",
        inputs=[ct.ImageType(name="image", shape=(1, size, size, 3), scale=1.0, bias=[0.0, 0.0, 0.0],
                             color_layout=ct.colorlayout.RGB)],
        classifier_config=ct.ClassifierConfig(list(classifier.labels)),
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS15,
    )
    mlmodel.short_description = (f"tfguess classifier ({classifier.meta['backbone']['name']}): "
                                 f"{', '.join(classifier.labels)}")
    mlmodel.input_description["image"] = (
        f"RGB image, {size}x{size} ({_resize_text(classifier)}; with Vision use "
        "imageCropAndScaleOption = .centerCrop)")
    mlmodel.user_defined_metadata["tfguess"] = json.dumps(_description(classifier, "none"))
    mlmodel.save(str(path))


# --- SavedModel --------------------------------------------------------------------------------


def save_savedmodel(classifier, path: Path) -> None:
    import keras
    import tensorflow as tf

    model, size = classifier.keras_model, classifier.input_size
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default",
        lambda pixels: {"probabilities": model(pixels, training=False)},
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="pixels")],
    )
    archive.write_out(str(path), verbose=False)


# --- the classic frozen graph ------------------------------------------------------------------


def _resize_like_pil(image, size: int, crop: bool):
    """``images.load_image``'s resize in TensorFlow ops: the same source box and bicubic
    (Keys a=-0.5, antialiased) kernel, one pass per axis, each rounded to 0..255 as Pillow does,
    in Pillow's order (13.0: vertical first when ``h > 2 * w - size``, measured). Outputs differ
    from Pillow's by at most one grey level (fixed-point vs float weights)."""
    import tensorflow as tf

    shape = tf.shape(image)
    hw = tf.cast(shape[:2], tf.float32)
    h, w = hw[0], hw[1]
    if crop:
        scale = round(size / CROP_FRACTION) / tf.minimum(h, w)
        side = size / scale
        left, top = tf.maximum((w - side) / 2, 0.0), tf.maximum((h - side) / 2, 0.0)
        box_w, box_h = tf.minimum(side, w - left), tf.minimum(side, h - top)
    else:
        left, top, box_w, box_h = 0.0, 0.0, w, h
    sx, sy = size / box_w, size / box_h

    def rounded(x):
        return tf.clip_by_value(tf.floor(x + 0.5), 0.0, 255.0)

    def horizontal(x, rows):
        return rounded(tf.raw_ops.ScaleAndTranslate(
            images=x, size=tf.stack([rows, size]), scale=tf.stack([1.0, sx]),
            translation=tf.stack([0.0, -left * sx]), kernel_type="keyscubic", antialias=True))

    def vertical(x, cols):
        return rounded(tf.raw_ops.ScaleAndTranslate(
            images=x, size=tf.stack([size, cols]), scale=tf.stack([sy, 1.0]),
            translation=tf.stack([-top * sy, 0.0]), kernel_type="keyscubic", antialias=True))

    x = tf.cast(image, tf.float32)[None]
    return tf.cond(shape[0] > 2 * shape[1] - size,
                   lambda: horizontal(vertical(x, shape[1]), size),
                   lambda: vertical(horizontal(x, shape[0]), size))


def _decode_like_pil(contents, size: int):
    """Decode as ``images.decode_image`` does: a large JPEG is decoded at 1/2, 1/4 or 1/8 scale
    like Pillow's draft mode. (EXIF orientation is not applied here.)"""
    import tensorflow as tf

    from .images import DRAFT_MARGIN

    def decode(ratio: int):
        # DecodeJpeg also decodes PNG and (non-animated) GIF.
        return lambda: tf.io.decode_jpeg(contents, channels=3, ratio=ratio,
                                         dct_method="INTEGER_ACCURATE", name="DecodeJpeg")

    def jpeg_ratio():
        hw = tf.cast(tf.io.extract_jpeg_shape(contents)[:2], tf.float32)
        need = size * DRAFT_MARGIN
        scale = need / tf.reduce_min(hw)
        wanted = tf.math.ceil(hw * scale)
        reduction = tf.reduce_min(tf.math.floordiv(hw, wanted))
        return tf.where(tf.reduce_min(hw) >= 2 * need, reduction, 1.0)

    ratio = tf.cond(tf.io.is_jpeg(contents), jpeg_ratio, lambda: 1.0)
    return tf.case([(ratio >= 8, decode(8)), (ratio >= 4, decode(4)), (ratio >= 2, decode(2))],
                   default=decode(1))


def frozen_graph_bytes(classifier) -> bytes:
    """A GraphDef with the weights as constants: JPEG bytes -> ``[1, labels]`` probabilities."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    model, size, crop = classifier.keras_model, classifier.input_size, classifier.resize == "crop"

    @tf.function(input_signature=[tf.TensorSpec([], tf.string, name="contents")])
    def classify(contents):
        image = _decode_like_pil(contents, size)
        probs = model(_resize_like_pil(image, size, crop), training=False)
        return tf.identity(probs, name=OUTPUT_NAME)

    graph_def = convert_variables_to_constants_v2(classify.get_concrete_function()).graph.as_graph_def()
    placeholders = [n for n in graph_def.node if n.op == "Placeholder"]
    if len(placeholders) != 1 or not any(n.name == OUTPUT_NAME for n in graph_def.node):
        raise ExportError("unexpected frozen graph: expected one input placeholder and final_result")
    old = placeholders[0].name
    placeholders[0].name = JPEG_INPUT
    for node in graph_def.node:
        for i, name in enumerate(node.input):
            base = name.lstrip("^").split(":")[0]
            if base == old:
                node.input[i] = name.replace(old, JPEG_INPUT, 1)
    return graph_def.SerializeToString()
