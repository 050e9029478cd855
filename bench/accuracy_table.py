"""Accuracy and train time of each training mode, backbone and data set (the README's table).

For each data set (``cub_songbirds22``, ``hymenoptera``: train on ``train/``, score ``val/`` as
``--eval-dir``), backbone and mode, trains into ``WORK/<dataset>-<backbone>/`` (one bottleneck
cache per data set and backbone, so the first mode pays the extraction and later ones reuse it:
each row says how many features it computed) and appends one JSON line to ``WORK/results.jsonl``.

Modes: ``frozen`` (the softmax head), ``views`` (+ augmented cached views), ``views+hidden``
(+ a hidden layer), ``fine-tune`` (+ the top blocks trained), ``views+fine-tune`` (both), ``tta`` (the frozen model's val
score with the mirrored view averaged in, through ``guess``'s predictor), ``export`` (the
fine-tuned model's TFLite export against ``guess`` on every val image).

Run:  python bench/accuracy_table.py WORK --dataset cub_songbirds22 --backbone efficientnet_lite0 \
          --modes frozen,views,views+hidden,fine-tune,tta,export
      python bench/accuracy_table.py WORK --table      # the markdown table of results.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
VIEWS = 2
HIDDEN = 256


def load_average() -> float:
    return round(os.getloadavg()[0], 1)


def config_for(mode: str, data: Path, backbone: str, views: int, hidden: int, overrides: dict):
    from tfguess.config import TrainConfig

    extra = {"views": views if "views" in mode else 0, **overrides}
    if "hidden" in mode:
        extra["hidden_units"] = hidden
    if "fine-tune" in mode:
        extra["fine_tune"] = True
    return TrainConfig(backbone=backbone, image_dir=str(data / "train"), eval_dir=str(data / "val"),
                       report=False, **extra)


def val_images(data: Path) -> list[tuple[Path, str]]:
    return sorted((p, p.parent.name) for p in (data / "val").glob("*/*") if p.is_file())


def score(predictor, images) -> tuple[float, list[str]]:
    preds = list(predictor.predict([p for p, _ in images], batch_size=32))
    labels = [p.label for p in preds]
    return sum(lb == truth for lb, (_, truth) in zip(labels, images)) / len(images), labels


def run(args) -> None:
    from tfguess.config import TrainConfig
    from tfguess.train import train

    data = DATASETS / args.dataset
    work = Path(args.work).resolve()
    results = work / "results.jsonl"
    for mode in args.modes.split(","):
        overrides = {}
        for item in args.set:
            key, value = item.split("=", 1)
            default = getattr(TrainConfig, key)  # None: an optional number or name
            kind = type(default) if default is not None else int if value.isdigit() else str
            overrides[key] = kind(value)
        tag = "".join(f"-{k}{v}" for k, v in overrides.items())
        tf_files = work / f"{args.dataset}-{args.backbone}-{mode.replace('+', '_')}{tag}"
        row = {"dataset": args.dataset, "backbone": args.backbone, "mode": mode, "settings": overrides,
               "load_before": load_average()}
        t = time.perf_counter()
        if mode in ("tta", "export"):
            from tfguess.predict import Predictor

            of = args.tta_of if mode == "tta" else args.export_of
            source = work / f"{args.dataset}-{args.backbone}-{of.replace('+', '_')}{tag}"
            row["of"] = of
            images = val_images(data)
            plain, labels = score(Predictor.load(source, log=lambda *_: None), images)
            row["n"] = len(images)
            row["guess_accuracy"] = round(plain, 4)
            if mode == "tta":
                row["tta_accuracy"] = round(score(Predictor.load(source, tta=True), images)[0], 4)
            else:
                from tfguess.export import export

                out = export(source, ["tflite"], out_dir=work / f"export-{args.dataset}-{args.backbone}",
                             log=lambda *_: None)
                tfl = Predictor.load(out[0])
                acc, tfl_labels = score(tfl, images)
                row["tflite_accuracy"] = round(acc, 4)
                row["tflite_agrees"] = round(sum(a == b for a, b in zip(labels, tfl_labels)) / len(labels), 4)
        else:
            # Every mode starts from the cache the frozen run filled, except the frozen run itself.
            frozen = work / f"{args.dataset}-{args.backbone}-frozen{tag}"
            if mode != "frozen" and frozen.is_dir() and not tf_files.exists():
                tf_files.mkdir(parents=True)
                os.symlink(frozen / "bottlenecks", tf_files / "bottlenecks")
            config = config_for(mode, data, args.backbone, args.views, args.hidden, overrides)
            result = train(tf_files, config, progress=args.progress,
                           log=print if args.verbose else lambda *_: None)
            s = result.summary
            row.update(
                mode_recorded=s["mode"],
                val_accuracy=s["metrics"]["eval_dir"]["accuracy"],
                n=s["metrics"]["eval_dir"]["n"],
                features_computed=s["features"]["computed"],
                timings=s["timings_s"],
                fine_tune={k: v for k, v in (s.get("fine_tune") or {}).items() if k != "history"},
                fine_tune_history=(s.get("fine_tune") or {}).get("history"),
            )
        row["seconds"] = round(time.perf_counter() - t, 1)
        row["load_after"] = load_average()
        print(json.dumps(row), flush=True)
        with open(results, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def table(work: Path) -> None:
    rows = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines() if line]
    print("| data set | backbone | mode | val accuracy | time (s) | load |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if r["mode"] == "tta":
            acc = f"{r['guess_accuracy']} -> {r['tta_accuracy']} with --tta ({r.get('of', 'frozen')})"
        elif r["mode"] == "export":
            acc = f"TFLite agrees with guess on {r['tflite_agrees']:.1%} of {r['n']}"
        else:
            acc = f"{r['val_accuracy']} (n={r['n']})"
        mode = r["mode"] + "".join(f" {k}={v}" for k, v in r.get("settings", {}).items())
        print(f"| {r['dataset']} | {r['backbone'].replace('efficientnet_', '')} | {mode} | {acc} "
              f"| {r['seconds']} | {r['load_before']}-{r['load_after']} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("work", help="folder for the trained models and results.jsonl")
    p.add_argument("--dataset", default="cub_songbirds22")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--modes", default="frozen,views,views+hidden,fine-tune,tta,export")
    p.add_argument("--views", type=int, default=VIEWS)
    p.add_argument("--hidden", type=int, default=HIDDEN)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="a TrainConfig field for every mode, e.g. --set fine_tune_blocks=3")
    p.add_argument("--tta-of", default="frozen", help="the mode whose model --tta is measured on")
    p.add_argument("--export-of", default="fine-tune", help="the mode whose model is exported")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--table", action="store_true")
    args = p.parse_args()
    if args.table:
        table(Path(args.work))
    else:
        run(args)


if __name__ == "__main__":
    main()
