"""``evaluate``: the HTML report of a trained TF_FILES (what the model gets wrong, which data is suspect).

Reads what ``train`` left in TF_FILES and writes ``TF_FILES/report/``: ``index.html`` (opens
from disk, no external resources, no scripts), its PNG figures and JPEG thumbnails,
``suspects.csv`` and ``report.json``. Needs no TensorFlow and takes seconds. The analysis is in
:mod:`.analysis`, the page in :mod:`.render`.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tfguess.core.errors import ReportError
from tfguess.core.fsutil import atomic_write, publish_dir
from tfguess.core.runfolder import RunFolder
from tfguess.curate.report.analysis import analyse
from tfguess.curate.report.render import (
    MAX_SHOWN,
    Thumbs,
    confusion_png,
    curves_png,
    render_html,
    summary_lines,
    write_suspects_csv,
)
from tfguess.data import hygiene


def _read_history(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]


def write_report(
    tf_files: str | Path,
    *,
    progress: bool = False,
    log: Callable[[str], None] = print,
    threshold: float | None = None,
    folds: int = hygiene.CV_FOLDS,
    journal_seen: int | None = None,
) -> Path:
    """Write ``TF_FILES/report/`` and return the path of its ``index.html``.

    A previous report there is replaced (the new one is built aside first, then swapped in).
    ``journal_seen``: the newest change of the review page's journal in the data the model was
    trained on (default: the newest now); the review page counts the changes after it as
    waiting for a re-training.
    """
    from tfguess.curate.relabel import last_change_id

    run = RunFolder.at(tf_files)
    if progress:
        log("Writing the evaluation report ...")
    data = analyse(run.root, threshold=threshold, folds=folds)
    data["journal_seen"] = last_change_id(run.root) if journal_seen is None else journal_seen

    def build(work: Path) -> None:
        work.mkdir(parents=True)
        t = time.perf_counter()
        figures = {}
        m = data["metrics"]
        if m.get("confusion"):
            confusion_png(work / "confusion.png", np.array(m["confusion"]), data["labels"],
                          f"Confusion matrix ({data['eval_split']}, n={m['n']})")
            figures["confusion"] = "confusion.png"
        extra = data.get("eval_dir") or {}
        if extra.get("confusion"):
            confusion_png(work / "confusion_eval_dir.png", np.array(extra["confusion"]), data["labels"],
                          f"Confusion matrix ({Path(extra.get('folder', 'eval')).name}, n={extra['n']})")
            figures["confusion_eval_dir"] = "confusion_eval_dir.png"
        history = _read_history(run.history)
        if history:
            curves_png(work / "curves.png", history, data.get("best_epoch"))
            figures["curves"] = "curves.png"
        thumbs = Thumbs(work)
        for item in data["misclassified"][:MAX_SHOWN]:
            thumbs.want(item["path"], item["digest"])
        for s in data["suspects"][:MAX_SHOWN]:
            thumbs.want(s["path"], s["digest"])
        for a in data["atypical"]:
            thumbs.want(a["path"], a["digest"])
        for p in data["near_duplicates"]["pairs"][:MAX_SHOWN]:
            thumbs.want(p["a"], p["a_digest"])
            thumbs.want(p["b"], p["b_digest"])
        for d in data["exact_duplicates"][:MAX_SHOWN]:
            thumbs.want(d["kept"])
        for s in data["skipped"][:MAX_SHOWN * 5]:
            thumbs.want(s["path"])
        thumbs.make()
        data["timings_s"]["figures"] = round(time.perf_counter() - t, 3)
        page = render_html(data, thumbs, figures)
        atomic_write(work / "index.html", page)
        write_suspects_csv(work / "suspects.csv", data["suspects"])
        atomic_write(work / "report.json", json.dumps(data, indent=2))

    replaced = run.report.exists()
    publish_dir(build, run.report, keep_previous=False)
    if replaced:
        log(f"Replaced the previous report in {run.report}")
    index = run.report / "index.html"
    for line in summary_lines(data, index):
        log(line)
    return index


def load_report(tf_files: str | Path) -> dict:
    """The ``report.json`` written by :func:`write_report`."""
    path = RunFolder.at(tf_files).report / "report.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"no report in {path.parent}: write one with tfguess evaluate {tf_files}") from None


__all__ = ["ReportError", "analyse", "write_report", "load_report", "render_html", "summary_lines"]
