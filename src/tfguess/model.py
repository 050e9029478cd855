"""The saved model: one ``.keras`` file that describes itself.

The file is a standard Keras 3 model (pixels in 0..255 -> class probabilities: the backbone, then
the trained head) with one more member in its zip archive, ``tfguess.json``: the labels in output
order, the backbone's facts (name, input size, resize recipe, normalisation, weights id) and the
resolved training config. ``guess`` needs nothing but this file.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODEL_FILENAME = "model.keras"
LABELS_FILENAME = "retrained_labels.txt"
META_MEMBER = "tfguess.json"
HEAD_MEMBER = "tfguess_head.npz"   # the head's kernel and bias, readable without TensorFlow
FORMAT_VERSION = 1


class ModelError(ValueError):
    pass


def build_classifier(backbone, num_classes: int, dropout: float = 0.2, l2: float = 1e-4,
                     hidden_units: int = 0):
    """Stack the trainable head on the frozen ``backbone`` (a Keras model named "backbone").

    ``hidden_units``: a hidden ReLU layer ("hidden", then dropout) between features and softmax.
    """
    import keras

    backbone.trainable = False
    inputs = keras.Input(backbone.input_shape[1:], name="pixels")
    features = backbone(inputs, training=False)
    x = keras.layers.Dropout(dropout, name="dropout")(features)
    if hidden_units:
        x = keras.layers.Dense(hidden_units, activation="relu", name="hidden")(x)
        x = keras.layers.Dropout(dropout, name="hidden_dropout")(x)
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
    def input_size(self) -> int:
        return int(self.meta["backbone"]["input_size"])

    @property
    def resize(self) -> str:
        return self.meta["backbone"]["resize"]

    @property
    def engine_key(self) -> str:
        b = self.meta["backbone"]
        return f"{b['name']}|{b['weights_id']}|{b['input_size']}"

    def head_weights(self) -> tuple[np.ndarray, np.ndarray]:
        kernel, bias = self.keras_model.get_layer("head").get_weights()
        return kernel, bias

    def head_arrays(self) -> dict[str, np.ndarray]:
        return head_arrays(self.keras_model)

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Apply the head to backbone features (what the Keras model does after the backbone)."""
        return head_probabilities(features, self.head_arrays())


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def head_arrays(keras_model) -> dict[str, np.ndarray]:
    """The head's weights by name: ``kernel``/``bias``, plus ``hidden_kernel``/``hidden_bias``."""
    kernel, bias = keras_model.get_layer("head").get_weights()
    arrays = {"kernel": kernel, "bias": bias}
    if any(layer.name == "hidden" for layer in keras_model.layers):
        arrays["hidden_kernel"], arrays["hidden_bias"] = keras_model.get_layer("hidden").get_weights()
    return arrays


def head_probabilities(features: np.ndarray, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """What the classifier does after the backbone (inference: dropout is the identity)."""
    x = features
    if "hidden_kernel" in arrays:
        x = np.maximum(x @ arrays["hidden_kernel"] + arrays["hidden_bias"], 0.0)
    return softmax(x @ arrays["kernel"] + arrays["bias"])


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def save_classifier(
    path: Path, keras_model, labels: list[str], meta: dict, keep_previous: bool = True
) -> Path | None:
    """Write the model atomically: a failed save never leaves a half-written file at ``path``.

    With ``keep_previous``, a model already at ``path`` is renamed to ``<stem>.previous.keras``
    once the new one is complete (and that name is returned): the last model is never lost;
    one generation is kept.
    """
    path = Path(path)
    previous = None
    meta = {"format_version": FORMAT_VERSION, "labels": list(labels), **meta}
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    try:
        keras_model.save(tmp)
        head = io.BytesIO()
        np.savez(head, **head_arrays(keras_model))
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(META_MEMBER, json.dumps(meta, indent=2, sort_keys=True))
            archive.writestr(HEAD_MEMBER, head.getvalue())
        if keep_previous and path.exists():
            previous = path.with_name(f"{path.stem}.previous{path.suffix}")
            os.replace(path, previous)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return previous


def resolve_model_path(path: str | Path) -> Path:
    """A model argument may be the model file or the TF_FILES folder that holds it."""
    path = Path(path).expanduser()
    if path.is_dir():
        candidate = path / MODEL_FILENAME
        if not candidate.exists():
            raise ModelError(
                f"no trained model in {path}: expected {candidate}. Train first: tfguess train {path}"
            )
        return candidate
    if not path.exists():
        raise ModelError(f"model not found: {path}")
    return path


def read_meta(path: str | Path) -> dict:
    path = resolve_model_path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read(META_MEMBER))
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ModelError(
            f"{path} is not a tfguess model (no {META_MEMBER} inside): train one with tfguess train"
        ) from exc


def read_head(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The head's (kernel, bias) straight from the file, without loading Keras."""
    arrays = read_head_arrays(path)
    return arrays["kernel"], arrays["bias"]


def read_head_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """All the head's weights (see :func:`head_arrays`) straight from the file, without Keras."""
    with zipfile.ZipFile(resolve_model_path(path)) as archive:
        with np.load(io.BytesIO(archive.read(HEAD_MEMBER))) as head:
            return {name: head[name] for name in head.files}


def load_classifier(path: str | Path) -> Classifier:
    import keras

    from .backbones import register_custom_layers

    register_custom_layers()  # the layers a saved model may use (e.g. a TF Hub module)

    path = resolve_model_path(path)
    meta = read_meta(path)
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ModelError(f"{path} was written by a newer tfguess (format {meta['format_version']})")
    keras_model = keras.saving.load_model(path, compile=False)
    return Classifier(keras_model, list(meta["labels"]), meta, path)
