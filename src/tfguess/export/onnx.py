"""The ``onnx`` format: ``model.onnx``, pixels ``[N, size, size, 3]`` -> probabilities; the
labels and the description are in the model's metadata properties (``labels``, ``tfguess``,
both JSON). Needs tf2onnx: pip install 'tfguess[onnx]'."""

from __future__ import annotations

import json
from pathlib import Path

from tfguess.core.errors import ExportError
from tfguess.export.common import (
    ExportJob,
    converter_quiet,
    description,
    publish_bytes,
    resize_text,
)

ONNX_FILENAME = "model.onnx"
ONNX_OPSET = 15


def write(job: ExportJob) -> list[Path]:
    """``model.onnx`` (float32: the ONNX export takes no ``quantize``)."""
    with converter_quiet(job.config.quiet):
        data = onnx_bytes(job.classifier)
    return [publish_bytes(data, job.out / ONNX_FILENAME, job.log)]



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
    proto.doc_string = (f"tfguess classifier ({classifier.backbone_name}): "
                        f"{', '.join(classifier.labels)}. Input: {resize_text(classifier)}.")
    for key, value in (("labels", json.dumps(classifier.labels)),
                       ("tfguess", json.dumps(description(classifier, "none")))):
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    return proto.SerializeToString()
