"""``export``: the trained model as TFLite, Core ML, a SavedModel, a classic frozen graph or ONNX.

The formats are one table, :data:`tfguess.export.formats.EXPORT_FORMATS` (name, what it writes,
the module and function that write it, the quantizations it takes, the pip extra it needs);
:func:`export` dispatches through it, importing a format's module (``tflite``, ``coreml``,
``savedmodel``, ``frozen_graph``, ``onnx``) only when that format is asked for. ``common`` holds
what they share; ``preprocessing`` is ``load_image``'s decode and resize as TensorFlow ops.

All models take RGB pixels in 0..255 (the normalisation is inside them). Every output is written
under a temporary name and renamed into place; an output that already exists is kept as
``<name>.previous<ext>`` (replacing an older ``.previous``), and the log says so.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from tfguess.core.config import ExportConfig, configure
from tfguess.core.errors import ConfigError, ExportError
from tfguess.export import formats
from tfguess.export.formats import FORMAT_NAMES, QUANTIZATIONS, ExportFormat

FORMATS = FORMAT_NAMES
__all__ = ["FORMATS", "QUANTIZATIONS", "ExportConfig", "ExportConfigError", "export"]

class ExportConfigError(ExportError, ConfigError):
    """A bad :class:`ExportConfig` setting given to :func:`export` (an ``ExportError`` as
    before the settings became a config, and a ``ConfigError``)."""


def export(tf_files: str | Path, config: ExportConfig | None = None, *,
           log: Callable[[str], None] = print, **overrides) -> list[Path]:
    """Export the model of ``tf_files`` (the folder or its ``model.keras``) as ``config`` says,
    with keyword ``overrides`` of its fields: ``formats`` (default tflite), ``quantize``,
    ``out_dir`` (default ``TF_FILES/export``) and ``quiet``, e.g.
    ``export(tf_files, formats=["tflite"], quantize="int8")``.

    ``quantize`` applies to ``tflite``; ``int8`` calibrates on up to 100 of the training images
    listed in ``run_summary.json``. ``quiet`` silences the converters' own progress bars and
    warnings. Logs one "Wrote" line a file and returns the written paths.
    """
    config = _configure(config, overrides)
    rows = _formats_of(config)
    from tfguess.core.runfolder import RunFolder
    from tfguess.engine.model import load_ensemble, resolve_model_path
    from tfguess.export.common import ExportJob

    model_path = resolve_model_path(tf_files)
    classifier = load_ensemble(model_path)   # an ensemble: its members averaged, one model
    out = Path(config.out_dir).expanduser() if config.out_dir else RunFolder.of_model(model_path).export
    out.mkdir(parents=True, exist_ok=True)
    job = ExportJob(classifier, model_path, out, config, log)
    written: list[Path] = []
    for row in rows:
        written += getattr(importlib.import_module(row.module), row.function)(job)
    for path in written:
        log(f"Wrote {path}")
    return written


def _configure(config: ExportConfig | None, overrides: dict) -> ExportConfig:
    if config is not None and not isinstance(config, ExportConfig):
        raise TypeError(f"export(tf_files, config): config is an ExportConfig, not "
                        f"{type(config).__name__}: give formats=[...] and quantize=... as keywords")
    try:
        return configure(ExportConfig, config, overrides)
    except ConfigError as exc:
        raise ExportConfigError(str(exc)) from None


def _formats_of(config: ExportConfig) -> list[ExportFormat]:
    """The table rows of ``config.formats`` (aliases resolved, each once), checked against
    ``config.quantize``."""
    rows = [formats.lookup(name) for name in config.formats]
    unknown = [name.lower() for name, row in zip(config.formats, rows) if row is None]
    if unknown:
        raise ExportError(f"unknown export format {', '.join(unknown)}: "
                          f"choose from {', '.join(FORMAT_NAMES)}")
    if not any(config.quantize in row.quantizations for row in rows):
        takes = formats.taking(config.quantize)
        raise ExportError(f"quantize={config.quantize} applies to the {' or '.join(takes)} format "
                          f"only: add --format {takes[0]}")
    return list(dict.fromkeys(rows))

