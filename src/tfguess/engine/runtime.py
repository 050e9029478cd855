"""Running saved TFLite files without TensorFlow's Python stack: the fast path of guessing.

The interpreter comes from ``ai-edge-litert`` (LiteRT) where it has wheels, else from
TensorFlow's own ``tf.lite.Interpreter`` (same kernels, XNNPACK included); :data:`RUNTIME` says
which one this process uses, and run summaries record it.

- :class:`TFLiteEngine`: a backbone's TFLite twin, pixels -> features, one single-threaded
  interpreter per core.
- :class:`TFLiteClassifier`: an exported ``.tflite`` classifier that carries its labels.
- :func:`softmax` and :class:`Head`: the trained head applied to features in numpy.
- :func:`auto_precision`: the engine arithmetic ``--precision auto`` picks on this machine.
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfguess.core.cachedir import cache_dir
from tfguess.core.errors import ModelError
from tfguess.core.fsutil import atomic_write
from tfguess.core.quiet import quiet_stderr
from tfguess.data.pipeline import default_workers
from tfguess.engine.tflite_metadata import DESCRIPTION_FILE, read_metadata


def _interpreter_class():
    """LiteRT's interpreter, or TensorFlow's where LiteRT is not installed (``TFGUESS_RUNTIME``
    set to ``tf.lite`` forces the latter)."""
    if os.environ.get("TFGUESS_RUNTIME") != "tf.lite":
        try:
            from ai_edge_litert.interpreter import Interpreter

            return Interpreter, "ai-edge-litert"
        except ImportError:
            pass
    from tfguess.core.quiet import import_tensorflow

    return import_tensorflow().lite.Interpreter, "tf.lite"


_CLASS: tuple | None = None


def interpreter_class():
    """``(Interpreter class, runtime name)``, chosen once per process."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _interpreter_class()
    return _CLASS


def runtime_name() -> str:
    """``ai-edge-litert`` or ``tf.lite``: which interpreter runs TFLite files in this process."""
    return interpreter_class()[1]


def new_interpreter(**kwargs):
    with quiet_stderr():  # "Created TensorFlow Lite XNNPACK delegate for CPU."
        return interpreter_class()[0](**kwargs)


# CPU features with int8 dot-product instructions, which XNNPACK's int8 kernels use (x86:
# /proc/cpuinfo flags; arm64: its "Features" line). Without them the int8 engine is no faster than
# float32 (measured on an AVX2-only core: 13.2 vs 14.0 CPU ms an image); with AVX-512 VNNI an
# int8 invoke takes 0.4x the float32 one (bench/benchmark.py).
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
# Flags printed beside speed figures: the int8 ones and the bf16 ones.
SPEED_FLAGS = INT8_DOT_FLAGS + ("avx512_bf16", "amx_bf16", "avx2", "avx512f", "bf16")
PRECISION_FILE = "precision.json"   # in the cache folder: the decision, per machine


def cpu_flags() -> set[str]:
    """The CPU's feature flags as the kernel lists them (empty where there is no /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return set()


def _machine_key() -> str:
    import platform

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "cpu part")):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}|{platform.system()}|{platform.machine()}|{model}"


def _decide_precision() -> dict:
    import platform

    found = sorted(cpu_flags() & set(INT8_DOT_FLAGS))
    if found:
        return {"precision": "int8", "reason": f"the CPU has int8 dot-product instructions ({', '.join(found)})"}
    if platform.system() == "Darwin" and platform.machine() == "arm64":  # every Apple M chip
        return {"precision": "int8", "reason": "Apple silicon (int8 dot-product instructions)"}
    return {"precision": "float32",
            "reason": f"no int8 dot-product instructions ({', '.join(INT8_DOT_FLAGS)}) on this CPU"}


_AUTO: dict | None = None


def auto_precision() -> dict:
    """What ``--precision auto`` runs on this machine: ``{"precision": "int8" | "float32",
    "reason": ...}``. Decided once per machine (kept in the cache folder, keyed by host name and
    CPU model, so a cache folder shared by several machines holds each one's decision)."""
    global _AUTO
    if _AUTO is not None:
        return _AUTO
    key = _machine_key()
    path = cache_dir() / PRECISION_FILE
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    decision = known.get(key)
    if not (isinstance(decision, dict) and decision.get("precision") in ("int8", "float32")):
        decision = _decide_precision()
        try:
            atomic_write(path, json.dumps({**known, key: decision}, indent=1))
        except OSError:
            pass  # a read-only cache folder: decided again next time, the same way
    _AUTO = decision
    return decision


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class Head:
    """The trained head: ``softmax(features @ kernel + bias)``, or with a hidden layer
    ``softmax(relu(features @ hidden_kernel + hidden_bias) @ kernel + bias)`` (inference: dropout
    is the identity)."""

    kernel: np.ndarray
    bias: np.ndarray
    hidden_kernel: np.ndarray | None = None
    hidden_bias: np.ndarray | None = None

    def __call__(self, features: np.ndarray) -> np.ndarray:
        x = features
        if self.hidden_kernel is not None:
            x = np.maximum(x @ self.hidden_kernel + self.hidden_bias, 0.0)
        return softmax(x @ self.kernel + self.bias)

    @property
    def hidden_units(self) -> int:
        return 0 if self.hidden_kernel is None else int(self.hidden_kernel.shape[1])

    @property
    def feature_dim(self) -> int:
        """The length of the feature vectors the head takes."""
        return int((self.kernel if self.hidden_kernel is None else self.hidden_kernel).shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        """The weights by name (as the model file's head member stores them)."""
        arrays = {"kernel": self.kernel, "bias": self.bias}
        if self.hidden_kernel is not None:
            arrays.update(hidden_kernel=self.hidden_kernel, hidden_bias=self.hidden_bias)
        return arrays

    @classmethod
    def from_arrays(cls, arrays) -> Head:
        """The head from :meth:`arrays` (a dict or an ``np.load`` archive)."""
        names = set(getattr(arrays, "files", arrays))
        hidden = "hidden_kernel" in names
        return cls(np.asarray(arrays["kernel"]), np.asarray(arrays["bias"]),
                   np.asarray(arrays["hidden_kernel"]) if hidden else None,
                   np.asarray(arrays["hidden_bias"]) if hidden else None)


class TFLiteEngine:
    """Runs a TFLite model on batches with ``threads`` single-threaded interpreters in parallel.

    Each interpreter takes one image at a time: on a CPU this is faster than one multi-threaded
    interpreter on the whole batch (the activations of one image stay in the core's cache, and
    no thread waits for another at every layer). Interpreters beyond the first are created when
    a batch first needs them, so a single image costs one.
    """

    def __init__(self, tflite_path: Path, threads: int | None = None) -> None:
        self.path = Path(tflite_path)
        self.name = f"tflite ({runtime_name()})"
        self.threads = max(1, threads or default_workers())
        self._interpreters: list = []
        self._add_interpreter()
        first = self._interpreters[0]
        self._input = first.get_input_details()[0]["index"]
        self._output = first.get_output_details()[0]["index"]
        self._dim = tuple(first.get_output_details()[0]["shape"][1:])
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _add_interpreter(self) -> None:
        interpreter = new_interpreter(model_path=str(self.path), num_threads=1)
        size = interpreter.get_input_details()[0]["shape"][1:]
        interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], [1, *size])
        with quiet_stderr():  # the XNNPACK delegate announces itself here
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
            out = np.empty((n, *self._dim), np.float32)
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


class TFLiteClassifier:
    """Runs an exported ``.tflite`` alone: labels, input size and resize recipe come from inside it.

    Works with any image classifier carrying standard TFLite metadata (labels file, normalisation);
    without a ``tfguess.json`` inside, images are squashed to the input size.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.path = Path(path)
        data = self.path.read_bytes()
        try:
            md = read_metadata(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure means "not a usable model"
            raise ModelError(f"{self.path} is not a TFLite model with metadata ({exc})") from exc
        if md is None or not md.labels:
            raise ModelError(f"{self.path} has no labels inside (no TFLite metadata with a labels "
                             "file): export it with tfguess export TF_FILES --format tflite")
        description = json.loads(md.files.get(DESCRIPTION_FILE, b"{}"))
        self.labels: list[str] = md.labels
        self._interpreter = new_interpreter(model_content=data, num_threads=threads or default_workers())
        inp = self._interpreter.get_input_details()[0]
        out = self._interpreter.get_output_details()[0]
        self.input_size: int = int(inp["shape"][1])
        self.resize: str = description.get("resize", "squash")
        self._input, self._output = inp, out
        self._mean = np.float32(md.norm_mean[0]) if md.norm_mean else np.float32(0)
        self._std = np.float32(md.norm_std[0]) if md.norm_std else np.float32(1)
        self._batch = int(inp["shape"][0])
        with quiet_stderr():  # the XNNPACK delegate announces itself here
            self._interpreter.allocate_tensors()
        if len(self.labels) != int(out["shape"][-1]):
            raise ModelError(f"{self.path}: {len(self.labels)} labels inside but the model has "
                             f"{int(out['shape'][-1])} outputs")

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        x = np.asarray(pixels, dtype=np.float32)
        n = len(x)
        if n != self._batch:
            self._interpreter.resize_tensor_input(self._input["index"], [n, *x.shape[1:]])
            self._interpreter.allocate_tensors()
            self._batch = n
        dtype = self._input["dtype"]
        if np.issubdtype(dtype, np.integer):
            scale, zero = self._input["quantization"]
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / (scale or 1.0) + zero), info.min, info.max).astype(dtype)
        else:
            x = (x - self._mean) / self._std
        self._interpreter.set_tensor(self._input["index"], x)
        self._interpreter.invoke()
        y = self._interpreter.get_tensor(self._output["index"]).copy()
        if np.issubdtype(y.dtype, np.integer):
            scale, zero = self._output["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return y.astype(np.float32)
