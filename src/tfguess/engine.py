"""Runs the frozen backbone fast: decoding in a pool of threads, overlapped with batched inference.

Two engines compute the same features: ``keras`` (the backbone's Keras model in a compiled
``tf.function``) and ``tflite`` (the backbone converted once to float32 TFLite and run by LiteRT
with XNNPACK, one single-threaded interpreter per core; the converted file is cached). ``auto``
picks ``tflite`` and falls back to ``keras`` when the conversion is not possible. TFLite features
equal the Keras ones within 1e-4 (tests/test_engine.py). Dynamic-range quantisation
(``converter.optimizations``) is not used: on x86 it was slower and moved features by up to 0.5.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._quiet import quiet_stderr
from .images import ImageError, load_image

ENGINES = ("auto", "tflite", "keras")


def default_workers() -> int:
    """The number of cores this process may run on (respects CPU affinity, e.g. ``taskset``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class Loaded:
    """One input of a batch: its position in the input list and its pixels, or why it failed."""

    index: int
    path: Path
    pixels: np.ndarray | None
    error: str | None = None


def iter_loaded(
    paths: Iterable[Path],
    size: int,
    resize: str,
    workers: int = 0,
    prefetch: int = 64,
    reject_placeholders: bool = False,
) -> Iterator[Loaded]:
    """Decode ``paths`` in a thread pool, yielding results in input order with bounded look-ahead.

    At most ``prefetch`` images are decoded and not yet taken by the consumer, so memory does not
    grow with the number of images; ``paths`` may be a generator. Unreadable files come back with
    ``pixels=None`` and the reason in ``error``.
    """

    def load(i: int, path: Path) -> Loaded:
        try:
            pixels = load_image(path, size, resize, reject_placeholders=reject_placeholders)
            return Loaded(i, Path(path), pixels)
        except ImageError as exc:
            return Loaded(i, Path(path), None, exc.reason)
        except OSError as exc:
            return Loaded(i, Path(path), None, f"cannot read: {exc.strerror or exc}")

    items = enumerate(paths)
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        pending: deque[Future[Loaded]] = deque(
            pool.submit(load, i, p) for i, p in itertools.islice(items, max(1, prefetch))
        )
        try:
            while pending:
                yield pending.popleft().result()
                for i, p in itertools.islice(items, 1):
                    pending.append(pool.submit(load, i, p))
        finally:  # the consumer stopped early: do not decode what nobody will read
            for future in pending:
                future.cancel()


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
    """Runs a TFLite model on batches with ``threads`` single-threaded interpreters in parallel.

    Each interpreter takes one image at a time: on a CPU this is faster than one multi-threaded
    interpreter on the whole batch (the activations of one image stay in the core's cache, and
    no thread waits for another at every layer). Interpreters beyond the first are created when
    a batch first needs them, so a single image costs one.
    """

    name = "tflite"

    def __init__(self, tflite_path: Path, threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(tflite_path)
        self.threads = max(1, threads or default_workers())
        self._new = lambda: Interpreter(model_path=str(self.path), num_threads=1)
        self._interpreters: list = []
        self._add_interpreter()
        details = self._interpreters[0]
        self._input = details.get_input_details()[0]["index"]
        self._output = details.get_output_details()[0]["index"]
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _add_interpreter(self) -> None:
        with quiet_stderr():  # "Created TensorFlow Lite XNNPACK delegate for CPU."
            interpreter = self._new()
            size = interpreter.get_input_details()[0]["shape"][1:]
            interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], [1, *size])
            interpreter.allocate_tensors()
        self._interpreters.append(interpreter)

    def _run(self, k: int, pixels: np.ndarray, out: np.ndarray, rows: range) -> None:
        interpreter = self._interpreters[k]
        for i in rows:
            interpreter.tensor(self._input)()[0] = pixels[i]  # casts uint8 -> float32 in place
            interpreter.invoke()
            out[i] = interpreter.get_tensor(self._output)[0]

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        with self._lock:
            n = len(pixels)
            dim = self._interpreters[0].get_output_details()[0]["shape"][1:]
            out = np.empty((n, *dim), np.float32)
            parts = min(n, self.threads)
            while len(self._interpreters) < parts:
                self._add_interpreter()
            if parts <= 1:
                self._run(0, pixels, out, range(n))
                return out
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="tflite")
            bounds = np.linspace(0, n, parts + 1).astype(int)
            jobs = [
                self._pool.submit(self._run, k, pixels, out, range(bounds[k], bounds[k + 1]))
                for k in range(parts)
            ]
            for job in jobs:
                job.result()
            return out


def frozen_function(model, size: int, batch: int | None = None, name: str | None = None):
    """``model`` as one concrete function on ``[batch, size, size, 3]`` with frozen weights.

    Keras 3 variables otherwise stay resource variables, and a TFLite file converted from them
    silently loses its weights (it outputs NaN).
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    fn = tf.function(lambda x: model(x, training=False))
    spec = tf.TensorSpec([batch, size, size, 3], tf.float32, name=name)
    return convert_variables_to_constants_v2(fn.get_concrete_function(spec))


def convert_to_tflite(model, size: int, out_path: Path) -> Path:
    """Convert a Keras model taking ``[N, size, size, 3]`` float pixels to a float32 TFLite file."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [frozen_function(model, size)], tf.Module()
    )
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
