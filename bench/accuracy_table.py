"""Accuracy and train time of each training mode, backbone and data set (the table of docs/benchmarks.md).

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

``--suite``: every data set of ``../shared/datasets`` (each with ``train/`` and ``val/``) trained by
the ``tfguess train`` command, one process a run, with the flags of each column
(:data:`SUITE_MODES`; ``--modes`` picks columns, ``--datasets`` rows, ``--flags`` adds flags to
every run, e.g. ``--flags=--views=0``). The runs of a data set share one bottleneck cache (so each
resize is extracted once), except the ``--time-limit`` ones, which start cold as a user's first run
does. A column whose flag this ``tfguess train`` does not know is skipped, saying so. Each run
appends a line to ``WORK/suite.jsonl``; the table (the latest run of each cell: val accuracy and
the run's wall time) is printed at the end, and by ``--suite --table`` alone.

      nice python bench/accuracy_table.py WORK --suite --modes default,quick,crop,squash
      nice python bench/accuracy_table.py WORK --suite --modes 15m --datasets furniture4
      python bench/accuracy_table.py WORK --suite --table
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
MODES_DEFAULT = "frozen,views,views+hidden,fine-tune,tta,export"
HIDDEN = 256


def load_average() -> float:
    return round(os.getloadavg()[0], 1)


def config_for(mode: str, data: Path, backbone: str, views: int, hidden: int, overrides: dict):
    from tfguess.core.config import TrainConfig

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
    from tfguess.core.config import TrainConfig
    from tfguess.training.train import train

    data = DATASETS / args.dataset
    work = Path(args.work).resolve()
    results = work / "results.jsonl"
    for mode in (args.modes or MODES_DEFAULT).split(","):
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
            from tfguess.guess.predict import Predictor

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

                out = export(source, formats=["tflite"], out_dir=work / f"export-{args.dataset}-{args.backbone}",
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


SUITE_MODES: dict[str, list[str]] = {
    "default": [],
    "quick": ["--quick"],
    "squash": ["--quick", "--resize", "squash"],
    "crop": ["--quick", "--resize", "crop"],
    "pad": ["--quick", "--resize", "pad"],
    "fine-tune": ["--quick", "--fine-tune"],
    "5m": ["--time-limit", "5m"],
    "15m": ["--time-limit", "15m"],
    "30m": ["--time-limit", "30m"],
}
SUITE_DEFAULT = "default,quick,crop,squash"
# Timed from an empty cache, as a user's first run (the others share one cache a data set).
COLD_MODES = ("default", "5m", "15m", "30m")


def suite_datasets(names: str | None) -> list[Path]:
    found = sorted(d for d in DATASETS.iterdir() if (d / "train").is_dir() and (d / "val").is_dir())
    if names:
        wanted = names.split(",")
        unknown = sorted(set(wanted) - {d.name for d in found})
        if unknown:
            raise SystemExit(f"unknown data set(s) {', '.join(unknown)}: choose from "
                             f"{', '.join(d.name for d in found)}")
        found = [d for d in found if d.name in wanted]
    return found


def known_train_flags() -> str:
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "tfguess", "train", "--help"], capture_output=True,
                          text=True, check=True).stdout


def suite(args) -> None:
    import shlex
    import subprocess
    import sys

    work = Path(args.work).resolve()
    results = work / "suite.jsonl"
    modes = (args.modes or SUITE_DEFAULT).split(",")
    unknown = [m for m in modes if m not in SUITE_MODES]
    if unknown:
        raise SystemExit(f"unknown suite mode(s) {', '.join(unknown)}: choose from {', '.join(SUITE_MODES)}")
    helptext = known_train_flags()
    extra = shlex.split(args.flags) if args.flags else []
    tag = "".join(f"_{f.lstrip('-').replace('=', '')}" for f in extra)
    for mode in list(modes):
        flag = next((f for f in SUITE_MODES[mode] if f.startswith("--")), None)
        if flag and flag not in helptext:
            print(f"suite: skipping {mode}: this tfguess train has no {flag}", flush=True)
            modes.remove(mode)
    for data in suite_datasets(args.datasets):
        for mode in modes:
            tf_files = work / f"{data.name}{tag}-{mode}"
            if mode in COLD_MODES and tf_files.exists():
                import shutil

                print(f"suite: {tf_files} from an earlier run removed (this column starts cold)")
                shutil.rmtree(tf_files)
            if mode not in COLD_MODES and not tf_files.exists():
                shared = work / f"{data.name}-cache" / "bottlenecks"
                shared.mkdir(parents=True, exist_ok=True)
                tf_files.mkdir(parents=True)
                os.symlink(shared, tf_files / "bottlenecks")
            argv = [sys.executable, "-m", "tfguess", "-q", "train", str(tf_files),
                    "--image-dir", str(data / "train"), "--eval-dir", str(data / "val"),
                    "--no-report", *SUITE_MODES[mode], *extra]
            print("suite:", shlex.join(argv[1:]), flush=True)
            row = {"dataset": data.name, "mode": mode, "flags": [*SUITE_MODES[mode], *extra],
                   "load_before": load_average()}
            t = time.perf_counter()
            done = subprocess.run(argv, stdout=None if args.verbose else subprocess.DEVNULL)
            row["seconds"] = round(time.perf_counter() - t, 1)
            row["load_after"] = load_average()
            if done.returncode != 0:
                row["error"] = f"exit code {done.returncode}"
            else:
                s = json.loads((tf_files / "run_summary.json").read_text())
                row.update(val_accuracy=s["metrics"]["eval_dir"]["accuracy"],
                           n=s["metrics"]["eval_dir"]["n"], mode_recorded=s["mode"],
                           resize=s["backbone"]["resize"], backbone=s["backbone"]["name"],
                           input_size=s["backbone"]["input_size"],
                           features_computed=s["features"]["computed"],
                           auto_resize=s.get("auto_resize"), auto_backbone=s.get("auto_backbone"),
                           plan=s.get("time_limit") or s.get("plan"),
                           precision=s.get("precision"),
                           fine_tune={k: v for k, v in (s.get("fine_tune") or {}).items()
                                      if k != "history"} or None,
                           timings=s.get("timings_s"))
            print(json.dumps(row), flush=True)
            with open(results, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
    suite_table(work)


def suite_table(work: Path) -> None:
    rows = [json.loads(line) for line in (work / "suite.jsonl").read_text().splitlines() if line]
    cells: dict[tuple[str, str], dict] = {}
    for r in rows:  # the latest run of each cell
        key = " ".join(f for f in r["flags"] if f not in SUITE_MODES.get(r["mode"], []))
        cells[r["dataset"], r["mode"] + (f" ({key})" if key else "")] = r
    if not cells:
        print(f"no runs in {work / 'suite.jsonl'} yet")
        return
    datasets = list(dict.fromkeys(d for d, _ in cells))
    columns = list(dict.fromkeys(m for _, m in cells))
    print("| data set (val n) | " + " | ".join(columns) + " |")
    print("| --- |" + " --- |" * len(columns))
    for d in datasets:
        n = next((r.get("n") for (dd, _), r in cells.items() if dd == d and r.get("n")), "?")
        out = []
        for m in columns:
            r = cells.get((d, m))
            if r is None:
                out.append("")
            elif "error" in r:
                out.append(f"failed ({r['error']}, {r['seconds']:.0f} s)")
            else:
                chosen = f" [{r['resize']}]" if m.startswith(("default", "quick")) else ""
                if isinstance(r.get("plan"), dict) and r["plan"].get("recipe"):
                    chosen = f" [{r['plan']['recipe']}, {r['resize']}]"
                out.append(f"{r['val_accuracy']:.4f}{chosen} ({r['seconds']:.0f} s)")
        print(f"| {d} ({n}) | " + " | ".join(out) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("work", help="folder for the trained models and results.jsonl")
    p.add_argument("--dataset", default="cub_songbirds22")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--modes", help=f"default {MODES_DEFAULT}; with --suite, columns among "
                   f"{', '.join(SUITE_MODES)} (default {SUITE_DEFAULT})")
    p.add_argument("--suite", action="store_true",
                   help="every data set of ../shared/datasets with the modes of SUITE_MODES")
    p.add_argument("--datasets", help="with --suite: comma-separated data set names (default: all)")
    p.add_argument("--flags", help="with --suite: more tfguess train flags for every run, e.g. --flags=--views=0")
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
    if args.suite and args.table:
        suite_table(Path(args.work))
    elif args.suite:
        suite(args)
    elif args.table:
        table(Path(args.work))
    else:
        run(args)


if __name__ == "__main__":
    main()
