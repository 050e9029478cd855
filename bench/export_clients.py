"""Exported models in the third-party clients people use, against `tfguess guess`.

    python bench/export_clients.py [--data DATASET_DIR ...] [--json FILE]

For each data set (default: ../shared/datasets/hymenoptera and cub_songbirds22): trains a model
on train/ (default settings) in a temporary folder, exports every format, runs each client in its
own environment (scripts/client-envs.sh; tests/export/clients/run_*.py) on the val/ images and prints
client x format -> loads, labels (the client names the model's labels), top-1 agreement with
`tfguess guess` on the model, and for TFLite files also with `tfguess guess FILE`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
CLIENTS = REPO / "tests" / "export" / "clients"
ENVS = Path(os.environ.get("TFGUESS_CLIENT_ENVS", REPO / ".client-envs"))
TFLITE_VARIANTS = ("none", "float16", "dynamic", "int8")
SAVED_MODEL_BATCH = 128

# (client, its environment, its runner, the formats it runs)
RUNNERS = [
    ("MediaPipe ImageClassifier", "mediapipe", "run_mediapipe.py", "tflite"),
    ("Task Library 0.4.4 ImageClassifier", "tflite-support", "run_tflite_support.py", "tflite"),
    ("TensorFlow 1.15 (label_image style)", "tf1", "run_tf1.py", "frozen-graph"),
    ("ONNX Runtime", "onnxruntime", "run_onnxruntime.py", "onnx"),
]


def env_python(name: str) -> Path:
    return ENVS / name / "bin" / "python"


def val_images(data: Path) -> list[Path]:
    from tfguess.data.dataset import list_image_files

    return [p for d in sorted((data / "val").iterdir()) if d.is_dir() for p in list_image_files(d)]


def guess_top1(model: Path, paths: list[Path]) -> dict[str, str]:
    """What `tfguess guess MODEL` prints first for each image."""
    from tfguess.guess.predict import Predictor

    predictor = Predictor.load(model, log=lambda *_: None)
    return {str(p.path): p.label for p in predictor.predict(paths) if p.label is not None}


def export_all(tf_files: Path, out: Path) -> dict[str, Path]:
    from tfguess.export import export

    quiet = dict(out_dir=out, log=lambda *_: None, quiet=True)
    files = {}
    for q in TFLITE_VARIANTS:
        (files[f"tflite {'float32' if q == 'none' else q}"],) = export(tf_files, formats=["tflite"], quantize=q, **quiet)
    graph, _labels = export(tf_files, formats=["frozen-graph"], **quiet)
    (files["savedmodel"],) = export(tf_files, formats=["savedmodel"], **quiet)
    (files["onnx"],) = export(tf_files, formats=["onnx"], **quiet)
    files["frozen-graph"] = graph
    return files


def run_client(env: str, runner: str, model: Path, paths: list[Path], work: Path) -> dict:
    """The runner's {path: [label, score]}, or {"error": why} when it cannot load the model."""
    python = env_python(env)
    if not python.exists():
        return {"error": f"no environment {python.parent.parent} (bash scripts/client-envs.sh {env})"}
    listing = work / "images.txt"
    listing.write_text("".join(f"{p}\n" for p in paths), encoding="utf-8")
    proc = subprocess.run([str(python), str(CLIENTS / runner), str(model), str(listing)],
                          capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    return {"results": json.loads(lines[-1])}


def run_saved_model_cli(saved_model: Path, paths: list[Path], work: Path) -> dict:
    """`saved_model_cli run` on the ``classify_image`` signature with the files' bytes."""
    cli = Path(sys.executable).parent / "saved_model_cli"
    results = {}
    for start in range(0, len(paths), SAVED_MODEL_BATCH):
        batch = paths[start:start + SAVED_MODEL_BATCH]
        inputs, outdir = work / "image_bytes.npy", work / f"out{start}"
        # A fixed-width bytes array needs no pickle; JPEG/PNG data never ends in a NUL byte.
        np.save(inputs, np.array([p.read_bytes() for p in batch]))
        proc = subprocess.run([str(cli), "run", "--dir", str(saved_model), "--tag_set", "serve",
                               "--signature_def", "classify_image", "--inputs",
                               f"image_bytes={inputs}", "--outdir", str(outdir)],
                              capture_output=True, text=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        if proc.returncode != 0:
            return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
        labels, scores = np.load(outdir / "label.npy", allow_pickle=True), np.load(outdir / "score.npy")
        for p, label, score in zip(batch, labels, scores):
            results[str(p)] = [label.decode() if isinstance(label, bytes) else str(label), float(score)]
    return {"results": results}


def compare(name: str, fmt: str, outcome: dict, labels: list[str], reference: dict[str, str],
            file_reference: dict[str, str] | None) -> dict:
    row = {"client": name, "format": fmt, "n": len(reference)}
    if "error" in outcome:
        return {**row, "loads": False, "error": outcome["error"]}
    got = {p: r[0] for p, r in outcome["results"].items()}
    row.update(loads=True, labels=set(got.values()) <= set(labels),
               agree=sum(got.get(p) == label for p, label in reference.items()))
    if file_reference is not None:
        row["agree_file"] = sum(got.get(p) == label for p, label in file_reference.items())
    return row


def check(tf_files: Path, paths: list[Path], work: Path) -> list[dict]:
    from tfguess.engine.model import read_meta

    labels = read_meta(tf_files)["labels"]
    files = export_all(tf_files, work / "export")
    reference = guess_top1(tf_files, paths)
    rows = []
    for name, env, runner, kind in RUNNERS:
        for fmt, model in files.items():
            if not fmt.startswith(kind):
                continue
            file_ref = guess_top1(model, paths) if kind == "tflite" else None
            outcome = run_client(env, runner, model, paths, work)
            rows.append(compare(name, fmt, outcome, labels, reference, file_ref))
    outcome = run_saved_model_cli(files["savedmodel"], paths, work)
    rows.append(compare("saved_model_cli run (TF 2)", "savedmodel classify_image", outcome, labels,
                        reference, None))
    return rows


def table(rows: list[dict], title: str) -> str:
    out = [f"{title}", "| client | format | loads | labels | agrees with `guess` | with `guess FILE` |",
           "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if not r["loads"]:
            out.append(f"| {r['client']} | {r['format']} | no: {r['error'][:80]} | | | |")
            continue
        n = r["n"]
        file_cell = f"{r['agree_file']}/{n}" if "agree_file" in r else ""
        out.append(f"| {r['client']} | {r['format']} | yes | {'yes' if r['labels'] else 'NO'} | "
                   f"{r['agree']}/{n} ({r['agree'] / n:.1%}) | {file_cell} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, action="append",
                        help="data set with train/ and val/ (repeat; default: hymenoptera, cub_songbirds22)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    datasets = args.data or [SHARED / "hymenoptera", SHARED / "cub_songbirds22"]
    from tfguess.core.config import TrainConfig
    from tfguess.training.train import train

    everything = {}
    for data in datasets:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            tf_files = Path(tmp) / "tf_files"
            train(tf_files, TrainConfig(image_dir=str(data / "train"), report=False), progress=False,
                  log=lambda *_: None)
            paths = val_images(data)
            rows = check(tf_files, paths, Path(tmp))
        everything[data.name] = rows
        print(table(rows, f"\n{data.name} val ({len(paths)} images; "
                          f"{time.perf_counter() - start:.0f} s)"), flush=True)
    if args.json:
        args.json.write_text(json.dumps(everything, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
