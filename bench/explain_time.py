"""Time of the "why?" occlusion map (``POST /api/explain``) per photo, in-process.

    python bench/explain_time.py [TF_FILES] [--images DIR] [--n 20] [--grid 7]

Serves TF_FILES (default: a model trained on the demo photos into bench/work/explain-demo) with
the real application on a test client, asks for the map of ``--n`` photos one after another
(default: the hymenoptera val/ photos in ../shared/datasets, else the repo's test_data/) and
prints the seconds of each map as the server measured them (median, p90) with the CPU's
instruction sets. The first map, which loads the engine, is not counted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def demo_model() -> Path:
    import shutil

    from tfguess.core.config import TrainConfig
    from tfguess.training.train import train

    tf_files = REPO / "bench" / "work" / "explain-demo"
    if not (tf_files / "model.keras").is_file():
        shutil.rmtree(tf_files, ignore_errors=True)
        shutil.copytree(REPO / "tf_files" / "data", tf_files / "data")
        train(tf_files, TrainConfig(report=False), progress=False, log=lambda *_: None)
    return tf_files


def photos(folder: Path | None, n: int) -> list[Path]:
    shared = REPO.parent / "shared" / "datasets" / "hymenoptera" / "val"
    folder = folder or (shared if shared.is_dir() else REPO / "test_data")
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return found[: n + 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tf_files", nargs="?", type=Path)
    parser.add_argument("--images", type=Path)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--grid", type=int, default=7)
    args = parser.parse_args()
    from fastapi.testclient import TestClient

    from tfguess.serve import create_app

    sys.path.insert(0, str(REPO / "bench"))
    from serve_load import cpu_flags

    tf_files = args.tf_files or demo_model()
    images = photos(args.images, args.n)
    seconds = []
    with TestClient(create_app(tf_files, log=lambda *_: None), base_url="http://127.0.0.1") as client:
        for image in images:
            r = client.post("/api/explain", params={"grid": args.grid},
                            files=[("files", (image.name, image.read_bytes(), "image/jpeg"))])
            r.raise_for_status()
            seconds.append(r.json()["seconds"])
    timed = sorted(seconds[1:])
    print(f"why? map ({args.grid}x{args.grid} grid, {args.grid ** 2 + 1} network runs) on "
          f"{len(timed)} photos of {images[0].parent.parent}: median {statistics.median(timed):.3f} s, "
          f"p90 {timed[int(0.9 * (len(timed) - 1))]:.3f} s a photo; CPU: {cpu_flags()}")


if __name__ == "__main__":
    main()
