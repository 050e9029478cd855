"""The ``frozen-graph`` format: ``retrained_graph.pb`` + ``retrained_labels.txt``, the classic
TF1 retrain output: JPEG bytes at ``DecodeJpeg/contents:0`` -> probabilities ``[1, labels]`` at
``final_result:0`` (loads in TensorFlow 1.15 and 2.x: attributes at their default value are
left out)."""

from __future__ import annotations

from pathlib import Path

from tfguess.core.errors import ExportError
from tfguess.core.runfolder import LABELS_FILENAME
from tfguess.export.common import ExportJob, publish_bytes
from tfguess.export.preprocessing import decode_like_pil, resize_like_load_image

FROZEN_GRAPH_FILENAME = "retrained_graph.pb"
JPEG_INPUT = "DecodeJpeg/contents"
OUTPUT_NAME = "final_result"


def write(job: ExportJob) -> list[Path]:
    """The graph, then its labels file."""
    classifier = job.classifier
    graph = publish_bytes(frozen_graph_bytes(classifier), job.out / FROZEN_GRAPH_FILENAME, job.log)
    labels = ("\n".join(classifier.labels) + "\n").encode()
    return [graph, publish_bytes(labels, job.out / LABELS_FILENAME, job.log)]


def frozen_graph_bytes(classifier) -> bytes:
    """A GraphDef with the weights as constants: JPEG bytes -> ``[1, labels]`` probabilities."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    model, size, resize = classifier.keras_model, classifier.input_size, classifier.resize

    @tf.function(input_signature=[tf.TensorSpec([], tf.string, name="contents")])
    def classify(contents):
        image = decode_like_pil(contents, size)
        probs = model(resize_like_load_image(image, size, resize), training=False)
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
