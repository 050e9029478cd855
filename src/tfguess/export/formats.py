"""The export formats, one row each (as Ultralytics' ``export_formats()``): the ``--format``
name, what it writes, the module and function that write it, the quantizations it takes and the
pip extra its converter needs.

Import-light (the standard library only): the command line reads :data:`FORMAT_NAMES` for its
``--format`` choices without loading NumPy or TensorFlow, and :func:`tfguess.export.export`
dispatches through this same table, importing a format's module only when it is asked for.

What each writes, in ``TF_FILES/export/`` (or ``out_dir``):

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

A new format: a module ``tfguess/export/<name>.py`` whose writer takes an
:class:`tfguess.export.common.ExportJob` and returns the paths it wrote (publishing each with
``common.publish_bytes`` / ``common.publish_folder``), and one row here.
"""

from __future__ import annotations

from typing import NamedTuple


class ExportFormat(NamedTuple):
    """One row of :data:`EXPORT_FORMATS`."""

    name: str                       # the --format value
    writes: str                     # what it writes into the output folder
    suffix: str                     # the main output's suffix ("" for a folder)
    module: str                     # the module that writes it, imported when it is asked for
    function: str                   # its writer there: function(job: ExportJob) -> list[Path]
    quantizations: tuple[str, ...]  # the quantize values it takes ("none": float32 as trained)
    extra: str | None               # pip install 'tfguess[extra]' for its converter (None: none)
    aliases: tuple[str, ...] = ()   # other names --format accepts (any case)


EXPORT_FORMATS: tuple[ExportFormat, ...] = (
    ExportFormat("tflite", "model.tflite, model_float16.tflite, model_dynamic.tflite or "
                 "model_int8.tflite", ".tflite", "tfguess.export.tflite", "write",
                 ("none", "float16", "dynamic", "int8"), None),
    ExportFormat("coreml", "model.mlpackage", ".mlpackage", "tfguess.export.coreml", "write",
                 ("none",), "export", ("mlpackage",)),
    ExportFormat("savedmodel", "saved_model/", "", "tfguess.export.savedmodel", "write",
                 ("none",), None, ("saved_model", "saved-model")),
    ExportFormat("frozen-graph", "retrained_graph.pb, retrained_labels.txt", ".pb",
                 "tfguess.export.frozen_graph", "write", ("none",), None, ("frozen_graph", "pb")),
    ExportFormat("onnx", "model.onnx", ".onnx", "tfguess.export.onnx", "write", ("none",), "onnx"),
)

FORMAT_NAMES: tuple[str, ...] = tuple(row.name for row in EXPORT_FORMATS)
# Every quantize value some format takes, in the order of the table.
QUANTIZATIONS: tuple[str, ...] = tuple(dict.fromkeys(q for row in EXPORT_FORMATS
                                                     for q in row.quantizations))
_BY_NAME = {name: row for row in EXPORT_FORMATS for name in (row.name, *row.aliases)}


def lookup(name: str) -> ExportFormat | None:
    """The row of a ``--format`` name or alias (any case); None for an unknown name."""
    return _BY_NAME.get(name.lower())


def taking(quantize: str) -> tuple[str, ...]:
    """The names of the formats that take ``quantize``."""
    return tuple(row.name for row in EXPORT_FORMATS if quantize in row.quantizations)
