"""``--precision auto`` on each data set: the top-1 agreement of guessing with the model's int8
engine and with float32, and the val accuracy of each.

Takes the float32 models ``bench/accuracy_table.py WORK --dataset NAME --modes views --set
precision=float32`` trained, trains each again with ``--precision auto`` (every feature cached:
the same float32 features and seed, so the same head; the int8 engine is calibrated on 100
training photos) and guesses every image of ``val/`` both ways.

Run:  python bench/int8_agreement.py WORK hymenoptera furniture4 ...
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("work")
    p.add_argument("datasets", nargs="+")
    args = p.parse_args()
    from tfguess.core.config import TrainConfig
    from tfguess.engine.model import read_meta
    from tfguess.engine.runtime import auto_precision
    from tfguess.guess.predict import Predictor
    from tfguess.training.train import train

    print(f"this machine: {auto_precision()}")
    for name in args.datasets:
        data = DATASETS / name
        tf_files = Path(args.work) / f"{name}-efficientnet_lite0-views-precisionfloat32"
        saved = read_meta(tf_files / "model.keras")["config"]
        config = TrainConfig.from_dict({**saved, "precision": "auto"})
        result = train(tf_files, config, progress=False, log=lambda *_: None)
        images = sorted((q, q.parent.name) for q in (data / "val").glob("*/*") if q.is_file())
        labels = {}
        for precision in ("float32", "auto"):
            predictor = Predictor.load(tf_files, log=lambda *_: None, precision=precision)
            labels[precision] = [pr.label for pr in predictor.predict([q for q, _ in images])]
        n = len(images)
        acc = {k: round(sum(a == t for a, (_, t) in zip(v, images)) / n, 4) for k, v in labels.items()}
        agree = sum(a == b for a, b in zip(labels["float32"], labels["auto"]))
        row = {"dataset": name, "n": n, "features_computed": result.summary["features"]["computed"],
               "precision": result.summary["precision"],
               "train_eval_accuracy": result.summary["metrics"]["eval_dir"]["accuracy"],
               "guess_accuracy_float32": acc["float32"], "guess_accuracy_auto": acc["auto"],
               "agreement": f"{agree}/{n}", "agreement_pct": round(100 * agree / n, 2)}
        print(json.dumps(row), flush=True)
        with open(Path(args.work) / "agreement.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
