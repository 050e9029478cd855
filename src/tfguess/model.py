"""The saved model: one ``.keras`` file that describes itself.

The file is a standard Keras 3 model (pixels in 0..255 -> class probabilities: the backbone, then
the trained head) with two more members in its zip archive: ``tfguess.json`` (the labels in output
order, the backbone's facts — name, input size, resize recipe, normalisation, weights id — and the
resolved training config) and ``tfguess_head.npz`` (the head's weights, readable without
TensorFlow). ``guess`` needs nothing but this file.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ModelError
from .features import BackboneRef
from .fsutil import atomic_write, clean_stale_temp_files
from .runfolder import MODEL_FILENAME, RunFolder
from .runtime import Head

META_MEMBER = "tfguess.json"
HEAD_MEMBER = "tfguess_head.npz"   # the head's kernel and bias, readable without TensorFlow
FORMAT_VERSION = 1


def build_classifier(backbone, num_classes: int, dropout: float = 0.2, l2: float = 1e-4):
    """Stack the trainable head on the frozen ``backbone`` (a Keras model named "backbone")."""
    import keras

    backbone.trainable = False
    inputs = keras.Input(backbone.input_shape[1:], name="pixels")
    features = backbone(inputs, training=False)
    x = keras.layers.Dropout(dropout, name="dropout")(features)
    outputs = keras.layers.Dense(
        num_classes,
        activation="softmax",
        kernel_regularizer=keras.regularizers.L2(l2) if l2 else None,
        name="head",
    )(x)
    return keras.Model(inputs, outputs, name="tfguess_classifier")


@dataclass
class Classifier:
    """A loaded tfguess model: the Keras model, its labels and its description."""

    keras_model: object
    labels: list[str]
    meta: dict
    path: Path | None = None

    @property
    def backbone(self):
        return self.keras_model.get_layer("backbone")

    @property
    def ref(self) -> BackboneRef:
        return BackboneRef.from_meta(self.meta["backbone"])

    @property
    def input_size(self) -> int:
        return int(self.meta["backbone"]["input_size"])

    @property
    def resize(self) -> str:
        return self.meta["backbone"]["resize"]

    def head(self) -> Head:
        kernel, bias = self.keras_model.get_layer("head").get_weights()
        return Head(kernel, bias)


def save_classifier(
    path: Path, keras_model, labels: list[str], meta: dict, keep_previous: bool = True
) -> Path | None:
    """Write the model atomically: the old model or the new one is always whole at ``path``.

    With ``keep_previous``, a model already at ``path`` is kept as ``<stem>.previous.keras`` (that
    name is returned): the last model is never lost; one generation is kept. Temporary files that
    killed runs left behind are removed.
    """
    path = Path(path)
    clean_stale_temp_files(path.parent, [path.name, f"{path.stem}.previous{path.suffix}"])
    meta = {"format_version": FORMAT_VERSION, "labels": list(labels), **meta}
    kernel, bias = keras_model.get_layer("head").get_weights()

    def write(tmp: Path) -> None:
        keras_model.save(tmp)
        head = io.BytesIO()
        np.savez(head, kernel=kernel, bias=bias)
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(META_MEMBER, json.dumps(meta, indent=2, sort_keys=True))
            archive.writestr(HEAD_MEMBER, head.getvalue())

    return atomic_write(path, write, keep_previous=keep_previous)


def resolve_model_path(path: str | Path) -> Path:
    """A model argument may be the model file or the TF_FILES folder that holds it."""
    path = Path(path).expanduser()
    if path.is_dir():
        return RunFolder.at(path).require_model()
    if not path.exists():
        hint = "" if path.suffix else f" (a TF_FILES folder must hold {MODEL_FILENAME})"
        raise ModelError(f"model not found: {path}{hint}")
    return path


def _read_member(path: Path, member: str) -> bytes:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.read(member)
    except KeyError:
        raise ModelError(f"{path} is not a tfguess model (no {member} inside): "
                         "train one with tfguess train") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as exc:
        raise ModelError(f"{path} is damaged ({exc}): train again, or use the "
                         "model.previous.keras kept beside it") from None


def read_meta(path: str | Path) -> dict:
    path = resolve_model_path(path)
    try:
        meta = json.loads(_read_member(path, META_MEMBER))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path} is damaged ({exc}): train again") from None
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ModelError(f"{path} was written by a newer tfguess (format {meta['format_version']}): "
                         "upgrade tfguess")
    return meta


def read_head(path: str | Path) -> Head:
    """The head's weights straight from the file, without loading Keras."""
    path = resolve_model_path(path)
    try:
        with np.load(io.BytesIO(_read_member(path, HEAD_MEMBER))) as head:
            return Head(head["kernel"], head["bias"])
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{path} is damaged (the head cannot be read: {exc}): train again") from None


def load_classifier(path: str | Path) -> Classifier:
    from .backbones import register_custom_layers

    register_custom_layers()  # the layers a saved model may use (e.g. a TF Hub module)
    path = resolve_model_path(path)
    meta = read_meta(path)
    from ._quiet import import_tensorflow

    import_tensorflow()  # quietly, before Keras does it noisily
    import keras

    try:
        keras_model = keras.saving.load_model(path, compile=False)
    except (zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        raise ModelError(f"{path} is damaged and cannot be loaded ({exc.__class__.__name__}: {exc}): "
                         "train again, or use the model.previous.keras kept beside it") from None
    return Classifier(keras_model, list(meta["labels"]), meta, path)
