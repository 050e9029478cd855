"""Exported models vs the trained Keras model, on a labelled folder (default: hymenoptera/val).

    python bench/export_check.py [TF_FILES] [--val DIR]

Without TF_FILES, trains a model on ../shared/datasets/hymenoptera/train in a temporary folder.
Prints, for each export, the top-1 agreement with the Keras model, the largest probability
difference, the accuracy on the labelled folder and the file size.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HYMENOPTERA = REPO.parent / "shared" / "datasets" / "hymenoptera"


def labelled_images(folder: Path, labels: list[str]) -> tuple[list[Path], np.ndarray]:
    from tfguess.data.dataset import list_image_files

    paths, y = [], []
    for i, label in enumerate(labels):
        files = list_image_files(folder / label)
        paths += files
        y += [i] * len(files)
    return paths, np.array(y)


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def check(tf_files: Path, val_dir: Path, out_dir: Path) -> list[dict]:
    from tfguess.data.images import load_image
    from tfguess.engine.model import load_classifier
    from tfguess.engine.runtime import TFLiteClassifier
    from tfguess.export import export
    from tfguess.guess.predict import Predictor

    quiet = lambda *_: None  # noqa: E731
    classifier = load_classifier(tf_files)
    paths, y = labelled_images(val_dir, classifier.labels)
    x = np.stack([load_image(p, classifier.input_size, classifier.resize) for p in paths])
    ref = np.concatenate([np.asarray(classifier.keras_model(x[i:i + 32].astype(np.float32), training=False))
                          for i in range(0, len(x), 32)])

    def row(name: str, probs: np.ndarray, reference: np.ndarray, path: Path | None) -> dict:
        return {"model": name, "agreement": float((probs.argmax(1) == reference.argmax(1)).mean()),
                "max_diff": float(np.abs(probs - reference).max()),
                "accuracy": float((probs.argmax(1) == y).mean()),
                "size": size_of(path) if path else None, "n": len(y)}

    rows = [row("keras", ref, ref, Path(classifier.path))]
    for quantize in ("none", "float16", "dynamic", "int8"):
        (path,) = export(tf_files, formats=["tflite"], quantize=quantize, out_dir=out_dir, log=quiet)
        tfl = TFLiteClassifier(path)
        probs = np.concatenate([tfl(x[i:i + 32]) for i in range(0, len(x), 32)])
        rows.append(row(f"tflite {'float32' if quantize == 'none' else quantize}", probs, ref, path))

    # The frozen graph through the classic client, against what `guess` prints.
    import tensorflow as tf

    graph_path, _ = export(tf_files, formats=["frozen-graph"], out_dir=out_dir, log=quiet)
    guess = np.stack([np.array([dict(p.top)[lb] for lb in classifier.labels])
                      for p in Predictor.load(tf_files, log=quiet).predict(paths)])
    gd = tf.compat.v1.GraphDef()
    gd.ParseFromString(graph_path.read_bytes())
    with tf.Graph().as_default() as g:
        tf.import_graph_def(gd, name="")
        with tf.compat.v1.Session(graph=g) as sess:
            frozen = np.concatenate([sess.run("final_result:0", {"DecodeJpeg/contents:0": p.read_bytes()})
                                     for p in paths])
    rows.append(row("frozen graph (classic client)", frozen, guess, graph_path))
    (ml_path,) = export(tf_files, formats=["coreml"], out_dir=out_dir, log=quiet)
    rows.append({"model": "coreml (spec only)", "size": size_of(ml_path)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tf_files", nargs="?", type=Path)
    parser.add_argument("--val", type=Path, default=HYMENOPTERA / "val")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tf_files = args.tf_files
        if tf_files is None:
            from tfguess.core.config import TrainConfig
            from tfguess.training.train import train

            tf_files = Path(tmp) / "tf_files"
            train(tf_files, TrainConfig(image_dir=str(HYMENOPTERA / "train"), report=False),
                  progress=False, log=lambda *_: None)
        rows = check(tf_files, args.val, Path(tmp) / "export")
    print(f"{'model':32} {'agreement':>9} {'max diff':>9} {'accuracy':>8} {'size':>10}")
    for r in rows:
        cells = [f"{r[k]:.2%}" if r.get(k) is not None else "" for k in ("agreement",)]
        cells.append(f"{r['max_diff']:.2e}" if r.get("max_diff") is not None else "")
        cells.append(f"{r['accuracy']:.2%}" if r.get("accuracy") is not None else "")
        size = f"{r['size'] / 1e6:.2f} MB" if r.get("size") else ""
        print(f"{r['model']:32} {cells[0]:>9} {cells[1]:>9} {cells[2]:>8} {size:>10}")
    n = next((r["n"] for r in rows if "n" in r), 0)
    print(f"({n} images of {args.val}; the frozen graph is compared with `guess`, the rest with Keras)")


if __name__ == "__main__":
    sys.exit(main())
