"""keras.applications backbones. Weights: ``--weights PATH``, else the Keras cache
(``$KERAS_HOME/models``), else a download; offline without a file, a WeightsUnavailableError
naming the file, its URL and the folder to put it in, raised before any model is built."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tfguess.engine.backbones._common import (
    RANDOM,
    WeightsUnavailableError,
    check_file,
    file_fingerprint,
    keras_models_dir,
)

_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class AppSpec:
    name: str
    constructor: str            # attribute of keras.applications
    input_size: int
    feature_dim: int
    preprocessing: str
    rescale: bool               # add Rescaling(1/127.5, offset=-1) in front (MobileNetV3 has its own)
    folder: str                 # URL folder under _BASE
    top_file: str
    notop_file: str
    top_md5: str | None = None
    notop_md5: str | None = None

    def url(self, filename: str) -> str:
        return f"{_BASE}{self.folder}/{filename}"


SPECS = [
    AppSpec(
        "mobilenet_v2", "MobileNetV2", 224, 1280, "x / 127.5 - 1", True, "mobilenet_v2",
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
    ),
    AppSpec(
        "mobilenet_v3_small", "MobileNetV3Small", 224, 576, "x / 127.5 - 1", False, "mobilenet_v3",
        "weights_mobilenet_v3_small_224_1.0_float.h5",
        "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
        "8768d4c2e7dee89b9d02b2d03d65d862", "d3e8ec802a04aa4fc771ee12a9a9b836",
    ),
    AppSpec(
        "mobilenet_v3_large", "MobileNetV3Large", 224, 960, "x / 127.5 - 1", False, "mobilenet_v3",
        "weights_mobilenet_v3_large_224_1.0_float.h5",
        "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
        "59e551e166be033d707958cf9e29a6a7", "07fb09a5933dd0c8eaafa16978110389",
    ),
    AppSpec(
        "inception_v3", "InceptionV3", 299, 2048, "x / 127.5 - 1", True, "inception_v3",
        "inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
        "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "9a0d58056eeedaa3f26cb7ebd46da564", "bcbd6486424b2319ff4ef7d526e38f63",
    ),
]


def download(url: str, dest: Path, md5: str | None = None, timeout: float = 30) -> None:
    """Fetch url to dest atomically (checking md5 when known); raises OSError when offline."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        digest = hashlib.md5()
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                out.write(chunk)
                digest.update(chunk)
        if md5 and digest.hexdigest() != md5:
            raise OSError(f"{url}: downloaded file is corrupt (md5 mismatch)")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _local(spec: AppSpec, include_top: bool) -> Path | None:
    """A weights file already in the Keras cache (for features, the no-top file or the full one)."""
    names = [spec.top_file] if include_top else [spec.notop_file, spec.top_file]
    for name in names:
        path = keras_models_dir() / name
        if path.is_file():
            return path
    return None


def resolve_weights(spec: AppSpec, weights: str | None, include_top: bool) -> Path | None:
    """The weights file to load (None: random), downloading it when needed and possible."""
    if weights == RANDOM:
        return None
    if weights is not None:
        return check_file(weights, spec.name)
    path = _local(spec, include_top)
    if path is not None:
        return path
    filename = spec.top_file if include_top else spec.notop_file
    md5 = spec.top_md5 if include_top else spec.notop_md5
    dest = keras_models_dir() / filename
    try:
        download(spec.url(filename), dest, md5)
    except OSError as e:
        raise WeightsUnavailableError(
            f"ImageNet weights for {spec.name} are not on this machine and could not be "
            f"downloaded ({e}). Fetch {spec.url(filename)} and put it in {dest.parent}/ "
            f"(keeping the name {filename}), or pass --weights PATH to a local copy."
        ) from e
    return dest


def _construct(spec: AppSpec, include_top: bool):
    import keras

    ctor = getattr(keras.applications, spec.constructor)
    kwargs = {"input_shape": (spec.input_size, spec.input_size, 3), "weights": None,
              "include_top": include_top}
    if not include_top:
        kwargs["pooling"] = "avg"
    return ctor(**kwargs)


def _load(spec: AppSpec, path: Path, include_top: bool):
    """Build the keras.applications model and load path into it. For features, a full
    classifier file works too: its weights up to the pooling are a prefix of the list."""
    model = _construct(spec, include_top)
    try:
        model.load_weights(path)
        return model
    except ValueError as first:
        if include_top:
            raise WeightsUnavailableError(f"{path}: not a {spec.constructor} classifier weights file ({first}); check the --weights path") from first
    full = _construct(spec, True)
    try:
        full.load_weights(path)
    except ValueError as e:
        raise WeightsUnavailableError(f"{path}: not a {spec.constructor} weights file ({e}); check the --weights path") from e
    arrays = full.get_weights()[: len(model.weights)]
    if [a.shape for a in arrays] != [tuple(w.shape) for w in model.weights]:
        raise WeightsUnavailableError(f"{path}: weights do not match {spec.constructor}; check the --weights path")
    model.set_weights(arrays)
    return model


def builder(spec: AppSpec) -> Callable:
    def build(weights: str | None, include_top: bool):
        import keras

        path = resolve_weights(spec, weights, include_top)  # fails fast, before building
        inner = _construct(spec, include_top) if path is None else _load(spec, path, include_top)
        inputs = keras.Input((spec.input_size, spec.input_size, 3), name="pixels")
        x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="normalize")(inputs) if spec.rescale else inputs
        return keras.Model(inputs, inner(x), name="backbone")

    return build


def fingerprint(spec: AppSpec) -> Callable[[str | None], str]:
    def weights_id(weights: str | None) -> str:
        path = check_file(weights, spec.name) if weights is not None else _local(spec, False)
        if path is None:
            raise WeightsUnavailableError(
                f"no weights for {spec.name} yet: build the backbone first (it downloads "
                f"{spec.notop_file} into {keras_models_dir()}/), or pass --weights PATH"
            )
        return file_fingerprint(path)

    return weights_id


def availability(spec: AppSpec) -> Callable[[], bool]:
    return lambda: _local(spec, False) is not None
