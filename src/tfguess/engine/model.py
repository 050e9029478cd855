"""The saved model: one ``.keras`` file that describes itself.

The file is a standard Keras 3 model (pixels in 0..255 -> class probabilities: the backbone, then
the trained head) with two more members in its zip archive: ``tfguess.json`` (the labels in output
order, the backbone's facts — name, input size, resize recipe, normalisation, weights id, precision
— and the resolved training config), ``tfguess_head.npz`` (the head's weights, readable without
TensorFlow) and, for an int8 model, ``tfguess_engine.tflite`` (the calibrated int8 engine the head
was trained on, which cannot be rebuilt without the training photos). ``guess`` needs nothing but
this file.

An ensemble (``train`` with a budget that holds two fine-tuned backbones, :mod:`training.ensemble`)
is the first member's file with the others inside it, whole (``tfguess_member_1.keras``, its
head beside it as ``tfguess_member_1.head.npz``, so guessing starts without unpacking it), listed
under ``ensemble`` in ``tfguess.json``: every member takes the same input size and resize, and the
model's probabilities are the mean of theirs (``guess.predict``'s ``_member_parts``, :func:`load_ensemble`).

A re-train whose features are all cached saves without Keras (:func:`save_classifier_with_head`):
the previous file of the same backbone is copied with the head's two arrays replaced in its
``model.weights.h5``; Keras loads it like a file it saved itself (tests/training/test_train.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfguess.core.errors import ModelError
from tfguess.core.fsutil import atomic_write, clean_stale_temp_files
from tfguess.core.runfolder import MODEL_FILENAME, RunFolder
from tfguess.engine.features import BackboneRef
from tfguess.engine.runtime import Head

META_MEMBER = "tfguess.json"
HEAD_MEMBER = "tfguess_head.npz"   # the head's kernel and bias, readable without TensorFlow
ENGINE_MEMBER = "tfguess_engine.tflite"   # int8 models: the calibrated engine
WEIGHTS_MEMBER = "model.weights.h5"       # Keras 3's weights inside the .keras archive
MEMBER_PREFIX = "tfguess_member_"          # an ensemble's other members, whole model files
FORMAT_VERSION = 1


def build_classifier(backbone, num_classes: int, dropout: float = 0.2, l2: float = 1e-4,
                     hidden_units: int = 0, seed: int | None = None):
    """Stack the trainable head on the frozen ``backbone`` (a Keras model named "backbone").

    ``hidden_units``: a hidden ReLU layer ("hidden", then dropout) between features and softmax.
    ``seed``: the dropout's, so that training the model twice gives the same weights.
    """
    import keras

    backbone.trainable = False
    inputs = keras.Input(backbone.input_shape[1:], name="pixels")
    features = backbone(inputs, training=False)
    x = keras.layers.Dropout(dropout, seed=seed, name="dropout")(features)
    if hidden_units:
        x = keras.layers.Dense(hidden_units, activation="relu", name="hidden")(x)
        x = keras.layers.Dropout(dropout, seed=None if seed is None else seed + 1,
                                 name="hidden_dropout")(x)
    outputs = keras.layers.Dense(
        num_classes,
        activation="softmax",
        kernel_regularizer=keras.regularizers.L2(l2) if l2 else None,
        name="head",
    )(x)
    return keras.Model(inputs, outputs, name="tfguess_classifier")


def set_head(keras_model, head: Head) -> None:
    """Put ``head``'s weights into a model from :func:`build_classifier` (of the same layout)."""
    if head.hidden_kernel is not None:
        keras_model.get_layer("hidden").set_weights([head.hidden_kernel, head.hidden_bias])
    keras_model.get_layer("head").set_weights([head.kernel, head.bias])


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

    @property
    def backbone_name(self) -> str:
        """The backbone's name; an ensemble's, joined by " + "."""
        return backbone_names(self.meta)

    def head(self) -> Head:
        kernel, bias = self.keras_model.get_layer("head").get_weights()
        hidden = None
        if any(layer.name == "hidden" for layer in self.keras_model.layers):
            hidden = self.keras_model.get_layer("hidden").get_weights()
        return Head(kernel, bias, *(hidden or (None, None)))


def save_classifier(
    path: Path, keras_model, labels: list[str], meta: dict, keep_previous: bool = True,
    engine_file: Path | None = None,
) -> Path | None:
    """Write the model atomically: the old model or the new one is always whole at ``path``.

    With ``keep_previous``, a model already at ``path`` is kept as ``<stem>.previous.keras`` (that
    name is returned): the last model is never lost; one generation is kept. Temporary files that
    killed runs left behind are removed.
    """
    path = Path(path)
    clean_stale_temp_files(path.parent, [path.name, f"{path.stem}.previous{path.suffix}"])
    meta = {"format_version": FORMAT_VERSION, "labels": list(labels), **meta}
    arrays = Classifier(keras_model, list(labels), meta).head().arrays()

    def write(tmp: Path) -> None:
        keras_model.save(tmp)
        head = io.BytesIO()
        np.savez(head, **arrays)
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(META_MEMBER, json.dumps(meta, indent=2, sort_keys=True))
            archive.writestr(HEAD_MEMBER, head.getvalue())
            if engine_file is not None:
                archive.write(engine_file, ENGINE_MEMBER)

    return atomic_write(path, write, keep_previous=keep_previous)


def same_layout(path: Path, ref: BackboneRef, num_classes: int, config) -> bool:
    """Whether the model at ``path`` has the backbone ``ref`` and a head of the same shape and
    settings, so that a new head can replace its weights (:func:`save_classifier_with_head`)."""
    try:
        meta = read_meta(path)
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (ModelError, OSError):
        return False
    old = meta.get("config", {})
    return (
        BackboneRef.from_meta(meta["backbone"]) == ref
        and len(meta.get("labels", [])) == num_classes
        and (old.get("dropout"), old.get("l2"), old.get("hidden_units", 0))
        == (config.dropout, config.l2, config.hidden_units)
        and {WEIGHTS_MEMBER, "config.json"} <= names
        and (ref.precision == "float32" or ENGINE_MEMBER in names)
    )


def _replace_head(weights_h5: bytes, head: Head) -> bytes:
    """``model.weights.h5`` with the head's arrays replaced: for each dense layer of the head
    (``head``, and ``hidden`` when there is one), the top-level layer of that name, else the one
    top-level layer whose variables have its shapes (the backbone's are nested one level deeper)."""
    import h5py

    buf = io.BytesIO(weights_h5)
    with h5py.File(buf, "r+") as f:
        layers = f.get("layers", {})
        pairs = [("head", head.kernel, head.bias)]
        if head.hidden_kernel is not None:
            pairs.append(("hidden", head.hidden_kernel, head.hidden_bias))
        for name, kernel, bias in pairs:
            found = []
            for group_name, group in layers.items():
                variables = group.get("vars") if isinstance(group, h5py.Group) else None
                if (variables is not None and set(variables) == {"0", "1"}
                        and variables["0"].shape == kernel.shape
                        and variables["1"].shape == bias.shape):
                    found.append((group_name, variables))
            named = [v for n, v in found if n == name]
            found = named or [v for _, v in found]
            if len(found) != 1:
                raise ModelError(f"the head's weights were not found in {WEIGHTS_MEMBER}")
            found[0]["0"][...] = kernel
            found[0]["1"][...] = bias
    return buf.getvalue()


def save_classifier_with_head(source: Path, path: Path, head: Head, labels: list[str], meta: dict,
                              keep_previous: bool = True) -> Path | None:
    """Write the model ``source`` with ``head`` (and ``labels``, ``meta``) in place of its own,
    without Keras: same archive, head arrays replaced. ``source`` may be ``path``."""
    path = Path(path)
    clean_stale_temp_files(path.parent, [path.name, f"{path.stem}.previous{path.suffix}"])
    meta = {"format_version": FORMAT_VERSION, "labels": list(labels), **meta}
    with zipfile.ZipFile(source) as archive:   # an ensemble's other members are not this model's
        members = [(info, archive.read(info)) for info in archive.infolist()
                   if info.filename not in (META_MEMBER, HEAD_MEMBER)
                   and not info.filename.startswith(MEMBER_PREFIX)]
    members = [(info, _replace_head(data, head) if info.filename == WEIGHTS_MEMBER else data)
               for info, data in members]
    npz = io.BytesIO()
    np.savez(npz, **head.arrays())

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w") as archive:
            for info, data in members:
                archive.writestr(info, data)
            archive.writestr(META_MEMBER, json.dumps(meta, indent=2, sort_keys=True))
            archive.writestr(HEAD_MEMBER, npz.getvalue())

    return atomic_write(path, write, keep_previous=keep_previous)


def install_engine(path: Path, ref: BackboneRef) -> bool:
    """Copy the int8 engine a model carries into the engine cache, if it is missing there."""
    target = ref.engine_file
    if target.exists():
        return True
    try:
        with zipfile.ZipFile(path) as archive:
            data = archive.read(ENGINE_MEMBER)
    except (KeyError, zipfile.BadZipFile, OSError):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, data)
    return True


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
    """The head's weights (with its hidden layer's, if any) straight from the file, without Keras."""
    path = resolve_model_path(path)
    try:
        with np.load(io.BytesIO(_read_member(path, HEAD_MEMBER))) as head:
            return Head.from_arrays(head)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{path} is damaged (the head cannot be read: {exc}): train again") from None


def load_classifier(path: str | Path) -> Classifier:
    from tfguess.engine.backbones import register_custom_layers

    register_custom_layers()  # the layers a saved model may use (e.g. a TF Hub module)
    path = resolve_model_path(path)
    meta = read_meta(path)
    from tfguess.core.quiet import import_tensorflow

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


# --- ensembles ---------------------------------------------------------------------------------


def ensemble_members(meta: dict) -> list[dict]:
    """The other members of an ensemble model (``[]`` for one backbone): each a dict with the
    ``file`` inside the archive and its ``backbone`` block."""
    return list((meta.get("ensemble") or {}).get("members") or [])


def backbone_names(meta: dict) -> str:
    """The model's backbone's name; an ensemble's members', joined by " + "."""
    return " + ".join(b["name"] for b in [meta["backbone"]] + [
        m["backbone"] for m in ensemble_members(meta)])


def save_ensemble(path: Path, member_files: list[Path], ensemble: dict,
                  metrics: dict | None = None) -> None:
    """Put the model files ``member_files`` (same labels, input size and resize) into the model at
    ``path`` as the other members of an ensemble, replacing any it had; ``ensemble`` is recorded
    under ``ensemble`` in its description (with the members' list), and ``metrics`` (the
    ensemble's, as ``metrics`` of a model's description) replace the first member's. Atomic: the
    file at ``path`` is the first member alone or the whole ensemble at every instant."""
    path = Path(path)
    meta = read_meta(path)
    members, blobs = [], []
    for i, file in enumerate(member_files, start=1):
        other = read_meta(file)
        if (other["labels"] != meta["labels"]
                or (other["backbone"]["input_size"], other["backbone"]["resize"])
                != (meta["backbone"]["input_size"], meta["backbone"]["resize"])):
            raise ModelError(f"{file} cannot join {path} in an ensemble: other labels, input size "
                             "or resize")
        name, data = f"{MEMBER_PREFIX}{i}.keras", Path(file).read_bytes()
        head = f"{MEMBER_PREFIX}{i}.head.npz"    # its head beside it: read without unpacking it
        members.append({"file": name, "head": head, "sha256": hashlib.sha256(data).hexdigest(),
                        "backbone": other["backbone"]})
        blobs += [(name, data), (head, _read_member(Path(file), HEAD_MEMBER))]
    meta = {**meta, "ensemble": {**ensemble, "members": members, "combine": "mean"},
            **({"metrics": metrics} if metrics is not None else {})}
    if not members:
        meta.pop("ensemble")
    with zipfile.ZipFile(path) as archive:
        kept = [(info, archive.read(info)) for info in archive.infolist()
                if info.filename != META_MEMBER and not info.filename.startswith(MEMBER_PREFIX)]

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w") as archive:
            for info, data in kept:
                archive.writestr(info, data)
            archive.writestr(META_MEMBER, json.dumps(meta, indent=2, sort_keys=True))
            for name, data in blobs:   # stored: a .keras file is a zip already
                archive.writestr(name, data, compress_type=zipfile.ZIP_STORED)

    atomic_write(path, write)


def member_file(path: Path, member: dict) -> Path:
    """The member's model file, unpacked from the ensemble at ``path`` into the cache (once: the
    name is its content's digest)."""
    from tfguess.core.cachedir import cache_dir

    def unpacked(digest: str) -> Path:
        return cache_dir() / "members" / f"{digest[:16]}.keras"

    if "sha256" in member and unpacked(member["sha256"]).is_file():
        return unpacked(member["sha256"])           # the usual case: nothing read, nothing hashed
    data = _read_member(path, member["file"])
    target = unpacked(hashlib.sha256(data).hexdigest())
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, data)
    return target


def member_head(path: Path, member: dict) -> Head:
    """The head of an ensemble's member: its own small entry (the archive inside the archive in a
    model written before there was one)."""
    try:
        if "head" in member:
            data = _read_member(path, member["head"])
        else:
            with zipfile.ZipFile(io.BytesIO(_read_member(path, member["file"]))) as inner:
                data = inner.read(HEAD_MEMBER)
        with np.load(io.BytesIO(data)) as head:
            return Head.from_arrays(head)
    except ModelError:   # an entry its description names is missing
        raise ModelError(f"{path} is damaged (its member {member.get('head', member['file'])} is "
                         "missing): train again, or use the model.previous.keras kept beside "
                         "it") from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{path} is damaged (its member {member['file']} cannot be read: {exc}): "
                         "train again") from None


def load_ensemble(path: str | Path) -> Classifier:
    """The model at ``path`` as one Keras model (what the exports convert): for an ensemble, the
    members side by side on one input, their probabilities averaged (layer ``ensemble``)."""
    first = load_classifier(path)
    members = ensemble_members(first.meta)
    if not members:
        return first
    import keras

    models = [first.keras_model] + [load_classifier(member_file(first.path, m)).keras_model
                                    for m in members]
    inputs = keras.Input((first.input_size, first.input_size, 3), name="pixels")
    outputs = [keras.Model(m.input, m.output, name=f"member_{i}")(inputs)
               for i, m in enumerate(models)]
    averaged = keras.layers.Average(name="ensemble")(outputs)
    return Classifier(keras.Model(inputs, averaged, name="tfguess_ensemble"), first.labels,
                      first.meta, first.path)
