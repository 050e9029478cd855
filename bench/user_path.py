"""A user's path on a development set: ``tfguess train`` with no flags on ``train/``, then
``tfguess guess-dir`` on every ``val/`` photo, then the same ``train`` again.

Prints, for each data set: the cold training's wall time and the plan it printed; guess-dir's
accuracy (from its manifest against the photos' folders) and its engine; the same model's
float32 accuracy on the same photos (``Predictor.load(..., precision="float32")``: what guess-dir
would give without the int8 engine); and the re-run of the unchanged folder: its wall time, its
share of the cold run's, and whether it imported TensorFlow. Each command is its own process,
as a user runs them.

Run:  nice python bench/user_path.py WORK cub_songbirds22 furniture4 [--flags="--time-limit 15m"]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"

RERUN = """
import sys, time
t = time.perf_counter()
from tfguess.cli import main
code = main(sys.argv[1:])
print("TENSORFLOW_IMPORTED", "tensorflow" in sys.modules, round(time.perf_counter() - t, 3))
sys.exit(code)
"""


def timed(argv: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise SystemExit(f"{shlex.join(argv)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - t, done


def float32_accuracy(tf_files: Path, val: Path) -> tuple[int, int]:
    from tfguess.guess.predict import Predictor

    photos = sorted(p for p in val.rglob("*") if p.is_file())
    predictor = Predictor.load(tf_files, precision="float32", log=lambda *_: None)
    right = n = 0
    for path, pred in zip(photos, predictor.predict(photos, batch_size=32)):
        if pred.label is None:   # not an image: guess-dir skips it too
            continue
        n += 1
        right += pred.label == path.parent.name
    return right, n


def one(work: Path, name: str, flags: list[str]) -> dict:
    data = DATASETS / name
    tf_files, out = work / f"{name}-tf", work / f"{name}-sorted"
    for old in (tf_files, out):
        if old.exists():
            raise SystemExit(f"{old} exists: give a new WORK folder (runs start cold)")
    tfguess = [sys.executable, "-m", "tfguess", "-q"]
    cold, trained = timed([*tfguess, "train", str(tf_files), "--image-dir", str(data / "train"),
                           "--no-report", *flags])
    plan = next((line for line in trained.stdout.splitlines() if line.startswith("Time limit")),
                "(no plan)")
    guess_s, _ = timed([*tfguess, "guess-dir", str(tf_files), str(data / "val"), str(out),
                        "--recursive"])
    with open(out / "manifest.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    right = sum(r["label"] == Path(r["source"]).parent.name for r in rows)
    f32_right, f32_n = float32_accuracy(tf_files, data / "val")
    rerun_s, again = timed([sys.executable, "-c", RERUN, "-q", "train", str(tf_files),
                            "--image-dir", str(data / "train"), "--no-report", *flags])
    summary = json.loads((tf_files / "run_summary.json").read_text())
    return {"dataset": name, "flags": flags, "train_s": round(cold, 1), "plan": plan,
            "guess_dir_s": round(guess_s, 1), "guess_dir_right": right, "n": len(rows),
            "guess_dir_accuracy": round(right / len(rows), 4),
            "guess_engine": (summary.get("precision") or {}).get("guess"),
            "backbone_choice": (summary.get("auto_backbone") or {}).get("why"),
            "float32_right": f32_right, "float32_n": f32_n,
            "rerun_s": round(rerun_s, 2), "rerun_share": round(rerun_s / cold, 4),
            "rerun_said_nothing_changed": "Nothing changed" in again.stdout,
            "rerun_imported_tensorflow": "TENSORFLOW_IMPORTED True" in again.stdout,
            "load": round(os.getloadavg()[0], 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("work")
    p.add_argument("datasets", nargs="+")
    p.add_argument("--flags", default="", help="tfguess train flags, e.g. --flags='--time-limit 15m'")
    args = p.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    for name in args.datasets:
        row = one(work, name, shlex.split(args.flags))
        print(json.dumps(row), flush=True)
        with open(work / "user_path.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
