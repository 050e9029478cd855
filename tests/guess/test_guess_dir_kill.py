"""guess-dir killed with SIGKILL at random moments, and re-run each time, loses and duplicates nothing.

About 200 large photos (real pictures from scikit-image, upscaled to 3000x2000 JPEGs) are sorted
into DST; the run is killed 20 times at random moments and started again each time. At the end
every source is in DST exactly once, every file in DST is a whole copy with exactly one manifest
row, the manifest has one header, and no temporary file is left.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tfguess.guess.journal import HEADER, TEMP_PREFIX

pytestmark = pytest.mark.slow  # every test here trains or loads a model

REPO = Path(__file__).resolve().parents[2]
N_IMAGES = 400
N_KILLS = 20
SIZE = (3000, 2000)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def big_photos(tmp_path_factory) -> Path:
    from skimage import data as skdata

    bases = [skdata.astronaut(), skdata.chelsea(), skdata.coffee(), skdata.rocket(),
             np.stack([skdata.camera()] * 3, axis=-1)]
    bases = [Image.fromarray(b).convert("RGB").resize(SIZE, Image.Resampling.BILINEAR)
             for b in bases]
    src = tmp_path_factory.mktemp("kill") / "src"
    src.mkdir()
    encoded = []
    for base in bases:
        buf = io.BytesIO()
        base.save(buf, "JPEG", quality=92)
        encoded.append(buf.getvalue())
    for i in range(N_IMAGES):
        # Each file is unique: its base photo with a JPEG comment segment naming it.
        data = encoded[i % len(encoded)]
        comment = f"tfguess kill test photo {i}".encode()
        segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
        (src / f"photo{i:03d}.jpg").write_bytes(data[:2] + segment + data[2:])
    return src


def _run(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.Popen([sys.executable, "-m", "tfguess", "-q", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_guess_dir_survives_sigkill_at_random_moments(demo_trained, big_photos, tmp_path):
    src, dst = big_photos, tmp_path / "sorted"
    sources = {p: _sha(p) for p in sorted(src.iterdir())}
    assert len(sources) == N_IMAGES and sum(p.stat().st_size for p in sources) > 60e6
    args = ["guess-dir", str(demo_trained), str(src), str(dst), "--batch-size", "8"]
    rng = random.Random(13)
    progress = []
    t0 = time.perf_counter()
    manifest = dst / "manifest.csv"

    def rows() -> int:
        return manifest.read_text().count("\n") - 1 if manifest.exists() else 0

    for i in range(N_KILLS):
        proc = _run(args)
        if i % 4 == 3:  # a moment of the start (loading the model, scanning, cleaning up)
            time.sleep(rng.uniform(0.0, 2.0))
        else:  # a moment of the copying: once this run has recorded a copy, within 0.6 s
            before, deadline = rows(), time.monotonic() + 60
            while rows() == before and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
        assert "Traceback" not in err, err
        progress.append(rows())
    proc = _run(args)
    out, err = proc.communicate(timeout=300)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    print(f"rows recorded after each kill: {progress}; final run: {out.strip()}; "
          f"{seconds:.0f} s in all")
    assert max(progress) > 0, "no kill landed after the first copies: the test proves nothing"
    working = sum(1 for n in progress if n < N_IMAGES)
    assert working >= N_KILLS // 2, f"only {working} kills came before the work was done"

    text = (dst / "manifest.csv").read_text()
    assert text.count(",".join(HEADER)) == 1 and text.startswith(",".join(HEADER) + "\n")
    with open(dst / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # Every source exactly once.
    assert sorted(r["source"] for r in rows) == sorted(str(p) for p in sources)
    # Every file in DST: whole (same bytes as its source), exactly one row; nothing else there.
    files = sorted(p for p in dst.iterdir() if p.name != "manifest.csv")
    assert not [p for p in files if p.name.startswith(TEMP_PREFIX)]
    by_dest = {r["destination"]: r for r in rows}
    assert len(by_dest) == len(rows) == len(files) == N_IMAGES
    assert set(by_dest) == {str(p) for p in files}
    for p in files:
        row = by_dest[str(p)]
        assert _sha(p) == row["sha256"] == sources[Path(row["source"])], p
    for p in files[:: N_IMAGES // 10]:
        with Image.open(p) as im:
            im.load()
    # Sources untouched.
    assert {p: _sha(p) for p in sorted(src.iterdir())} == sources


@pytest.mark.slow
def test_run_waiting_for_a_killed_one_takes_over(demo_trained, big_photos, tmp_path):
    """Two runs started together into one DST: one writes, the other waits; the writing one is
    killed in the middle of its copies. The kernel drops a killed process's lock: the waiting run
    takes it over, clears what the killed one left unfinished, and copies the rest. Every source
    once in the end."""
    from tfguess.core.locks import LOCK_FILENAME

    src, dst = tmp_path / "src", tmp_path / "sorted"
    src.mkdir()
    for p in sorted(big_photos.iterdir())[:96]:
        os.link(p, src / p.name)
    sources = {p: _sha(p) for p in sorted(src.iterdir())}
    args = ["guess-dir", str(demo_trained), str(src), str(dst), "--batch-size", "8"]
    manifest = dst / "manifest.csv"
    runs = [_run(args), _run(args)]
    deadline = time.monotonic() + 120
    while (not manifest.exists() or manifest.read_text().count("\n") < 3) and \
            all(r.poll() is None for r in runs) and time.monotonic() < deadline:
        time.sleep(0.01)
    holder = int((dst / LOCK_FILENAME).read_text().split()[0])
    first = next(r for r in runs if r.pid == holder)
    second = next(r for r in runs if r.pid != holder)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    recorded = manifest.read_text().count("\n") - 1
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0 and "Traceback" not in err, err
    assert out.startswith(f"another guess-dir is writing into {dst} (pid {holder}); waiting")
    assert 0 < recorded < len(sources), "the kill did not land in the middle of the copies"
    assert f"{recorded} image(s) already copied" in out
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["source"] for r in rows) == sorted(str(p) for p in sources)
    files = sorted(p for p in dst.iterdir() if p.name != "manifest.csv")
    assert sorted(r["destination"] for r in rows) == sorted(str(p) for p in files)
    for r in rows:
        assert _sha(Path(r["destination"])) == r["sha256"] == sources[Path(r["source"])]
