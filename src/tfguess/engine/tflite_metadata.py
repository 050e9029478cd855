"""TFLite model metadata: the labels and the input normalisation travel inside the ``.tflite``.

Writes the standard metadata (``metadata_schema.fbs``, the format the TFLite Task Library,
MediaPipe and ML Kit read): a flatbuffer stored in a model buffer referenced by the model's
``TFLITE_METADATA`` entry, with the associated files (labels, ...) packed as a zip archive
appended to the model, as the standard metadata populator does. Needs only ``flatbuffers``
and the schemas (no TensorFlow).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field

import flatbuffers
import numpy as np

from tfguess.engine._vendor import tflite_metadata_schema as meta_fb

METADATA_NAME = "TFLITE_METADATA"
MODEL_IDENTIFIER = b"TFL3"
METADATA_IDENTIFIER = b"M001"
# Only features of the first schema version are used (image properties, normalisation, tensor
# axis labels), so any metadata parser can read it.
MIN_PARSER_VERSION = "1.0.0"


DESCRIPTION_FILE = "tfguess.json"   # tfguess's own description, packed beside the labels file


def tflite_schema():
    """The TFLite flatbuffer schema: LiteRT's copy, or TensorFlow's where LiteRT is missing."""
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:
        from tensorflow.lite.python import schema_py_generated

    return schema_py_generated


@dataclass
class ImageClassifierInfo:
    """What gets recorded about an image classifier (one image in, class scores out)."""

    name: str
    description: str
    version: str
    labels: list[str]
    norm_mean: list[float]
    norm_std: list[float]
    input_uint8: bool = False
    labels_file: str = "labels.txt"
    author: str = ""
    license: str = ""
    extra_files: dict[str, bytes] = field(default_factory=dict)   # more associated files
    extra_descriptions: dict[str, str] = field(default_factory=dict)


def _associated(name: str, description: str, kind: int) -> meta_fb.AssociatedFileT:
    f = meta_fb.AssociatedFileT()
    f.name, f.description, f.type = name, description, kind
    return f


def build_metadata(info: ImageClassifierInfo) -> bytes:
    """The metadata flatbuffer (identifier ``M001``) of an image classifier."""
    image = meta_fb.TensorMetadataT()
    image.name = "image"
    image.description = "Input image: RGB pixels, 0..255 before normalisation."
    image.content = meta_fb.ContentT()
    image.content.contentPropertiesType = meta_fb.ContentProperties.ImageProperties
    image.content.contentProperties = meta_fb.ImagePropertiesT()
    image.content.contentProperties.colorSpace = meta_fb.ColorSpaceType.RGB
    norm = meta_fb.ProcessUnitT()
    norm.optionsType = meta_fb.ProcessUnitOptions.NormalizationOptions
    norm.options = meta_fb.NormalizationOptionsT()
    norm.options.mean, norm.options.std = list(info.norm_mean), list(info.norm_std)
    image.processUnits = [norm]
    image.stats = meta_fb.StatsT()
    if info.input_uint8:
        image.stats.min, image.stats.max = [0.0], [255.0]
    else:
        image.stats.min = [(0.0 - m) / s for m, s in zip(info.norm_mean, info.norm_std)]
        image.stats.max = [(255.0 - m) / s for m, s in zip(info.norm_mean, info.norm_std)]

    scores = meta_fb.TensorMetadataT()
    scores.name = "probability"
    scores.description = "Probabilities of the labels, in the order of the labels file."
    scores.content = meta_fb.ContentT()
    scores.content.contentPropertiesType = meta_fb.ContentProperties.FeatureProperties
    scores.content.contentProperties = meta_fb.FeaturePropertiesT()
    scores.stats = meta_fb.StatsT()
    scores.stats.min, scores.stats.max = [0.0], [1.0]
    scores.associatedFiles = [
        _associated(info.labels_file, "Labels for the classes the model recognises.",
                    meta_fb.AssociatedFileType.TENSOR_AXIS_LABELS)
    ]

    subgraph = meta_fb.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [image]
    subgraph.outputTensorMetadata = [scores]

    model = meta_fb.ModelMetadataT()
    model.name, model.description, model.version = info.name, info.description, info.version
    model.author, model.license = info.author or None, info.license or None
    model.subgraphMetadata = [subgraph]
    model.minParserVersion = MIN_PARSER_VERSION
    if info.extra_files:
        model.associatedFiles = [
            _associated(name, info.extra_descriptions.get(name, ""),
                        meta_fb.AssociatedFileType.DESCRIPTIONS)
            for name in info.extra_files
        ]
    b = flatbuffers.Builder(0)
    b.Finish(model.Pack(b), METADATA_IDENTIFIER)
    return bytes(b.Output())


def add_metadata(model_bytes: bytes, info: ImageClassifierInfo) -> bytes:
    """``model_bytes`` with ``info`` written in as metadata and the associated files appended."""
    schema = tflite_schema()
    if model_bytes[4:8] != MODEL_IDENTIFIER:
        raise ValueError("not a TFLite model (flatbuffer identifier TFL3 missing)")
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(model_bytes, 0))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(build_metadata(info), dtype=np.uint8)
    model.buffers = model.buffers or []
    model.metadata = model.metadata or []
    existing = [m for m in model.metadata if m.name.decode() == METADATA_NAME]
    if existing:
        model.buffers[existing[0].buffer] = buffer
    else:
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
        model.metadata.append(entry)
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), MODEL_IDENTIFIER)
    out = io.BytesIO()
    out.write(bytes(b.Output()))
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(info.labels_file, "\n".join(info.labels) + "\n")
        for name, data in info.extra_files.items():
            zf.writestr(name, data)
    return out.getvalue()


def metadata_buffer(model_bytes: bytes) -> bytes | None:
    """The raw ``TFLITE_METADATA`` flatbuffer of a model, or None."""
    schema = tflite_schema()
    model = schema.Model.GetRootAs(model_bytes, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name().decode() == METADATA_NAME:
            return model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    return None


@dataclass
class ReadMetadata:
    name: str
    description: str
    labels_file: str | None
    norm_mean: list[float] | None
    norm_std: list[float] | None
    files: dict[str, bytes]        # associated files packed in the model

    @property
    def labels(self) -> list[str] | None:
        if self.labels_file is None or self.labels_file not in self.files:
            return None
        return [ln.strip() for ln in self.files[self.labels_file].decode("utf-8").splitlines() if ln.strip()]


def read_metadata(model_bytes: bytes) -> ReadMetadata | None:
    """The image-classifier facts of a ``.tflite``'s metadata, or None without metadata."""
    buf = metadata_buffer(model_bytes)
    if buf is None:
        return None
    if not meta_fb.ModelMetadata.ModelMetadataBufferHasIdentifier(buf, 0):
        raise ValueError("the TFLITE_METADATA buffer is not model metadata (identifier M001 missing)")
    md = meta_fb.ModelMetadataT.InitFromObj(meta_fb.ModelMetadata.GetRootAs(buf, 0))
    labels_file = mean = std = None
    if md.subgraphMetadata:
        sub = md.subgraphMetadata[0]
        for t in sub.outputTensorMetadata or []:
            for f in t.associatedFiles or []:
                if f.type == meta_fb.AssociatedFileType.TENSOR_AXIS_LABELS and labels_file is None:
                    labels_file = f.name.decode()
        for t in sub.inputTensorMetadata or []:
            for unit in t.processUnits or []:
                if unit.optionsType == meta_fb.ProcessUnitOptions.NormalizationOptions:
                    mean, std = [float(v) for v in unit.options.mean], [float(v) for v in unit.options.std]
    files = {}
    if zipfile.is_zipfile(io.BytesIO(model_bytes)):
        with zipfile.ZipFile(io.BytesIO(model_bytes)) as zf:
            files = {n: zf.read(n) for n in zf.namelist()}

    def text(v) -> str:
        return v.decode() if isinstance(v, bytes) else (v or "")

    return ReadMetadata(text(md.name), text(md.description), labels_file, mean, std, files)


def tensor_types(model_bytes: bytes) -> dict:
    """Types of the model's input, output and the weights of its conv/dense ops (names)."""
    schema = tflite_schema()
    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    ops = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAs(model_bytes, 0)
    graph = model.Subgraphs(0)

    def ttype(i: int) -> str:
        return names[graph.Tensors(i).Type()]

    weighted = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
    weights: dict[str, list[str]] = {}
    for k in range(graph.OperatorsLength()):
        op = graph.Operators(k)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = ops.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")
        if name in weighted and op.InputsLength() > 1:
            weights.setdefault(name, []).append(ttype(op.Inputs(1)))
    return {
        "inputs": [ttype(graph.Inputs(i)) for i in range(graph.InputsLength())],
        "outputs": [ttype(graph.Outputs(i)) for i in range(graph.OutputsLength())],
        "weights": weights,
    }


def op_versions(model_bytes: bytes) -> dict[str, int]:
    """The operators a ``.tflite`` uses, each with the highest version it is used at.

    A runtime loads a model only if it has a kernel for every (operator, version) pair.
    """
    schema = tflite_schema()
    ops = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAs(model_bytes, 0)
    versions: dict[str, int] = {}
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = ops.get(builtin, f"builtin {builtin}")
        if builtin == schema.BuiltinOperator.CUSTOM:
            name = f"CUSTOM {code.CustomCode().decode()}"
        versions[name] = max(versions.get(name, 0), code.Version())
    return versions
