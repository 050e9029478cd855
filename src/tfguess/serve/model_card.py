"""The model being served, its identity (weights digest) and its card."""

import hashlib
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from tfguess.core.runfolder import RunFolder
from tfguess.guess.predict import Predictor
from tfguess.training.evaluation import figure_note


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of a file's bytes: the identity of the weights being served."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


class ServedModel:
    """The model being served (swapped in place after a re-training) and its card."""

    def __init__(self, model: str | Path, log: Callable[[str], None] = print) -> None:
        from tfguess.engine.model import MODEL_FILENAME, resolve_model_path

        arg = Path(model).expanduser().resolve()
        self.tf_files = arg if arg.is_dir() else None
        self.path = resolve_model_path(arg) if self.tf_files is None else self.tf_files / MODEL_FILENAME
        resolve_model_path(self.path)
        self.log = log
        self.lock = threading.Lock()
        self.predictor = Predictor.load(self.path, log=log)
        self.digest = file_digest(self.path)
        self.card = self._card()

    @property
    def current(self) -> tuple[Predictor, str]:
        """The predictor and its weights digest, read together."""
        with self.lock:
            return self.predictor, self.digest

    def reload(self) -> None:
        predictor, digest = Predictor.load(self.path, log=self.log), file_digest(self.path)
        with self.lock:
            self.predictor, self.digest = predictor, digest
            self.card = self._card()

    def _card(self) -> dict:
        p = self.predictor
        stat = self.path.stat()
        card = {
            "name": self.tf_files.name if self.tf_files else self.path.name,
            "file": self.path.name,
            "digest": self.digest,
            "labels": p.labels,
            "input_size": p.input_size,
            "resize": p.resize,
            "engine": p.engine,
            "date": datetime.fromtimestamp(stat.st_mtime, timezone.utc).isoformat(timespec="seconds"),
            "backbone": None, "mode": None, "config": None, "metrics": None, "test_accuracy": None,
            "test_note": "",
            "report": bool(self.tf_files and (RunFolder.at(self.tf_files).report / "index.html").is_file()),
            "review": self.tf_files is not None,
        }
        if self.path.suffix.lower() == ".keras":
            from tfguess.engine.model import read_meta

            meta = read_meta(self.path)
            config = meta.get("config") or {}
            backbone = meta.get("backbone") or {}
            card.update(
                backbone=backbone, config=config, metrics=meta.get("metrics"),
                mode=training_mode(meta),
                test_accuracy=(meta.get("metrics") or {}).get("test", {}).get("accuracy"),
                test_note=figure_note((meta.get("metrics") or {}).get("test")),
            )
        else:
            card["mode"] = "exported TFLite model"
        return card



def training_mode(meta: dict) -> str:
    """How the model in a ``.keras`` file with description ``meta`` was trained, in words."""
    from tfguess.engine.model import ensemble_members

    config = meta.get("config") or {}
    if config.get("tfhub_module"):
        return "TF Hub module " + config["tfhub_module"]
    tuned = ["fine-tuned" in str((b or {}).get("weights_source")) for b in
             [meta.get("backbone")] + [m.get("backbone") for m in ensemble_members(meta)]]
    state = "fine-tuned" if all(tuned) else "frozen" if not any(tuned) else "frozen and fine-tuned"
    if len(tuned) == 1:
        return (f"transfer learning: {state} backbone{' (its top blocks)' if tuned[0] else ''}, "
                "trained softmax head")
    return (f"transfer learning: {len(tuned)} {state} backbones, each with a trained softmax head, "
            "probabilities averaged")
