"""Runs the frozen backbone fast: decoding in a pool of threads, overlapped with batched inference.

Two engines compute the same features: ``keras`` (the backbone's Keras model in a compiled
``tf.function``) and ``tflite`` (the backbone converted once to TFLite and run by LiteRT with
XNNPACK; the converted file is cached). ``auto`` picks ``tflite`` and falls back to ``keras`` when
the conversion is not possible.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._quiet import quiet_stderr
from .images import ImageError, load_image

ENGINES = ("auto", "tflite", "keras")


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


@dataclass
class Loaded:
    """One input of a batch: its position in the input list and its pixels, or why it failed."""

    index: int
    path: Path
    pixels: np.ndarray | None
    error: str | None = None


def iter_loaded(
    paths: list[Path],
    size: int,
    resize: str,
    workers: int = 0,
    prefetch: int = 64,
    reject_placeholders: bool = False,
) -> Iterator[Loaded]:
    """Decode ``paths`` in a thread pool, yielding results in input order with bounded look-ahead.

    At most ``prefetch`` decoded images are held at once, so memory does not grow with the
    number of images.
    """

    def load(i: int) -> Loaded:
        path = paths[i]
        try:
            pixels = load_image(path, size, resize, reject_placeholders=reject_placeholders)
            return Loaded(i, path, pixels)
        except ImageError as exc:
            return Loaded(i, path, None, exc.reason)
        except OSError as exc:
            return Loaded(i, path, None, f"cannot read: {exc.strerror or exc}")

    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        pending = []
        it = iter(range(len(paths)))
        for i in it:
            pending.append(pool.submit(load, i))
            if len(pending) >= prefetch:
                break
        while pending:
            future = pending.pop(0)
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(load, nxt))
            yield future.result()


def iter_batches(loaded: Iterable[Loaded], batch_size: int) -> Iterator[list[Loaded]]:
    """Group decoded inputs into batches; failed ones travel in the batch with ``pixels=None``."""
    batch: list[Loaded] = []
    n_ok = 0
    for item in loaded:
        batch.append(item)
        n_ok += item.pixels is not None
        if n_ok >= batch_size:
            yield batch
            batch, n_ok = [], 0
    if batch:
        yield batch


class KerasEngine:
    name = "keras"

    def __init__(self, model) -> None:
        import tensorflow as tf

        self._fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return np.asarray(self._fn(pixels.astype(np.float32)))


class TFLiteEngine:
    name = "tflite"

    def __init__(self, tflite_path: Path, threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(tflite_path)
        with quiet_stderr():  # "Created TensorFlow Lite XNNPACK delegate for CPU."
            self._interpreter = Interpreter(
                model_path=str(tflite_path), num_threads=threads or default_workers()
            )
            self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._batch = 0
        self._lock = threading.Lock()

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        with self._lock:
            n = len(pixels)
            if n != self._batch:
                self._interpreter.resize_tensor_input(self._input, [n, *pixels.shape[1:]])
                self._interpreter.allocate_tensors()
                self._batch = n
            self._interpreter.set_tensor(self._input, pixels.astype(np.float32))
            self._interpreter.invoke()
            return self._interpreter.get_tensor(self._output).copy()


def convert_to_tflite(model, size: int, out_path: Path) -> Path:
    """Convert a Keras model taking ``[N, size, size, 3]`` float pixels to a float32 TFLite file."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    fn = tf.function(lambda x: model(x, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec([None, size, size, 3], tf.float32))
    # Freeze the weights into the graph: Keras 3 variables otherwise stay resource variables.
    frozen = convert_variables_to_constants_v2(concrete)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen], model)
    data = converter.convert()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out_path)
    return out_path


def engine_cache_dir() -> Path:
    from .backbones import cache_dir

    return Path(cache_dir()) / "engines"


def engine_cache_tflite(key: str) -> Path:
    """Where the TFLite twin of the backbone identified by ``key`` is cached."""
    return engine_cache_dir() / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.tflite"


def make_engine(model, size: int, key: str, engine: str = "auto", log: Callable = print):
    """Return a callable ``pixels -> features`` for the backbone ``model``.

    ``key`` identifies the backbone and its weights (the TFLite file is cached under it).
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if engine == "keras":
        return KerasEngine(model)
    path = engine_cache_tflite(key)
    if not path.exists():
        try:
            log(f"Converting the backbone to TFLite once (cached in {path.parent}) ...")
            convert_to_tflite(model, size, path)
        except Exception as exc:  # noqa: BLE001 - any converter failure falls back
            if engine == "tflite":
                raise
            print(f"TFLite conversion failed ({exc.__class__.__name__}); using Keras.", file=sys.stderr)
            return KerasEngine(model)
    return TFLiteEngine(path)
