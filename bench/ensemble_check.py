"""What averaging two trained models' probabilities would score: the evidence for (or against)
an ensemble recipe, before building one.

Scores every photo of a labelled folder (``<label>/`` sub-folders) with each model (float32,
``Predictor``) and with the mean of their probabilities, and prints the three accuracies.

``--members``: TF_FILES holds an ensemble that ``train`` built; its first member alone (a copy of
the file without the second), its second member alone (``TF_FILES/ensemble/member1``) and the
ensemble are each scored through ``Predictor``, with the guessing speed (images/s, decoding
included, one after another on the same machine) and the size of each model file; ``--export``
adds the size of each one's TFLite export.

``--load``: how long ``Predictor.load`` takes on the ensemble in TF_FILES (engines cached, as for
every ``guess`` after the first), with its member's head read from its own entry and the unpacked
member found by its recorded digest, against the layout before (the head read from inside the
member's whole file), alternated in one process; and the file digest that every load computed
before (now only ``guess-dir``, which needs it, does).

Run:  python bench/ensemble_check.py VAL_DIR TF_FILES_A TF_FILES_B
      python bench/ensemble_check.py VAL_DIR TF_FILES --members [--export]
      python bench/ensemble_check.py TF_FILES --load
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def probabilities(model: Path, photos: list[Path]) -> tuple[list[str], np.ndarray]:
    from tfguess.guess.predict import Predictor

    predictor = Predictor.load(model, precision="float32", log=lambda *_: None)
    labels = sorted(predictor.labels)
    rows = []
    for pred in predictor.predict(photos, batch_size=32):
        scores = dict(pred.top)
        rows.append([scores.get(label, np.nan) for label in labels])
    return labels, np.array(rows, dtype=np.float64)


def members(val: Path, tf_files: Path, export: bool) -> None:
    import shutil
    import tempfile
    import time

    from tfguess.engine.model import ensemble_members, read_meta, save_ensemble
    from tfguess.guess.predict import Predictor

    model = tf_files / "model.keras"
    if not ensemble_members(read_meta(model)):
        raise SystemExit(f"{model} is not an ensemble")
    photos = sorted(p for p in val.rglob("*") if p.is_file())
    scratch = Path(tempfile.mkdtemp(prefix="ensemble-check-"))
    first = scratch / "first" / "model.keras"
    first.parent.mkdir()
    shutil.copy(model, first)
    save_ensemble(first, [], {})   # the first member alone
    models = {"first member alone": first,
              "second member alone": tf_files / "ensemble" / "member1" / "model.keras",
              "the ensemble (the model)": model}
    for name, path in models.items():
        predictor = Predictor.load(path, precision="float32", log=lambda *_: None)
        predictor.probabilities(np.zeros((1, predictor.input_size, predictor.input_size, 3),
                                         np.float32))   # engines built and loaded before timing
        t = time.perf_counter()
        preds = list(predictor.predict(photos, batch_size=32))
        seconds = time.perf_counter() - t
        right = sum(p.label == p.path.parent.name for p in preds if not p.error)
        size = path.stat().st_size / 1e6
        line = (f"{name:26} {right} of {len(photos)} right ({right / len(photos):.4f}), "
                f"{len(photos) / seconds:.1f} images/s, model file {size:.1f} MB")
        if export:
            from tfguess.export import export as export_model

            (tflite,) = export_model(path, formats=["tflite"], out_dir=str(scratch / name[:5]),
                                     log=lambda *_: None, quiet=True)
            line += f", TFLite {tflite.stat().st_size / 1e6:.1f} MB"
        print(line, flush=True)
    shutil.rmtree(scratch)


def load_times(tf_files: Path, repeats: int = 20) -> None:
    import time

    from tfguess.engine import model
    from tfguess.guess.predict import Predictor, model_identity

    path = tf_files / "model.keras"
    members = model.ensemble_members
    if not all("head" in m for m in members(model.read_meta(path))):
        raise SystemExit(f"{path} has no head entry for its member: train it again")

    def before(meta: dict) -> list[dict]:
        return [{k: v for k, v in m.items() if k in ("file", "backbone")} for m in members(meta)]

    layouts = {"head entry, recorded digest": members, "the layout before": before}
    seconds = {name: [] for name in layouts}
    for _ in range(repeats + 1):            # the first round loads the engines: not counted
        for name, read in layouts.items():
            model.ensemble_members = read
            t = time.perf_counter()
            Predictor.load(path, precision="float32", log=lambda *_: None)
            seconds[name].append(time.perf_counter() - t)
    model.ensemble_members = members
    for name, times in seconds.items():
        print(f"{name:28} Predictor.load {1000 * np.median(times[1:]):.1f} ms (median of {repeats})")
    digest = []
    for _ in range(repeats):
        t = time.perf_counter()
        model_identity(path)
        digest.append(time.perf_counter() - t)
    print(f"{'the file digest':28} {1000 * np.median(digest):.1f} ms (guess-dir's resume key: "
          "computed when guess-dir asks, no longer by every load)")


def main() -> None:
    if "--load" in sys.argv:
        load_times(Path([a for a in sys.argv[1:] if not a.startswith("--")][0]))
        return
    if "--members" in sys.argv:
        args = [a for a in sys.argv[1:] if not a.startswith("--")]
        members(Path(args[0]), Path(args[1]), "--export" in sys.argv)
        return
    val, a, b = (Path(x) for x in sys.argv[1:4])
    photos = sorted(p for p in val.rglob("*") if p.is_file())
    labels_a, pa = probabilities(a, photos)
    labels_b, pb = probabilities(b, photos)
    if labels_a != labels_b:
        raise SystemExit("the two models have different labels")
    ok = ~(np.isnan(pa).any(1) | np.isnan(pb).any(1))
    truth = np.array([labels_a.index(p.parent.name) for p in photos])[ok]
    for name, probs in (("A", pa[ok]), ("B", pb[ok]), ("mean of A and B", (pa[ok] + pb[ok]) / 2)):
        right = int((probs.argmax(1) == truth).sum())
        print(f"{name:16} {right} of {len(truth)} right ({right / len(truth):.4f})")


if __name__ == "__main__":
    main()
