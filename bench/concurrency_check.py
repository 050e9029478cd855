"""Runs that meet: several ``guess-dir`` runs into one DST, several ``train`` runs on one TF_FILES.

Usage:
    python bench/concurrency_check.py guess-dir TF_FILES [--runs 2 4] [--times 20] [--images 12]
    python bench/concurrency_check.py train [--times 10] [--per-label 12]

guess-dir: SRC holds ``--images`` photos of ``test_data/``; ``--runs`` runs of ``tfguess guess-dir``
start together into one new DST, ``--times`` times for each count, without and with ``--again``.
Each time DST must hold every source exactly once (with ``--again``: once per run), one
well-formed manifest row per copy and one header, every copy whole (its digest that of its
source), no temporary file and no lock file left; every run exits 0 without a traceback.

train: two ``tfguess train`` runs start together on one copy of ``--per-label`` demo photos per
label, ``--times`` times (a new copy each time, so the first of the two computes the features):
both exit 0, one says it waited for the other, and the model loads and classifies, the summary,
labels and report read back, every cached feature vector loads, and no temporary file is left.

Prints one line per try and a summary; exit code 1 when any try failed.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "test_data"
DEMO_DATA = REPO / "tf_files" / "data"
WAITING = "waiting — Ctrl-C to stop"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _start(args: list[str], cwd: Path | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen([sys.executable, "-m", "tfguess", "-q", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)


def _finish(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str]]:
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        done.append((proc.returncode, out + err))
    return done


def make_src(folder: Path, n: int) -> dict[str, str]:
    """``n`` photos of test_data/ in ``folder``: their paths -> sha256."""
    folder.mkdir(parents=True)
    photos = sorted(p for p in TEST_DATA.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    for p in photos[:n]:
        shutil.copy(p, folder / p.name)
    return {str(p): _sha(p) for p in sorted(folder.iterdir())}


def run_guess_dirs(model: Path, src: Path, dst: Path, runs: int, again: bool,
                   timeout: float = 300) -> list[tuple[int, str]]:
    """``runs`` guess-dir runs started together into ``dst``: (exit code, output) of each."""
    extra = ["--again"] if again else []
    procs = [_start(["guess-dir", model, src, dst, *extra]) for _ in range(runs)]
    return _finish(procs, timeout)


def check_dst(dst: Path, sources: dict[str, str], copies_each: int,
              results: list[tuple[int, str]]) -> list[str]:
    """What is wrong with ``dst`` after runs that met there (an empty list: nothing)."""
    from tfguess.core.locks import LOCK_FILENAME
    from tfguess.guess.journal import HEADER, TEMP_PREFIX

    problems = [f"a run exited {rc}: {text.strip()[-300:]}" for rc, text in results if rc != 0]
    problems += ["a run printed a traceback" for _, text in results if "Traceback" in text]
    raw = (dst / "manifest.csv").read_bytes().decode("utf-8", "surrogateescape")
    header = ",".join(HEADER) + "\n"
    if not raw.startswith(header) or raw.count(",".join(HEADER)) != 1:
        problems.append(f"the manifest has {raw.count(','.join(HEADER))} header(s)")
    if not raw.endswith("\n"):
        problems.append("the manifest's last line is cut short")
    try:
        rows = list(csv.reader(io.StringIO(raw[len(header):], newline=""), strict=True))
    except csv.Error as e:
        return problems + [f"the manifest is not well-formed CSV: {e}"]
    bad = [r for r in rows if len(r) != len(HEADER)]
    if bad:
        problems.append(f"{len(bad)} manifest row(s) without {len(HEADER)} fields")
    rows = [dict(zip(HEADER, r)) for r in rows if len(r) == len(HEADER)]
    files = sorted(p for p in dst.rglob("*") if p.is_file() and p.name != "manifest.csv")
    leftovers = [p.name for p in files if p.name.startswith(TEMP_PREFIX) or p.name == LOCK_FILENAME]
    if leftovers:
        problems.append(f"left in DST: {leftovers}")
    files = [p for p in files if p.name not in leftovers]
    want = len(sources) * copies_each
    if len(rows) != want or len(files) != want:
        problems.append(f"{len(rows)} rows and {len(files)} copies, expected {want} of each")
    per_source = {s: 0 for s in sources}
    for r in rows:
        per_source[r["source"]] = per_source.get(r["source"], 0) + 1
    wrong = {s: n for s, n in per_source.items() if n != copies_each}
    if wrong:
        problems.append(f"sources not copied {copies_each} time(s): {len(wrong)}")
    by_dest = {r["destination"]: r for r in rows}
    if len(by_dest) != len(rows):
        problems.append("two rows name the same copy")
    if set(by_dest) != {str(p) for p in files}:
        problems.append("the rows and the copies in DST differ")
    for p in files:
        row = by_dest.get(str(p))
        if row and not (_sha(p) == row["sha256"] == sources.get(row["source"])):
            problems.append(f"{p.name}: not a whole copy of its source")
    return problems


def guess_dir_check(model: Path, runs: list[int], times: int, images: int) -> bool:
    ok = True
    with tempfile.TemporaryDirectory(prefix="tfguess-meet-") as tmp:
        src = Path(tmp) / "src"
        sources = make_src(src, images)
        for n in runs:
            for again in (False, True):
                failed, waited, t0 = 0, 0, time.perf_counter()
                for i in range(times):
                    dst = Path(tmp) / f"dst-{n}-{int(again)}-{i}"
                    results = run_guess_dirs(model, src, dst, n, again)
                    problems = check_dst(dst, sources, n if again else 1, results)
                    waited += sum(WAITING in text for _, text in results)
                    if problems:
                        failed += 1
                        print(f"  {n} runs{' --again' if again else ''}, try {i + 1}: "
                              + "; ".join(problems), flush=True)
                    shutil.rmtree(dst)
                ok &= not failed
                print(f"{n} concurrent guess-dir runs{' with --again' if again else ''}, "
                      f"{len(sources)} sources: {times - failed}/{times} tries correct "
                      f"({waited} of {n * times} runs said they waited; "
                      f"{time.perf_counter() - t0:.0f} s)", flush=True)
    return ok


def make_tf_files(base: Path, per_label: int) -> Path:
    """A TF_FILES with ``per_label`` demo photos per label."""
    for label in ("face", "not_face"):
        (base / "data" / label).mkdir(parents=True)
        for p in sorted((DEMO_DATA / label).iterdir())[:per_label]:
            shutil.copy(p, base / "data" / label / p.name)
    return base


def run_trains(tf_files: Path, runs: int = 2, timeout: float = 900,
               args: tuple[str, ...] = ("--epochs", "5")) -> list[tuple[int, str]]:
    procs = [_start(["train", tf_files, *args]) for _ in range(runs)]
    return _finish(procs, timeout)


def check_tf_files(tf_files: Path, results: list[tuple[int, str]]) -> list[str]:
    """What is wrong with TF_FILES after train runs that met there (an empty list: nothing)."""
    from tfguess.core.fsutil import TMP_SUFFIX
    from tfguess.core.locks import LOCK_FILENAME
    from tfguess.guess.predict import Predictor

    problems = [f"a run exited {rc}: {text.strip()[-300:]}" for rc, text in results if rc != 0]
    problems += ["a run printed a traceback" for _, text in results if "Traceback" in text]
    try:
        predictor = Predictor.load(tf_files, log=lambda *_: None)
        pred = next(predictor.predict([TEST_DATA / "face_090.jpg"]))
        if pred.error or pred.label not in ("face", "not_face"):
            problems.append(f"the model does not classify: {pred}")
    except Exception as e:  # noqa: BLE001 - reported as a failed try
        problems.append(f"the model does not load: {type(e).__name__}: {e}")
    try:
        summary = json.loads((tf_files / "run_summary.json").read_text())
        labels = (tf_files / "retrained_labels.txt").read_text().splitlines()
        if summary["labels"] != labels:
            problems.append("the summary and retrained_labels.txt disagree")
        json.loads((tf_files / "report" / "report.json").read_text())
        if not (tf_files / "report" / "index.html").is_file():
            problems.append("no report/index.html")
    except (OSError, ValueError, KeyError) as e:
        problems.append(f"an output does not read back: {e}")
    vectors = list((tf_files / "bottlenecks").rglob("*.npy"))
    dims = set()
    for p in vectors:
        try:
            v = np.load(p, allow_pickle=False)
            dims.add(v.shape)
            if not np.isfinite(v).all():
                problems.append(f"{p.name}: not finite")
        except (OSError, ValueError, EOFError) as e:
            problems.append(f"{p.name}: does not load ({e})")
    if not vectors or len(dims) != 1:
        problems.append(f"{len(vectors)} cached vectors of shapes {sorted(dims)}")
    left = [p.name for p in tf_files.rglob("*")
            if TMP_SUFFIX in p.name and p.name.startswith(".") or p.name == LOCK_FILENAME]
    if left:
        problems.append(f"left in TF_FILES: {left}")
    return problems


def train_check(times: int, per_label: int) -> bool:
    failed, waited, t0 = 0, 0, time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tfguess-meet-") as tmp:
        for i in range(times):
            tf_files = make_tf_files(Path(tmp) / f"tf{i}", per_label)
            results = run_trains(tf_files)
            problems = check_tf_files(tf_files, results)
            said = sum(WAITING in text for _, text in results)
            waited += said
            if said != 1:
                problems.append(f"{said} runs said they waited (expected 1)")
            if problems:
                failed += 1
            print(f"  try {i + 1}: " + ("; ".join(problems) if problems else "correct")
                  + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
            shutil.rmtree(tf_files)
    print(f"2 concurrent train runs on one TF_FILES: {times - failed}/{times} tries correct "
          f"({waited} of {2 * times} runs said they waited; {time.perf_counter() - t0:.0f} s)")
    return not failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("guess-dir")
    p.add_argument("tf_files", type=Path, help="a trained TF_FILES folder (or model.keras)")
    p.add_argument("--runs", type=int, nargs="+", default=[2, 4])
    p.add_argument("--times", type=int, default=20)
    p.add_argument("--images", type=int, default=12)
    p = sub.add_parser("train")
    p.add_argument("--times", type=int, default=10)
    p.add_argument("--per-label", type=int, default=12)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; python {sys.version.split()[0]}", flush=True)
    if args.what == "guess-dir":
        ok = guess_dir_check(args.tf_files.resolve(), args.runs, args.times, args.images)
    else:
        ok = train_check(args.times, args.per_label)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
