"""The feature extractor: one factory from a backbone to a function ``pixels -> features``.

A backbone is identified by :class:`BackboneRef` (name, weights id, input size, resize recipe):
it keys the TFLite file the backbone is converted to once (the *engine*, cached in
``~/.cache/tfguess/engines``) and the bottleneck cache. Training, guessing, the report and the
benchmarks all get their extractor from :func:`make_extractor`, so writer and reader can never
disagree about the key. Fine-tuned backbones get a weights id of their own.

Engines: ``tflite`` (the converted file run by :class:`runtime.TFLiteEngine`), ``keras`` (the Keras
model in a compiled ``tf.function``), ``auto`` (tflite, falling back to keras when the conversion
fails). TFLite features equal the Keras ones within 1e-4 (tests/test_engine.py).
Dynamic-range quantisation is not used: on x86 it was slower and moved features by up to 0.5.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .fsutil import atomic_write
from .images import PREPROCESS_VERSION
from .runtime import TFLiteEngine

ENGINES = ("auto", "tflite", "keras")
Extractor = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class BackboneRef:
    """What identifies a backbone's features: the key of the engine file and of the feature cache."""

    name: str
    weights_id: str
    input_size: int
    resize: str

    @classmethod
    def from_meta(cls, backbone: dict) -> BackboneRef:
        """From the ``backbone`` block a saved model or run summary carries."""
        return cls(backbone["name"], backbone["weights_id"], int(backbone["input_size"]),
                   backbone["resize"])

    @property
    def engine_key(self) -> str:
        return f"{self.name}|{self.weights_id}|{self.input_size}"

    @property
    def engine_file(self) -> Path:
        """Where the backbone's TFLite twin is cached."""
        from .backbones import cache_dir

        digest = hashlib.sha256(self.engine_key.encode()).hexdigest()[:16]
        return Path(cache_dir()) / "engines" / f"{digest}.tflite"

    @property
    def cache_key(self) -> str:
        """The bottleneck cache folder name: covers everything that changes a feature."""
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.name)[:60]
        recipe = f"{self.engine_key}|{self.resize}|v{PREPROCESS_VERSION}"
        digest = hashlib.sha256(recipe.encode()).hexdigest()[:12]
        return f"{slug}-{self.input_size}-{digest}"


class KerasEngine:
    name = "keras"

    def __init__(self, model) -> None:
        from ._quiet import import_tensorflow

        tf = import_tensorflow()

        self._fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return np.asarray(self._fn(pixels.astype(np.float32)))


def frozen_function(model, size: int, batch: int | None = None, name: str | None = None):
    """``model`` as one concrete function on ``[batch, size, size, 3]`` with frozen weights.

    Keras 3 variables otherwise stay resource variables, and a TFLite file converted from them
    silently loses its weights (it outputs NaN).
    """
    from ._quiet import import_tensorflow

    tf = import_tensorflow()
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    fn = tf.function(lambda x: model(x, training=False))
    spec = tf.TensorSpec([batch, size, size, 3], tf.float32, name=name)
    return convert_variables_to_constants_v2(fn.get_concrete_function(spec))


def convert_to_tflite(model, size: int, out_path: Path) -> Path:
    """Convert a Keras model taking ``[N, size, size, 3]`` float pixels to a float32 TFLite file."""
    from ._quiet import import_tensorflow

    tf = import_tensorflow()

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [frozen_function(model, size)], tf.Module()
    )
    data = converter.convert()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out_path, data)
    return out_path


def make_extractor(
    ref: BackboneRef,
    build_model: Callable[[], object],
    engine: str = "auto",
    log: Callable[[str], None] = print,
) -> Extractor:
    """A callable ``pixels [N, size, size, 3] (0..255) -> features [N, dim]`` for ``ref``.

    ``build_model`` returns the backbone's Keras model; it is only called when needed (the Keras
    engine, or a TFLite file that is not cached yet), so a cached engine never imports TensorFlow.
    """
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if engine == "keras":
        return KerasEngine(build_model())
    path = ref.engine_file
    if not path.exists():
        model = build_model()
        try:
            log(f"Converting the backbone to TFLite once (cached in {path.parent}) ...")
            convert_to_tflite(model, ref.input_size, path)
        except Exception as exc:  # noqa: BLE001 - any converter failure falls back
            if engine == "tflite":
                raise
            print(f"TFLite conversion failed ({exc.__class__.__name__}); using Keras.", file=sys.stderr)
            return KerasEngine(model)
    return TFLiteEngine(path)


def engine_name(extractor: Extractor) -> str:
    return getattr(extractor, "name", extractor.__class__.__name__)
