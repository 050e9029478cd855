"""TF Hub image feature-vector modules as Keras 3 backbones.

``hub.KerasLayer`` only works with tf_keras, so the module is wrapped in a small Keras 3 layer
whose config stores the handle (a saved model re-loads the module from it). TF Hub image
modules take float pixels in [0, 1]: the model divides 0..255 pixels by 255 first.

A local SavedModel folder is loaded with TensorFlow alone; a handle (URL or hub name) needs
``tensorflow-hub``, the ``tfhub`` extra (not a default dependency: it pulls ``tf-keras`` and with
it the full ``tensorflow`` wheel beside ``tensorflow-cpu``).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import keras

from tfguess.engine.backbones._common import RANDOM, WeightsUnavailableError, file_fingerprint

INSTALL_HINT = "pip install 'tfguess[tfhub]'"


def _hub_load(handle: str):
    """``hub.load`` for a handle; a local folder needs only TensorFlow (the same SavedModel load)."""
    if os.path.isdir(handle):
        import tensorflow as tf

        return tf.saved_model.load(handle)
    try:
        import tensorflow_hub as hub
    except ImportError:
        raise WeightsUnavailableError(
            f"the TF Hub handle {handle} needs tensorflow-hub: {INSTALL_HINT}, or download the "
            "module (a SavedModel .tar.gz from its model page), unpack it into a folder and pass "
            "that folder instead of the handle"
        ) from None
    return hub.load(handle)


@lru_cache(maxsize=8)
def load_module(handle: str):
    try:
        return _hub_load(handle)
    except WeightsUnavailableError:
        raise
    except Exception as e:
        if os.path.isdir(handle) or "://" not in handle and os.path.exists(handle):
            raise ValueError(f"{handle}: not a TF2 SavedModel image module ({e})") from e
        raise WeightsUnavailableError(
            f"could not load the TF Hub module {handle} ({type(e).__name__}: {e}). Offline, download "
            "the module (a SavedModel .tar.gz from its model page), unpack it into a folder and pass "
            "that folder instead of the handle."
        ) from e


def _input_spec(module):
    fn = module.__call__ if callable(module) else None
    for concrete in getattr(fn, "concrete_functions", None) or []:
        args = concrete.structured_input_signature[0]
        if args and hasattr(args[0], "shape"):
            return args[0]
    sig = getattr(module, "signatures", {}).get("serving_default")
    if sig is not None:
        specs = list(sig.structured_input_signature[1].values())
        if specs:
            return specs[0]
    return None


def inspect_module(handle: str, input_size: int | None) -> tuple[int, int]:
    """(input size, feature dimension) of the module."""
    import tensorflow as tf

    module = load_module(handle)
    spec = _input_spec(module)
    size = None
    if spec is not None and spec.shape.rank == 4:
        h, w = spec.shape[1], spec.shape[2]
        if h is not None and w is not None:
            if h != w:
                raise ValueError(f"{handle}: non-square input {h}x{w} is not supported")
            size = int(h)
    if size is not None and input_size is not None and input_size != size:
        raise ValueError(f"{handle}: the module takes {size}x{size} images, not {input_size}")
    size = size or input_size
    if size is None:
        raise ValueError(
            f"{handle}: the module does not say its input size; give it (e.g. --image-size 224)"
        )
    out = module(tf.zeros([1, size, size, 3], tf.float32))
    if isinstance(out, dict):
        raise ValueError(f"{handle}: expected an image feature-vector module (one output tensor)")
    if out.shape.rank != 2:
        raise ValueError(f"{handle}: expected [batch, features] outputs, got shape {out.shape}")
    return size, int(out.shape[-1])


@keras.saving.register_keras_serializable(package="tfguess")
class HubModule(keras.layers.Layer):
    """Calls a TF Hub feature-vector module on [0, 1] pixels (frozen, not trainable)."""

    def __init__(self, handle: str, feature_dim: int, **kwargs):
        kwargs["trainable"] = False
        super().__init__(**kwargs)
        self.handle = handle
        self.feature_dim = feature_dim

    def call(self, inputs):
        return load_module(self.handle)(inputs)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.feature_dim)

    def get_config(self):
        config = super().get_config()
        config.update(handle=self.handle, feature_dim=self.feature_dim)
        config.pop("trainable", None)
        return config


def build(handle: str, size: int, dim: int, weights: str | None) -> keras.Model:
    if weights not in (None, RANDOM):
        raise ValueError("a TF Hub module brings its own weights: --weights does not apply")
    inputs = keras.Input((size, size, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 255, name="normalize")(inputs)
    return keras.Model(inputs, HubModule(handle, dim, name="hub_module")(x), name="backbone")


def fingerprint(handle: str, weights: str | None) -> str:
    """The saved_model.pb and variables of a local module, else the handle itself."""
    import hashlib

    path = Path(handle)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        parts = [f"{p.relative_to(path)}:{file_fingerprint(p)}" for p in files]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    return hashlib.sha256(handle.encode()).hexdigest()[:16]
