"""A simulated labelling session on the inbox: how many labels each strategy needs.

For each data set of ``../shared/datasets`` (``train/`` is the unlabelled pool, ``val/`` the score
set; the true labels are the oracle), the features are extracted once through the project's own
cache (``bottlenecks.compute_features`` with ``features.make_extractor``, efficientnet_lite0, the
default backbone) into ``WORK/bottlenecks``. Then, per strategy and seed: 2 labelled photos per
label drawn at random, and rounds of 20 labels chosen by the strategy; each round is what the
inbox does on "re-train" (:func:`tfguess.curate.active.refit`: the product's head fitted on the labelled
features, the pool scored, the cross-validated accuracy and the estimate of the mistakes left),
timed, then the val accuracy of that head. The full-data accuracy is the same fit on all of
``train/``.

Writes ``WORK/active_learning-<seeds>.jsonl`` (one line a round), prints the table of labels needed to
reach 0.80 on cub_songbirds22 and 95 % of the full-data accuracy on each set, and plots the
curves (``--plot docs/active_learning.png``).

Run:  nice python bench/active_learning.py /tmp/al-work --plot docs/active_learning.png
      nice python bench/active_learning.py /tmp/al-work --time-1000   # re-train at 1,000 labels
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")   # small matrices: one thread is fastest (tfguess.curate.active.refit)

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
SETS = ["cub_songbirds22", "hymenoptera", "furniture4", "clothing5", "instruments10"]
START_PER_LABEL = 2
ROUND = 20
TARGET_CUB = 0.80
TARGET_SHARE = 0.95
ROUNDS_AFTER = 5      # rounds recorded after the targets are reached (for the curves)


def features(work: Path, name: str):
    """``(x_train, y_train, x_val, y_val, labels)`` of a data set, through the product's cache."""
    out = work / f"{name}.npz"
    if out.exists():
        d = np.load(out, allow_pickle=False)
        return d["xt"], d["yt"], d["xv"], d["yv"], list(d["labels"])
    from tfguess.data.dataset import walk
    from tfguess.engine.backbones import get_backbone
    from tfguess.engine.bottlenecks import BottleneckCache, compute_features
    from tfguess.engine.features import BackboneRef, make_extractor
    from tfguess.guess.journal import file_digest

    spec = get_backbone("efficientnet_lite0")
    ref = BackboneRef(spec.name, spec.weights_id(), spec.input_size, spec.resize)
    cache = BottleneckCache(work / "bottlenecks", ref.cache_key)
    built = {}

    def extractor():
        if "e" not in built:
            built["e"] = make_extractor(ref, spec.build)
        return built["e"]

    labels = sorted(p.name for p in (DATASETS / name / "train").iterdir() if p.is_dir())
    arrays = []
    for split in ("train", "val"):
        items = [(p, file_digest(p), i) for i, label in enumerate(labels)
                 for p in walk(DATASETS / name / split / label).images]
        feats = compute_features([(p, d) for p, d, _ in items], cache, extractor, ref.input_size,
                                 ref.resize, progress=False)
        kept = [(d, i) for _, d, i in items if d in feats.features]
        arrays += [np.stack([feats.features[d] for d, _ in kept]).astype(np.float32),
                   np.array([i for _, i in kept], np.int64)]
        print(f"{name}/{split}: {len(kept)} images ({feats.computed} computed, {len(items) - len(kept)} "
              f"unusable)", flush=True)
    np.savez(out, xt=arrays[0], yt=arrays[1], xv=arrays[2], yv=arrays[3], labels=np.array(labels))
    return (*arrays, labels)


def accuracy(head, x, y) -> float:
    return float((head(x).argmax(1) == y).mean())


def session(xt, yt, xv, yv, k: int, strategy: str, seed: int, max_labels: int, stop_at: float):
    """One simulated session: rows ``{labels, val_accuracy, seconds, cv_accuracy, remaining}``.
    It ends when the pool is empty, at ``max_labels``, or :data:`ROUNDS_AFTER` rounds after the
    val accuracy first reached ``stop_at`` (the highest target of the set)."""
    from tfguess.curate.active import refit, select

    rng = np.random.default_rng(seed)
    labelled = np.concatenate([rng.choice(np.flatnonzero(yt == c), START_PER_LABEL, replace=False)
                               for c in range(k)])
    rows = []
    while True:
        pool = np.setdiff1d(np.arange(len(yt)), labelled)
        t = time.perf_counter()
        r = refit(xt[labelled], yt[labelled], k, xt[pool])
        pick = select(strategy, r.pool_probs, ROUND, xt[pool], xt[labelled], seed=seed + len(rows))
        seconds = time.perf_counter() - t
        errors = int((r.pool_probs.argmax(1) != yt[pool]).sum())
        rows.append({"labels": len(labelled), "val_accuracy": round(accuracy(r.head, xv, yv), 4),
                     "seconds": round(seconds, 3), "fit_seconds": round(r.seconds, 3),
                     "cv_accuracy": r.cv_accuracy, "remaining_estimate": round(r.remaining, 1),
                     "remaining_true": errors})
        reached = next((i for i, r in enumerate(rows) if r["val_accuracy"] >= stop_at), None)
        if len(pool) == 0 or len(labelled) >= max_labels or (
                reached is not None and len(rows) - reached > ROUNDS_AFTER):
            return rows
        labelled = np.concatenate([labelled, pool[pick]])


def labels_to(rows: list[dict], target: float) -> int | None:
    """Labels given when the val accuracy first reached ``target`` (None: never)."""
    return next((r["labels"] for r in rows if r["val_accuracy"] >= target), None)


def run(args) -> None:
    from tfguess.curate.active import STRATEGIES, fit

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out = work / f"active_learning-{'-'.join(map(str, args.seeds))}.jsonl"
    done = {(r["dataset"], r.get("strategy"), r.get("seed")) for r in _records(work)}
    for name in args.sets:
        xt, yt, xv, yv, labels = features(work, name)
        k = len(labels)
        from threadpoolctl import threadpool_limits

        t = time.perf_counter()
        with threadpool_limits(1):
            full = accuracy(fit(xt, yt, k), xv, yv)
        if (name, "full", None) not in done:
            with open(out, "a") as f:
                f.write(json.dumps({"dataset": name, "strategy": "full", "seed": None,
                                    "labels": len(yt), "val_accuracy": round(full, 4),
                                    "seconds": round(time.perf_counter() - t, 2)}) + "\n")
        print(f"{name}: full-data val accuracy {full:.4f} ({len(yt)} labels)", flush=True)
        stop_at = max(TARGET_SHARE * full, TARGET_CUB if name == "cub_songbirds22" else 0)
        for seed in args.seeds:
            for strategy in args.strategies or STRATEGIES:
                if (name, strategy, seed) in done:
                    continue
                rows = session(xt, yt, xv, yv, k, strategy, seed, args.max_labels, stop_at)
                with open(out, "a") as f:
                    f.write(json.dumps({"dataset": name, "strategy": strategy, "seed": seed,
                                        "rows": rows, "load": os.getloadavg()[0]}) + "\n")
                print(f"{name} {strategy} seed {seed}: {len(rows)} rounds, last val "
                      f"{rows[-1]['val_accuracy']}, mean round {np.mean([r['seconds'] for r in rows]):.2f} s",
                      flush=True)


def _records(work: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(work.glob("active_learning*.jsonl"))
            for line in path.read_text().splitlines() if line.strip()]


def load(work: Path) -> tuple[dict, dict]:
    full, sessions = {}, {}
    for r in _records(work):
        if r["strategy"] == "full":
            full[r["dataset"]] = r["val_accuracy"]
        else:
            sessions.setdefault(r["dataset"], {}).setdefault(r["strategy"], []).append(r["rows"])
    return full, sessions


def mean_curve(runs: list[list[dict]]) -> list[dict]:
    """The seeds' mean val accuracy at each number of labels all of them reached."""
    n = min(len(r) for r in runs)
    return [{"labels": runs[0][i]["labels"],
             "val_accuracy": float(np.mean([r[i]["val_accuracy"] for r in runs])),
             "seconds": float(np.mean([r[i]["seconds"] for r in runs]))} for i in range(n)]


def table(work: Path) -> dict:
    """Markdown table of labels needed; returns ``{dataset: {strategy: labels}}`` for 95 %."""
    full, sessions = load(work)
    strategies = [s for s in ("margin", "entropy", "kcenter-margin", "random")
                  if any(s in v for v in sessions.values())]
    needed = {}
    print("| data set | target | " + " | ".join(strategies) + " |")
    print("|---|---|" + "---|" * len(strategies))
    for name in SETS:
        if name not in sessions:
            continue
        targets = [(f"95 % of full ({TARGET_SHARE * full[name]:.3f})", TARGET_SHARE * full[name])]
        if name == "cub_songbirds22":
            targets.insert(0, (f"{TARGET_CUB:.2f}", TARGET_CUB))
        for what, target in targets:
            got = {s: labels_to(mean_curve(sessions[name][s]), target)
                   for s in strategies if s in sessions[name]}
            if what.startswith("95"):
                needed[name] = got
            base = got.get("random")
            cells = []
            for s in strategies:
                n = got.get(s)
                if n is None:
                    cells.append("not reached")
                elif base and s != "random":
                    cells.append(f"{n} ({n / base:.2f}x)")
                else:
                    cells.append(str(n))
            print(f"| {name} (full-data acc {full[name]:.3f}) | {what} | " + " | ".join(cells) + " |")
    totals = {s: sum(needed[n].get(s) or 10**6 for n in needed) for s in strategies}
    print("\nsum over the sets of labels to 95 % (not reached = 10^6):", totals)
    fastest = {}
    for strat in sessions.values():
        for s, runs in strat.items():
            fastest.setdefault(s, []).extend(r["seconds"] for run in runs for r in run)
    print("mean seconds a round:", {s: round(float(np.mean(v)), 3) for s, v in fastest.items()})
    return needed


def plot(work: Path, path: Path) -> None:
    """One panel a data set (mean val accuracy against labelled photos, per strategy; dotted: the
    targets), and one of the seconds each round took."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full, sessions = load(work)
    names = [n for n in SETS if n in sessions]
    colours = {"margin": "C0", "entropy": "C1", "kcenter-margin": "C2", "random": "C3"}
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    flat = axes.ravel()
    for ax, name in zip(flat, names):
        for s, runs in sessions[name].items():
            c = mean_curve(runs)
            ax.plot([r["labels"] for r in c], [r["val_accuracy"] for r in c], label=s,
                    color=colours.get(s), lw=1.5, ls="--" if s == "random" else "-")
        ax.axhline(TARGET_SHARE * full[name], color="grey", lw=0.8, ls=":")
        if name == "cub_songbirds22":
            ax.axhline(TARGET_CUB, color="black", lw=0.8, ls=":")
        ax.set_title(f"{name} (all of train/: {full[name]:.3f}, {len(runs)} seeds)", fontsize=9)
        ax.set_xlabel("labelled photos", fontsize=8)
        ax.set_ylabel("val accuracy", fontsize=8)
        ax.grid(alpha=0.3)
    flat[0].legend(fontsize=8)
    ax = flat[len(names)]
    for name in names:
        for s, runs in sessions[name].items():
            pts = [(r["labels"], r["seconds"]) for run in runs for r in run]
            ax.scatter(*zip(*pts), s=6, color=colours.get(s), alpha=0.5,
                       label=s if name == names[0] else None)
    ax.set_title("seconds a round (re-train, scores, choice; 2 shared cores)", fontsize=9)
    ax.set_xlabel("labelled photos", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    print(f"wrote {path}")


def time_1000(work: Path) -> None:
    """Seconds of the inbox's re-train with 1,000 labelled photos (instruments10)."""
    from tfguess.curate.active import refit

    xt, yt, _, _, labels = features(work, "instruments10")
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(yt))
    lab, pool = idx[:1000], idx[1000:]
    for cv in (False, True):
        times, cpu = [], []
        for _ in range(3):
            c = time.process_time()
            times.append(refit(xt[lab], yt[lab], len(labels), xt[pool], cv=cv).seconds)
            cpu.append(time.process_time() - c)
        print(f"re-train, 1,000 labelled photos, {len(labels)} labels, {len(pool)} in the pool, "
              f"cross-validation {'on' if cv else 'off'}: {min(times):.2f} s best, "
              f"{np.median(times):.2f} s median of 3, CPU time {min(cpu):.2f} s (one thread; "
              f"load {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores, {platform.machine()})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("work", help="work folder (feature cache, results), outside the repository")
    p.add_argument("--sets", nargs="+", default=SETS)
    p.add_argument("--strategies", nargs="+")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                   help="seeds to run (two processes can run different seeds side by side)")
    p.add_argument("--max-labels", type=int, default=600)
    p.add_argument("--features-only", action="store_true")
    p.add_argument("--table", action="store_true", help="only print the table of WORK's results")
    p.add_argument("--plot", help="write the curves as a PNG")
    p.add_argument("--time-1000", action="store_true")
    args = p.parse_args()
    work = Path(args.work).resolve()
    if args.features_only:
        for name in args.sets:
            features(work, name)
        return
    if args.time_1000:
        time_1000(work)
        return
    if not args.table:
        run(args)
    table(work)
    if args.plot:
        plot(work, Path(args.plot))


if __name__ == "__main__":
    main()
