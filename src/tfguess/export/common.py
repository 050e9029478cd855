"""What the format modules share: the job a writer gets, writing outputs atomically (keeping
what was there), silencing a converter, and the description every format carries (labels,
input size, resize recipe, the note for clients that always squash)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tfguess.core.config import ExportConfig
from tfguess.core.fsutil import atomic_write, publish_dir
from tfguess.data.images import CROP_FRACTION, PAD_VALUE, SQUASH_BILINEAR_MAX
from tfguess.engine.features import frozen_function
from tfguess.engine.model import Classifier


@dataclass(frozen=True)
class ExportJob:
    """One export, as a format's writer gets it: the loaded model, where its file is (its run
    folder holds the training images int8 calibrates on), the output folder, the settings, and
    where "Kept the previous ..." and notes are logged."""

    classifier: Classifier
    model_path: Path
    out: Path
    config: ExportConfig
    log: Callable[[str], None]


# --- writing outputs atomically, keeping what was there ----------------------------------------


def publish_bytes(data: bytes, path: Path, log: Callable[[str], None]) -> Path:
    """Write ``data`` to ``path`` atomically (nothing when it is already there), keeping an
    earlier, different file as ``<name>.previous<ext>``."""
    if path.is_file() and path.read_bytes() == data:
        return path
    previous = atomic_write(path, data, keep_previous=True)
    if previous:
        log(f"Kept the previous {path.name} as {previous.name}")
    return path


def publish_folder(build: Callable[[Path], None], path: Path, log: Callable[[str], None]) -> Path:
    """The folder ``build`` writes, renamed into place at ``path``, keeping an earlier one."""
    previous = publish_dir(build, path)
    if previous:
        log(f"Kept the previous {path.name} as {previous.name}")
    return path


@contextlib.contextmanager
def converter_quiet(quiet: bool):
    """Silence a converter's progress bars, Python warnings and log lines (coremltools, tf2onnx)."""
    if not quiet:
        yield
        return
    import logging
    import warnings

    from tfguess.core.quiet import quiet_stderr

    loggers = [logging.getLogger(n) for n in ("coremltools", "tf2onnx", "tensorflow")]
    levels = [lg.level for lg in loggers]
    saved = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), quiet_stderr():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if saved is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = saved


def keras_function(classifier, batch: int | None, name: str = "pixels"):
    """The model as one concrete function with its weights frozen into constants."""
    return frozen_function(classifier.keras_model, classifier.input_size, batch, name)


# --- the description every format carries ------------------------------------------------------


def resize_text(classifier) -> str:
    """The model's resize recipe, in words."""
    if classifier.resize == "crop":
        return (f"shorter side to {round(classifier.input_size / CROP_FRACTION)}, centre crop, "
                "bicubic")
    squash = (f"bilinear as OpenCV's warpAffine (what MediaPipe does); antialiased bilinear for "
              f"images over {SQUASH_BILINEAR_MAX:g}x the input size")
    if classifier.resize == "pad":
        return (f"whole image centred on a square of grey {PAD_VALUE} (letterbox; side = the "
                f"longer side), then squashed to the input size, {squash}")
    return f"whole image squashed to the input size, {squash}"


# Top-1 agreement of a crop or pad model fed squashed pixels (what MediaPipe and the Task Library
# give a TFLite model) with the same model fed its own preprocessing, on mixed-shape val photos
# (bench/resize_check.py --agreement: furniture4, clothing5 and instruments10 val, 670 photos,
# one model per set and recipe).
SQUASH_CLIENT_AGREEMENT = {"crop": 0.949, "pad": 0.954}


def squash_client_note(resize: str) -> str:
    """What a client that always squashes the whole image sees with a ``resize`` model."""
    if resize == "squash":
        return ""
    agreement = SQUASH_CLIENT_AGREEMENT.get(resize)
    measured = (f" (measured: the top label agreed on {agreement:.1%} of mixed-shape photos)"
                if agreement is not None else "")
    how = ("crop the central 87.5 % square yourself" if resize == "crop"
           else f"pad the image to a square with grey {PAD_VALUE} yourself")
    done = {"crop": "centre-cropped", "pad": "padded"}[resize]
    return (f" This model was trained on {done} images: clients that squash the whole image "
            f"(MediaPipe, the TFLite Task Library) give it other pixels on non-square photos"
            f"{measured}; {how} before handing it over (a square image needs nothing).")


def description(classifier, quantize: str) -> dict:
    """The ``tfguess`` description inside every export: labels, backbone, input, metrics."""
    meta = classifier.meta
    return {
        "format_version": meta.get("format_version", 1),
        "labels": classifier.labels,
        "backbone": meta["backbone"],
        "input_size": classifier.input_size,
        "resize": classifier.resize,
        "resize_recipe": resize_text(classifier),
        "input": "RGB pixels 0..255",
        "quantize": quantize,
        "metrics": meta.get("metrics"),
    }
