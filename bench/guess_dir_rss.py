"""Peak memory of guess-dir over a SRC that holds a 3 GB non-image file (and some photos).

Usage: python bench/guess_dir_rss.py TF_FILES [--size-gb 3]

SRC gets a 3 GB sparse file named like a video (``movie.mp4``), another named like a photo
(``huge.jpg``), and the 20 photos of ``test_data/``. guess-dir runs in a child process; its peak
resident set size (``ru_maxrss``) is printed. Exit code 1 when it reaches 1 GiB: a non-image must
be called so from its first bytes, never read whole.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIMIT = 1 << 30


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tf_files", help="a trained TF_FILES folder (or model.keras)")
    parser.add_argument("--size-gb", type=float, default=3.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tfguess-rss-") as tmp:
        src, dst = Path(tmp) / "src", Path(tmp) / "dst"
        src.mkdir()
        for name in ("movie.mp4", "huge.jpg"):
            with open(src / name, "wb") as f:
                if name.endswith(".mp4"):
                    f.write(b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00isommp42")
                f.truncate(int(args.size_gb * 2**30))
        for p in sorted((REPO / "test_data").iterdir()):
            shutil.copy(p, src / p.name)
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "tfguess", "-q", "guess-dir", args.tf_files,
                               str(src), str(dst)], env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # kB on Linux
        print(proc.stdout.strip())
        if proc.stderr.strip():
            print(proc.stderr.strip(), file=sys.stderr)
        print(f"guess-dir over 20 photos + 2 sparse non-image files of {args.size_gb:g} GB: "
              f"exit {proc.returncode}, {seconds:.1f} s, peak RSS {peak / 2**20:.0f} MiB "
              f"(limit {LIMIT / 2**20:.0f} MiB)")
        return 0 if peak < LIMIT and proc.returncode == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
