"""Train a TF_FILES and write its evaluation report under one hold of its lock, as the pages do
(the review page's and the inbox's Re-train, the inbox's first training and its "Sort"): a
shell ``train`` or ``evaluate`` cannot slip in between the model and its report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tfguess.core.config import TrainConfig
from tfguess.core.errors import TfguessError
from tfguess.core.locks import run_folder_lock


def train_with_report(tf_files: str | Path, config: TrainConfig, *, progress: bool = False,
                      log: Callable[[str], None] = print):
    """:func:`training.train.train`, then :func:`curate.report.write_report` (recording the
    newest change of the review page's journal the training read). A report that cannot be
    written is logged: the model stands and is served all the same. Returns the training's
    result."""
    from tfguess.curate.relabel import last_change_id
    from tfguess.curate.report import write_report
    from tfguess.training.train import train

    with run_folder_lock(tf_files, "train", log=log):
        seen = last_change_id(tf_files)   # the changes in the data this training reads
        result = train(tf_files, config, progress=progress, log=log)
        try:
            write_report(tf_files, progress=progress, log=log, journal_seen=seen)
        except (TfguessError, OSError) as exc:
            log(f"no evaluation report: {exc}")
    return result
