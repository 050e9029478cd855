"""The feature extractor: one factory from a backbone to a function ``pixels -> features``.

A backbone is identified by :class:`BackboneRef` (name, weights id, input size, resize recipe):
it keys the TFLite file the backbone is converted to once (the *engine*, cached in
``~/.cache/tfguess/engines``) and the bottleneck cache. Training, guessing, the report and the
benchmarks all get their extractor from :func:`make_extractor`, so writer and reader can never
disagree about the key. Fine-tuned backbones get a weights id of their own.

Engines: ``tflite`` (the converted file run by :class:`runtime.TFLiteEngine`), ``keras`` (the Keras
model in a compiled ``tf.function``), ``auto`` (tflite, falling back to keras when the conversion
fails). TFLite features equal the Keras ones within 1e-4 (tests/engine/test_engine.py).
Dynamic-range quantisation is not used: on x86 it was slower and moved features by up to 0.5.

Precision: ``float32`` (the converted model as is) or ``int8`` (full-integer quantisation with
static calibration, float input and output, run by XNNPACK's int8 kernels: about 2x faster here).
An int8 engine is calibrated on the user's own training photos (:func:`choose_calibration`), so
its file and the features it gives are keyed by the calibration as well (``BackboneRef.calibration``,
a digest of the calibration images' contents).
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfguess.core.config import ENGINE_CHOICES
from tfguess.core.errors import ConfigError, ModelError
from tfguess.core.fsutil import atomic_write
from tfguess.core.quiet import quiet_stderr
from tfguess.data.images import PREPROCESS_VERSION
from tfguess.engine.runtime import TFLiteEngine

PRECISIONS = ("float32", "int8")
CALIBRATION_SIZE = 100   # images the int8 quantisation is calibrated on
Extractor = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class BackboneRef:
    """What identifies a backbone's features: the key of the engine file and of the feature cache."""

    name: str
    weights_id: str
    input_size: int
    resize: str
    precision: str = "float32"
    calibration: str = ""    # int8: digest of the calibration images

    @classmethod
    def from_meta(cls, backbone: dict) -> BackboneRef:
        """From the ``backbone`` block a saved model or run summary carries."""
        return cls(backbone["name"], backbone["weights_id"], int(backbone["input_size"]),
                   backbone["resize"], backbone.get("precision", "float32"),
                   backbone.get("calibration", ""))

    @property
    def engine_key(self) -> str:
        key = f"{self.name}|{self.weights_id}|{self.input_size}"
        if self.precision != "float32":
            key += f"|{self.precision}|{self.calibration}"
        return key

    @property
    def engine_file(self) -> Path:
        """Where the backbone's TFLite twin is cached."""
        from tfguess.engine.backbones import cache_dir

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
        from tfguess.core.quiet import import_tensorflow

        tf = import_tensorflow()

        self._fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return np.asarray(self._fn(pixels.astype(np.float32)))


def frozen_function(model, size: int, batch: int | None = None, name: str | None = None):
    """``model`` as one concrete function on ``[batch, size, size, 3]`` with frozen weights.

    Keras 3 variables otherwise stay resource variables, and a TFLite file converted from them
    silently loses its weights (it outputs NaN).
    """
    from tfguess.core.quiet import import_tensorflow

    tf = import_tensorflow()
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    fn = tf.function(lambda x: model(x, training=False))
    spec = tf.TensorSpec([batch, size, size, 3], tf.float32, name=name)
    return convert_variables_to_constants_v2(fn.get_concrete_function(spec))


def calibration_digest(digests: list[str]) -> str:
    """The calibration's identity: the sorted content digests of its images."""
    return hashlib.sha256("|".join(sorted(digests)).encode()).hexdigest()[:16]


def choose_calibration(digests: list[str], n: int = CALIBRATION_SIZE) -> list[str]:
    """The calibration images among the training photos: the ``n`` smallest content digests, a
    sample that does not depend on file names or order and that new photos change only rarely."""
    return sorted(set(digests))[:n]


def convert_to_tflite(model, size: int, out_path: Path,
                      calibration: Callable[[], Iterable[np.ndarray]] | None = None) -> Path:
    """Convert a Keras model taking ``[N, size, size, 3]`` float pixels to a TFLite file: float32,
    or with ``calibration`` (a function giving ``[size, size, 3]`` pixel arrays) full-integer int8
    with float input and output."""
    from tfguess.core.quiet import import_tensorflow

    tf = import_tensorflow()

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [frozen_function(model, size)], tf.Module()
    )
    if calibration is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.representative_dataset = lambda: (
            [np.asarray(x, np.float32)[None]] for x in calibration()
        )
    with quiet_stderr():
        data = converter.convert()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out_path, data)
    return out_path


def make_extractor(
    ref: BackboneRef,
    build_model: Callable[[], object],
    engine: str = "auto",
    log: Callable[[str], None] = print,
    calibration: Callable[[], Iterable[np.ndarray]] | None = None,
) -> Extractor:
    """A callable ``pixels [N, size, size, 3] (0..255) -> features [N, dim]`` for ``ref``.

    ``build_model`` returns the backbone's Keras model; it is only called when needed (the Keras
    engine, or a TFLite file that is not cached yet), so a cached engine never imports TensorFlow.
    ``calibration`` gives the calibration pixels an int8 engine that is not cached yet needs.
    """
    if engine not in ENGINE_CHOICES:
        raise ConfigError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINE_CHOICES)}")
    if ref.precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {ref.precision!r}: choose one of {', '.join(PRECISIONS)}")
    if engine == "keras":
        return KerasEngine(build_model())
    path = ref.engine_file
    if not path.exists():
        if ref.precision == "int8" and calibration is None:
            raise ModelError(f"the int8 engine of {ref.name} (calibration {ref.calibration}) is not "
                             f"in {path.parent}: train again, or guess with --engine keras")
        model = build_model()
        try:
            what = "an int8 TFLite engine (calibrating)" if ref.precision == "int8" else "TFLite"
            log(f"Converting the backbone to {what} once (cached in {path.parent}) ...")
            convert_to_tflite(model, ref.input_size, path,
                              calibration if ref.precision == "int8" else None)
        except Exception as exc:  # noqa: BLE001 - any converter failure falls back
            if engine == "tflite" or ref.precision == "int8":
                raise
            print(f"TFLite conversion failed ({exc.__class__.__name__}); using Keras.", file=sys.stderr)
            return KerasEngine(model)
    return TFLiteEngine(path)


def engine_name(extractor: Extractor) -> str:
    return getattr(extractor, "name", extractor.__class__.__name__)
