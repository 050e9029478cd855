"""``export``: the trained model as TFLite, Core ML, a SavedModel or a classic frozen graph.

Outputs go to ``TF_FILES/export/`` (or ``out_dir``):

=================  ==========================================================================
tflite             ``model.tflite`` (float32), ``model_float16.tflite``, ``model_dynamic.tflite``
                   or ``model_int8.tflite`` (``quantize``). The labels, the input normalisation
                   and a ``tfguess.json`` description (input size, resize recipe) are inside
                   the file (standard TFLite metadata + packed files), so it works alone.
coreml             ``model.mlpackage``: an ML Program classifier with an RGB image input.
savedmodel         ``saved_model/``: ``serving_default`` (pixels -> probabilities) and
                   ``classify_image`` (encoded image bytes -> labels, probabilities, top label
                   and score); the labels are its asset ``assets/retrained_labels.txt``.
frozen-graph       ``retrained_graph.pb`` + ``retrained_labels.txt``: JPEG bytes at
                   ``DecodeJpeg/contents:0`` -> probabilities ``[1, labels]`` at
                   ``final_result:0``, for TF1-style clients (loads in TensorFlow 1.15 and 2.x:
                   attributes at their default value are left out).
onnx               ``model.onnx``: pixels ``[N, size, size, 3]`` -> probabilities; the labels and
                   the description are in the model's metadata properties (``labels``,
                   ``tfguess``, both JSON).
=================  ==========================================================================

All models take RGB pixels in 0..255 (the normalisation is inside them). Every output is written
under a temporary name and renamed into place; an output that already exists is kept as
``<name>.previous<ext>`` (replacing an older ``.previous``), and the log says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tfguess.core.errors import ExportError
from tfguess.core.fsutil import atomic_write, publish_dir
from tfguess.core.runfolder import LABELS_FILENAME, RunFolder
from tfguess.data.images import (
    CROP_FRACTION,
    PAD_VALUE,
    SQUASH_BILINEAR_MAX,
    SUBPIXEL,
    ImageError,
    load_image,
)
from tfguess.engine.features import frozen_function
from tfguess.engine.model import load_classifier, resolve_model_path
from tfguess.engine.runtime import new_interpreter
from tfguess.engine.tflite_metadata import (
    DESCRIPTION_FILE,
    ImageClassifierInfo,
    add_metadata,
    op_versions,
    tensor_types,
    tflite_schema,
)

FORMATS = ("tflite", "coreml", "savedmodel", "frozen-graph", "onnx")
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
ONNX_FILENAME = "model.onnx"
ONNX_OPSET = 15
BYTES_SIGNATURE = "classify_image"
REPRESENTATIVE_IMAGES = 100
JPEG_INPUT = "DecodeJpeg/contents"
OUTPUT_NAME = "final_result"
_ALIASES = {"frozen_graph": "frozen-graph", "pb": "frozen-graph", "saved_model": "savedmodel",
            "saved-model": "savedmodel", "mlpackage": "coreml"}
# The highest operator versions that the TFLite Task Library 0.4.4 (tflite-support's last
# release) and MediaPipe load, for the operators tfguess exports contain (checked by
# tests/export/test_export_clients.py). A newer version needs a newer runtime (LiteRT / ai-edge-litert).
TASK_LIBRARY_RUNTIME = "the TFLite Task Library (tflite-support 0.4.4)"
TASK_LIBRARY_OP_VERSIONS = {
    "ADD": 4, "CONV_2D": 5, "DEPTHWISE_CONV_2D": 6, "DEQUANTIZE": 4, "FULLY_CONNECTED": 9,
    "MEAN": 3, "MUL": 5, "QUANTIZE": 2, "SOFTMAX": 3,
}


def export(
    tf_files: str | Path,
    formats: list[str],
    quantize: str = "none",
    out_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
    quiet: bool = False,
) -> list[Path]:
    """Export the model of ``tf_files`` (the folder or its ``model.keras``) in ``formats``.

    ``quantize`` applies to ``tflite``; ``int8`` calibrates on up to 100 of the training images
    listed in ``run_summary.json``. ``quiet`` silences the converters' own progress bars and
    warnings. Logs one "Wrote" line a file and returns the written paths.
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
            path = _publish_bytes(data, out / TFLITE_FILENAMES[quantize], log)
            for note in tflite_runtime_notes(data):
                log(f"Note: {path.name}: {note}")
            written.append(path)
        elif fmt == "coreml":
            with _converter_quiet(quiet):
                written.append(_publish_dir(lambda d: save_coreml(classifier, d), out / COREML_DIRNAME, log))
        elif fmt == "onnx":
            with _converter_quiet(quiet):
                data = onnx_bytes(classifier)
            written.append(_publish_bytes(data, out / ONNX_FILENAME, log))
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
    mean, std = [0.0], [1.0]
    if quantize == "int8":
        scale, zero = _input_quantization(data)
        # The uint8 input is q = pixel / scale + zero, i.e. (pixel - mean) / std with:
        mean, std = [-zero * scale], [scale]
    info = ImageClassifierInfo(
        name=f"tfguess classifier ({classifier.meta['backbone']['name']})",
        description=(f"Classifies an RGB image into {len(classifier.labels)} labels. Input: "
                     f"{classifier.input_size}x{classifier.input_size} pixels, 0..255 "
                     f"(resize: {_resize_text(classifier)}). Output: label probabilities."
                     + squash_client_note(classifier.resize)),
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
    squash = (f"bilinear as OpenCV's warpAffine (what MediaPipe does); antialiased bilinear for "
              f"images over {SQUASH_BILINEAR_MAX:g}x the input size")
    if classifier.resize == "pad":
        return (f"whole image centred on a square of grey {PAD_VALUE} (letterbox; side = the "
                f"longer side), then squashed to the input size, {squash}")
    return f"whole image squashed to the input size, {squash}"


# Top-1 agreement of a crop or pad model fed squashed pixels (what MediaPipe and the Task Library
# give a TFLite model) with the same model fed its own preprocessing, on mixed-shape val photos
# (bench/resize_check.py --agreement: furniture4, clothing5 and instruments10 val, 670 photos,
# one model per set and recipe).
SQUASH_CLIENT_AGREEMENT = {"crop": 0.949, "pad": 0.954}


def squash_client_note(resize: str) -> str:
    """What a client that always squashes the whole image sees with a ``resize`` model."""
    if resize == "squash":
        return ""
    agreement = SQUASH_CLIENT_AGREEMENT.get(resize)
    measured = (f" (measured: the top label agreed on {agreement:.1%} of mixed-shape photos)"
                if agreement is not None else "")
    how = ("crop the central 87.5 % square yourself" if resize == "crop"
           else f"pad the image to a square with grey {PAD_VALUE} yourself")
    done = {"crop": "centre-cropped", "pad": "padded"}[resize]
    return (f" This model was trained on {done} images: clients that squash the whole image "
            f"(MediaPipe, the TFLite Task Library) give it other pixels on non-square photos"
            f"{measured}; {how} before handing it over (a square image needs nothing).")


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
    mlmodel.input_description["image"] = coreml_input_description(classifier)
    mlmodel.user_defined_metadata["tfguess"] = json.dumps(_description(classifier, "none"))
    mlmodel.save(str(path))


def coreml_input_description(classifier) -> str:
    """How to feed the image, in Vision's terms."""
    size = classifier.input_size
    if classifier.resize == "squash":
        return (f"RGB image, {size}x{size}: the whole image resized to {size}x{size}, "
                "aspect ratio not kept (with Vision: imageCropAndScaleOption = .scaleFill)")
    if classifier.resize == "pad":
        return (f"RGB image, {size}x{size}: the whole image centred on a square of grey "
                f"{PAD_VALUE} (letterbox), resized to {size}x{size}. Vision's .scaleFit pads "
                f"with black: pad the image to a square with grey {PAD_VALUE} yourself, then use "
                ".scaleFill")
    return (f"RGB image, {size}x{size}: the central {CROP_FRACTION:.1%} square of the image "
            f"resized to {size}x{size}, bicubic ({_resize_text(classifier)}). Vision's .centerCrop "
            "takes the whole central square instead: crop the central square to "
            f"{CROP_FRACTION:.1%} of its side yourself (or set the request's regionOfInterest), "
            "then use .scaleFill")


@contextlib.contextmanager
def _converter_quiet(quiet: bool):
    """Silence a converter's progress bars, Python warnings and log lines (coremltools, tf2onnx)."""
    if not quiet:
        yield
        return
    import logging
    import warnings

    from tfguess.core.quiet import quiet_stderr

    loggers = [logging.getLogger(n) for n in ("coremltools", "tf2onnx", "tensorflow")]
    levels = [lg.level for lg in loggers]
    saved = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), quiet_stderr():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if saved is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = saved


# --- SavedModel --------------------------------------------------------------------------------


def save_savedmodel(classifier, path: Path) -> None:
    """Two signatures: ``serving_default`` takes pixels ``[N, size, size, 3]`` (0..255) and
    returns ``probabilities``; ``classify_image`` takes encoded images (``image_bytes``, a
    ``[N]`` string tensor: JPEG, PNG, GIF or BMP, decoded and resized as ``guess`` does, EXIF
    orientation not applied) and returns ``labels`` ``[N, labels]``, ``probabilities``, the top
    ``label`` and its ``score``. The labels file is the asset ``assets/retrained_labels.txt``."""
    import keras
    import tensorflow as tf

    model, size, resize = classifier.keras_model, classifier.input_size, classifier.resize
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default",
        lambda pixels: {"probabilities": model(pixels, training=False)},
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="pixels")],
    )
    with tempfile.TemporaryDirectory() as tmp:
        labels_file = Path(tmp) / LABELS_FILENAME
        labels_file.write_text("\n".join(classifier.labels) + "\n", encoding="utf-8")
        asset = tf.saved_model.Asset(str(labels_file))
        _add_bytes_endpoint(archive, model, size, resize, asset)
        # The archive saves this object: an Asset tracked by it is copied into assets/.
        archive._tf_trackable.labels_file = asset
        archive.write_out(str(path), verbose=False)


def _add_bytes_endpoint(archive, model, size: int, resize: str, asset) -> None:
    import tensorflow as tf

    def classify_image(image_bytes):
        labels = tf.strings.split(tf.strings.strip(tf.io.read_file(asset)), "\n")

        def one(contents):
            pixels = _resize_like_load_image(_decode_like_pil(contents, size), size, resize)
            return model(pixels, training=False)[0]

        probs = tf.map_fn(one, image_bytes, fn_output_signature=tf.float32)
        return {"labels": tf.broadcast_to(labels, tf.shape(probs)), "probabilities": probs,
                "label": tf.gather(labels, tf.argmax(probs, axis=-1)),
                "score": tf.reduce_max(probs, axis=-1)}

    archive.add_endpoint(BYTES_SIGNATURE, classify_image,
                         input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])


# --- ONNX --------------------------------------------------------------------------------------


def onnx_bytes(classifier) -> bytes:
    """``model.onnx``: pixels ``[N, size, size, 3]`` (RGB, 0..255) -> ``probabilities``, with
    the labels (``labels``) and the description (``tfguess``, with the resize recipe) as JSON
    metadata properties. Needs the ``onnx`` extra (tf2onnx)."""
    try:
        import tf2onnx
    except ImportError as exc:
        raise ExportError("the onnx format needs tf2onnx: pip install 'tfguess[onnx]'") from exc
    import tensorflow as tf

    model, size = classifier.keras_model, classifier.input_size
    spec = [tf.TensorSpec([None, size, size, 3], tf.float32, name="pixels")]
    fn = tf.function(lambda pixels: tf.identity(model(pixels, training=False), name="probabilities"))
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=ONNX_OPSET)
    if len(proto.graph.output) != 1:
        raise ExportError(f"unexpected ONNX graph: {len(proto.graph.output)} outputs, not 1")
    old = proto.graph.output[0].name
    proto.graph.output[0].name = "probabilities"
    for node in proto.graph.node:
        node.output[:] = ["probabilities" if o == old else o for o in node.output]
    proto.doc_string = (f"tfguess classifier ({classifier.meta['backbone']['name']}): "
                        f"{', '.join(classifier.labels)}. Input: {_resize_text(classifier)}.")
    for key, value in (("labels", json.dumps(classifier.labels)),
                       ("tfguess", json.dumps(_description(classifier, "none")))):
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    return proto.SerializeToString()


# --- the classic frozen graph ------------------------------------------------------------------


def _squash_bilinear_tf(image, size: int):
    """``images.squash_bilinear`` in TensorFlow ops (the same integer arithmetic, exact in
    float32): ``[h, w, 3]`` -> ``[1, size, size, 3]`` float32."""
    import tensorflow as tf

    def axis(n):
        pos = tf.math.rint(tf.range(size, dtype=tf.float64) * (tf.cast(n, tf.float64) / size)
                           * SUBPIXEL)
        first = tf.minimum(tf.floor(pos / SUBPIXEL), tf.cast(n - 1, tf.float64))
        frac = tf.cast(pos - tf.floor(pos / SUBPIXEL) * SUBPIXEL, tf.float32)
        last = tf.minimum(first + 1, tf.cast(n - 1, tf.float64))
        return tf.cast(first, tf.int32), tf.cast(last, tf.int32), frac

    shape = tf.shape(image)
    x0, x1, fx = axis(shape[1])
    y0, y1, fy = axis(shape[0])
    x = tf.cast(image, tf.float32)
    fx, fy = fx[None, :, None], fy[:, None, None]
    top, bottom = tf.gather(x, y0, axis=0), tf.gather(x, y1, axis=0)
    top = tf.gather(top, x0, axis=1) * (SUBPIXEL - fx) + tf.gather(top, x1, axis=1) * fx
    bottom = tf.gather(bottom, x0, axis=1) * (SUBPIXEL - fx) + tf.gather(bottom, x1, axis=1) * fx
    half = SUBPIXEL * SUBPIXEL / 2
    return tf.floor((top * (SUBPIXEL - fy) + bottom * fy + half) / (2 * half))[None]


def _pad_to_square_tf(image):
    """``images.pad_to_square`` in TensorFlow ops: ``[h, w, 3]`` uint8 centred on a square of
    ``PAD_VALUE`` (the extra pixel of an odd margin right of or below the image)."""
    import tensorflow as tf

    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    side = tf.maximum(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    paddings = tf.stack([tf.stack([top, side - h - top]), tf.stack([left, side - w - left]),
                         tf.zeros([2], tf.int32)])
    return tf.pad(image, paddings, constant_values=tf.cast(PAD_VALUE, image.dtype))


def _resize_like_load_image(image, size: int, resize: str):
    """``images.load_image``'s resize in TensorFlow ops: "crop" by :func:`_resize_like_pil`
    (bicubic), "pad" by :func:`_pad_to_square_tf` then as "squash": :func:`_squash_bilinear_tf`
    where ``load_image`` squashes bilinearly, else :func:`_resize_like_pil` (antialiased
    bilinear)."""
    import tensorflow as tf

    if resize == "crop":
        return _resize_like_pil(image, size, True)
    if resize == "pad":
        image = _pad_to_square_tf(image)
    shape = tf.shape(image)
    return tf.cond(tf.cast(tf.reduce_max(shape[:2]), tf.float32) <= SQUASH_BILINEAR_MAX * size,
                   lambda: _squash_bilinear_tf(image, size),
                   lambda: _resize_like_pil(image, size, False, "bilinear"))


# Pillow's resampling weights are fixed-point numbers with this many fractional bits (Resample.c).
PILLOW_PRECISION_BITS = 22


def _pillow_weights(in_size, in0, in1, size: int, kernel: str = "bicubic"):
    """Pillow's bicubic or bilinear weights of one axis as a ``[size, in_size]`` float64 matrix
    of its fixed-point integers (``precompute_coeffs`` and ``normalize_coeffs_8bpc`` of
    Resample.c, in the same float64 operations): output ``i`` reads the source interval
    ``in0..in1`` at ``in0 + (i + 0.5) * scale`` with the Keys (a = -0.5) kernel or the triangle,
    widened by the reduction (antialiasing), taps outside the image left out and the rest
    normalised. Both kernels are continuous, so where a graph computes ``scale`` a last bit
    differently (a division by a constant made a multiplication), no tap comes or goes whole (a
    box filter's would, at its edges)."""
    import tensorflow as tf

    f64 = tf.float64
    scale = (in1 - in0) / size
    filterscale = tf.maximum(scale, 1.0)
    support = (2.0 if kernel == "bicubic" else 1.0) * filterscale
    inv = 1.0 / filterscale
    center = in0 + (tf.range(size, dtype=f64) + 0.5) * scale
    xmin = tf.maximum(tf.floor(center - support + 0.5), 0.0)[:, None]
    xmax = tf.minimum(tf.floor(center + support + 0.5), tf.cast(in_size, f64))[:, None]
    j = tf.cast(tf.range(in_size), f64)[None, :]
    x = tf.abs((j - center[:, None] + 0.5) * inv)
    if kernel == "bilinear":
        w = tf.where(x < 1.0, 1.0 - x, tf.zeros_like(x))
    else:
        a = -0.5
        near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
        w = tf.where(x < 1.0, near, tf.where(x < 2.0, far, tf.zeros_like(x)))
    w = tf.where((j >= xmin) & (j < xmax), w, tf.zeros_like(w))
    ww = tf.reduce_sum(w, axis=1, keepdims=True)
    k = tf.where(ww != 0.0, w / tf.where(ww != 0.0, ww, 1.0), w) * float(1 << PILLOW_PRECISION_BITS)
    return tf.where(k < 0, tf.math.ceil(k - 0.5), tf.floor(k + 0.5))


def _resize_like_pil(image, size: int, crop: bool, kernel: str = "bicubic"):
    """``images.load_image``'s Pillow resize in TensorFlow ops, as Pillow computes it: the same
    source box (:func:`images.crop_box`, or the whole image; passed to Pillow as float32), the
    same fixed-point weights (:func:`_pillow_weights`), one pass per axis, each rounded
    and clipped to 0..255, in Pillow's order (13.0: vertical first when
    ``h > max(size, 2 * w - size)``, for the whole image and for a crop box alike; measured on
    2,000 shapes from 16 to 1,400 pixels, none differing). Pillow's extra box reduction for
    sources over 6x the input size (``reducing_gap``) is not done here."""
    import tensorflow as tf

    f64 = tf.float64
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], f64), tf.cast(shape[1], f64)
    if crop:
        scale = round(size / CROP_FRACTION) / tf.minimum(w, h)
        side = size / scale
        left, top = (w - side) / 2, (h - side) / 2
        box = [tf.maximum(left, 0.0), tf.maximum(top, 0.0), tf.minimum(left + side, w),
               tf.minimum(top + side, h)]
        box = [tf.cast(tf.cast(v, tf.float32), f64) for v in box]  # Pillow's box is float32
    else:
        box = [tf.constant(0.0, f64), tf.constant(0.0, f64), w, h]
    kx = _pillow_weights(shape[1], box[0], box[2], size, kernel)
    ky = _pillow_weights(shape[0], box[1], box[3], size, kernel)
    half, one = float(1 << (PILLOW_PRECISION_BITS - 1)), float(1 << PILLOW_PRECISION_BITS)

    def rounded(x):
        return tf.clip_by_value(tf.floor((x + half) / one), 0.0, 255.0)

    # tensordot: MatMul and Transpose, which every TensorFlow runtime of the frozen graph has
    def horizontal(x):
        return rounded(tf.transpose(tf.tensordot(x, kx, axes=[[1], [1]]), [0, 2, 1]))

    def vertical(x):
        return rounded(tf.tensordot(ky, x, axes=[[1], [0]]))

    x = tf.cast(image, f64)
    out = tf.cond(shape[0] > tf.maximum(size, 2 * shape[1] - size),
                  lambda: horizontal(vertical(x)), lambda: vertical(horizontal(x)))
    return tf.cast(out, tf.float32)[None]


def _decode_like_pil(contents, size: int):
    """Decode as ``images.decode_image`` does: a large JPEG is decoded at 1/2, 1/4 or 1/8 scale
    like Pillow's draft mode. (EXIF orientation is not applied here.)"""
    import tensorflow as tf

    from tfguess.data.images import DRAFT_MARGIN

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

    model, size, resize = classifier.keras_model, classifier.input_size, classifier.resize

    @tf.function(input_signature=[tf.TensorSpec([], tf.string, name="contents")])
    def classify(contents):
        image = _decode_like_pil(contents, size)
        probs = model(_resize_like_load_image(image, size, resize), training=False)
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
    strip_default_attrs(graph_def)
    return graph_def.SerializeToString()


def strip_default_attrs(graph_def) -> int:
    """Remove every node attribute that equals its op's default (in place; also inside the
    graph's functions), as ``tf.compat.v1``'s meta-graph export with ``strip_default_attrs``
    does: attributes added to ops after TensorFlow 1.15 (``explicit_paddings``, ...) are then
    absent, so older runtimes load the graph. Returns the number removed."""
    from tensorflow.python.framework import op_def_registry

    removed = 0

    def strip(nodes) -> None:
        nonlocal removed
        for node in nodes:
            op_def = op_def_registry.get(node.op)
            if op_def is None:
                continue
            for attr in op_def.attr:
                if (attr.HasField("default_value") and attr.name in node.attr
                        and node.attr[attr.name] == attr.default_value):
                    del node.attr[attr.name]
                    removed += 1

    strip(graph_def.node)
    for function in graph_def.library.function:
        strip(function.node_def)
    return removed
