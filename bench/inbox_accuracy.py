"""Does the inbox page's accuracy figure tell the truth? A simulated labelling session.

A data set of ``../shared/datasets`` (``<set>/train/<label>/*``) becomes a TF_FILES with
``--start`` photos a label in ``data/`` and every other photo in an inbox folder (the pile); the
true labels are the oracle. The session drives the product's own :class:`tfguess.curate.inbox.Inbox`
(features from the cache ``WORK/bottlenecks``, shared with ``bench/active_learning.py``): each
round, the person labels the first ``--round`` photos of the page's order (``uncertainty``, the
page's default, or ``random``) with their true label, and the inbox re-trains by itself every
``--round`` labels, as the page does. After each round it prints what the page shows against the
truth:

* ``page: right on``: the model's guess shown when each of the last 50 photos was labelled was
  that label (``stats()["guesses"]``, prequential: each guess was made before the model saw the
  photo's label);
* ``page: estimate``: the page's estimated accuracy on the photos left (the model's own doubt on
  them, scaled by how over-confident its checked guesses proved);
* ``old page: CV``: the cross-validated accuracy on the labelled photos the page used to show;
* ``true accuracy on the rest``: the current model's guesses on the photos left in the pile,
  against their true labels.

Run:  nice python bench/inbox_accuracy.py /tmp/inbox-acc-work --set hymenoptera
      nice python bench/inbox_accuracy.py /tmp/inbox-acc-work --set weather4 --order random
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"


def make_session(work: Path, name: str, start: int, seed: int) -> tuple[Path, Path, dict[str, str]]:
    """A fresh TF_FILES (``start`` photos a label in ``data/``) and inbox (the rest) under
    ``work``; the truth: the label of each inbox photo by its name in the inbox."""
    from tfguess.data.dataset import walk

    session = work / f"session-{name}-{seed}"
    shutil.rmtree(session, ignore_errors=True)
    tf_files, pile = session / "tf", session / "inbox"
    pile.mkdir(parents=True)
    (work / "bottlenecks").mkdir(parents=True, exist_ok=True)
    tf_files.mkdir()
    (tf_files / "bottlenecks").symlink_to(work / "bottlenecks")
    rng = np.random.default_rng(seed)
    truth = {}
    train = DATASETS / name / "train"
    for label in sorted(p.name for p in train.iterdir() if p.is_dir()):
        photos = walk(train / label).images
        first = set(rng.choice(len(photos), start, replace=False).tolist())
        (tf_files / "data" / label).mkdir(parents=True)
        for i, p in enumerate(photos):
            if i in first:
                shutil.copy(p, tf_files / "data" / label / p.name)
            else:
                shutil.copy(p, pile / f"{label}__{p.name}")
                truth[f"{label}__{p.name}"] = label
    return tf_files, pile, truth


def true_accuracy(inbox, truth: dict[str, str]) -> tuple[int, int]:
    """``(right, n)``: the current model's guesses on the photos left against their labels."""
    probs, names = inbox.pool_probs, inbox.pool_names
    if not len(names) or not probs.shape[1]:
        return 0, len(names)
    guesses = [inbox.head_labels[j] for j in probs.argmax(1)]
    return sum(g == truth[n] for g, n in zip(guesses, names)), len(names)


def old_cv(inbox) -> float | None:
    """What the page used to show: the labelled photos' cross-validated accuracy."""
    from threadpoolctl import threadpool_limits

    from tfguess.curate import active

    with threadpool_limits(1):
        oos = active.cv_probs(inbox.lab_x, inbox.lab_y, len(inbox.labels))
    return active.cv_accuracy(inbox.lab_y, oos)


def pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def run(args) -> list[dict]:
    from tfguess.curate.inbox import Inbox

    work = Path(args.work).resolve()
    tf_files, pile, truth = make_session(work, args.set, args.start, args.seed)
    inbox = Inbox(tf_files, pile, auto_every=args.round, log=lambda *_: None)
    print(f"{args.set}: {sum(inbox.stats()['per_label'].values())} labelled photos to start, "
          f"{len(truth)} in the pile; order {args.order}, a re-train every {args.round} labels\n")
    print("| labelled | page: right on | page: estimate on the rest | old page: CV "
          "| true accuracy on the rest |")
    print("|---:|---:|---:|---:|---:|")
    rows = []
    while True:
        s = inbox.stats()
        g = s["guesses"]
        right, n = true_accuracy(inbox, truth)
        row = {"labelled": s["labelled"], "right": g["right"], "checked": g["checked"],
               "estimate": g["estimated_accuracy"], "cv": old_cv(inbox),
               "true": right / n if n else None, "true_right": right, "left": n}
        rows.append(row)
        shown = f"{g['right']}/{g['checked']} ({pct(g['accuracy'])})" if g["checked"] else "–"
        print(f"| {row['labelled']} | {shown} | {pct(row['estimate'])} | {pct(row['cv'])} "
              f"| {right}/{n} ({pct(row['true'])}) |", flush=True)
        items = inbox.items(args.order, seed=args.seed + len(rows))
        if not items or s["labelled"] >= args.max_labels:
            return rows
        for item in items[:args.round]:
            inbox.label(item["name"], truth[item["name"]])


def summary(rows: list[dict]) -> None:
    pairs = [(r["estimate"], r["true"]) for r in rows[1:] if r["estimate"] is not None
             and r["true"] is not None]
    shown = [(r["right"] / r["checked"], r["true"]) for r in rows[1:] if r["checked"]
             and r["true"] is not None]
    cv = [(r["cv"], r["true"]) for r in rows[1:] if r["cv"] is not None and r["true"] is not None]
    for what, p in (("page: estimate", pairs), ("page: right on", shown), ("old page: CV", cv)):
        if p:
            err = np.array([a - b for a, b in p])
            print(f"{what}: mean error {100 * err.mean():+.1f} points, mean |error| "
                  f"{100 * np.abs(err).mean():.1f} points over {len(p)} rounds")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("work", help="work folder (feature cache, sessions), outside the repository")
    p.add_argument("--set", default="hymenoptera", help="a data set of ../shared/datasets")
    p.add_argument("--order", default="uncertainty", choices=["uncertainty", "random"])
    p.add_argument("--start", type=int, default=2, help="labelled photos a label to start with")
    p.add_argument("--round", type=int, default=20, help="labels a round (= --inbox-every)")
    p.add_argument("--max-labels", type=int, default=160)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    summary(run(args))


if __name__ == "__main__":
    main()
