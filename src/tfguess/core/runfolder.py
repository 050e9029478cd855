"""The run folder (TF_FILES): the one place that knows what lives where inside it.

::

    TF_FILES/
      data/<label>/*           the labelled photos (default image folder)
      model.keras              the model (one self-describing file); model.previous.keras
      retrained_labels.txt     one label a line, in output order
      run_summary.json         settings, counts, splits, metrics (paths relative to TF_FILES)
      history.csv              training curves
      bottlenecks/<key>/       the feature cache
      report/                  the evaluation report
      export/                  exported models
      relabel-journal.csv      moves made on the review page (tfguess serve), reversible
      removed/<label>/         images taken out of the data set there (never deleted)

Paths inside the folder are stored relative to it in ``run_summary.json``, so a copied or moved
folder keeps working: it trains again warm, evaluates, exports and guesses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tfguess.core.errors import ModelError, ReportError
from tfguess.core.fsutil import atomic_write

DATA_DIRNAME = "data"
MODEL_FILENAME = "model.keras"
LABELS_FILENAME = "retrained_labels.txt"
SUMMARY_FILENAME = "run_summary.json"
HISTORY_FILENAME = "history.csv"
BOTTLENECKS_DIRNAME = "bottlenecks"
REPORT_DIRNAME = "report"
EXPORT_DIRNAME = "export"
RELABEL_JOURNAL_FILENAME = "relabel-journal.csv"   # the review page's moves (tfguess serve)
REMOVED_DIRNAME = "removed"                        # images taken out of the data set there
SUMMARY_VERSION = 2


@dataclass(frozen=True)
class RunFolder:
    root: Path

    @classmethod
    def at(cls, path: str | Path) -> RunFolder:
        """The run folder ``path`` (made absolute; not required to exist yet)."""
        return cls(Path(path).expanduser().resolve())

    @classmethod
    def of_model(cls, model: str | Path) -> RunFolder:
        """The run folder that holds a model file, or the folder itself."""
        path = Path(model).expanduser().resolve()
        return cls(path.parent if path.is_file() else path)

    # --- what lives where ----------------------------------------------------------------------
    @property
    def data(self) -> Path:
        return self.root / DATA_DIRNAME

    @property
    def model(self) -> Path:
        return self.root / MODEL_FILENAME

    @property
    def labels(self) -> Path:
        return self.root / LABELS_FILENAME

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY_FILENAME

    @property
    def history(self) -> Path:
        return self.root / HISTORY_FILENAME

    @property
    def bottlenecks(self) -> Path:
        return self.root / BOTTLENECKS_DIRNAME

    @property
    def report(self) -> Path:
        return self.root / REPORT_DIRNAME

    @property
    def export(self) -> Path:
        return self.root / EXPORT_DIRNAME

    # --- paths stored in the summary -----------------------------------------------------------
    def store(self, path: str | Path) -> str:
        """``path`` as stored in the summary: relative to the folder when inside it."""
        path = Path(path)
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def resolve(self, stored: str | Path) -> Path:
        """A path read from the summary, made absolute against this folder."""
        return self.root / stored

    # --- the summary -----------------------------------------------------------------------------
    def write_summary(self, summary: dict) -> Path:
        atomic_write(self.summary, json.dumps({"summary_version": SUMMARY_VERSION, **summary},
                                              indent=2))
        return self.summary

    def read_summary(self) -> dict:
        """The training summary; a clear error when it is missing or damaged."""
        if not self.summary.exists():
            raise ReportError(f"no training results in {self.root}: {SUMMARY_FILENAME} is missing. "
                              f"Train first: tfguess train {self.root}")
        try:
            return json.loads(self.summary.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ReportError(f"{self.summary} is damaged ({exc}); train again: "
                              f"tfguess train {self.root}") from None

    def image_dir(self, summary: dict) -> Path:
        return self.resolve(summary.get("image_dir", DATA_DIRNAME))

    def split_rows(self, summary: dict) -> list[tuple[str, Path, str, str]]:
        """(split, absolute path, label, digest) for every image the summary lists."""
        return [(split, self.resolve(p), label, digest)
                for split, rows in summary.get("splits", {}).items() for p, label, digest in rows]

    def require_model(self) -> Path:
        if not self.model.exists():
            raise ModelError(f"no trained model in {self.root}: expected {self.model}. "
                             f"Train first: tfguess train {self.root}")
        return self.model
