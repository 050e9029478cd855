"""Bottleneck extraction on Ray against the single-process engine, in the same run: one table.

Usage: PYTHONPATH=src .venv/bin/python bench/ray_scale.py [--dataset DIR] [--limit N] [--json OUT]

Every configuration extracts the same images into a fresh cache (nothing cached):
  local-1   the single-process path (bottlenecks.compute_features), 1 decoding thread, 1 interpreter
  local-2   the same with 2 threads and 2 interpreters (the default on 2 cores)
  ray-1     distributed.compute_features_ray on a local Ray instance, 1 actor
  ray-2     the same with 2 actors (one per CPU)
Ray's per-job start-up (actor processes importing tfguess and building the engine) is measured
with a 4-image job and reported apart; "steady img/s" excludes it: (N - 4) / (t_N - t_4).
"CPU ms/img" is the CPU time of the driver plus, for Ray, of the actor processes (sampled from
/proc), per image: the other load of a shared machine changes it much less than the wall time.
Ray's overhead per image = steady ms/img of ray-k minus ms/img of local-k.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "hymenoptera" / "train"


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class ActorCPU:
    """CPU seconds of the ImageActor processes, sampled while a job runs."""

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK")

    def _sample(self) -> None:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if b"ImageActor" not in (proc / "cmdline").read_bytes():
                    continue
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                cpu = (int(fields[11]) + int(fields[12])) / self._tick
            except (OSError, IndexError, ValueError):
                continue
            self.seen[int(proc.name)] = max(cpu, self.seen.get(int(proc.name), 0.0))

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            self._sample()

    def __enter__(self):
        self._sample()
        self.base = dict(self.seen)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def seconds(self) -> float:
        return sum(v - self.base.get(pid, 0.0) for pid, v in self.seen.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=240, help="images per configuration")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    import ray

    from tfguess.backbones import get_backbone
    from tfguess.bottlenecks import BottleneckCache, compute_features
    from tfguess.dataset import scan_dataset
    from tfguess.distributed import compute_features_ray
    from tfguess.features import BackboneRef, make_extractor
    from tfguess.runtime import TFLiteEngine

    spec = get_backbone("efficientnet_lite0")
    ref = BackboneRef(spec.name, spec.weights_id(None), spec.input_size, spec.resize)
    make_extractor(ref, spec.build, "tflite", log=lambda *_: None)  # the engine file exists
    scan = scan_dataset(args.dataset, min_per_label=1, decode_check=False, progress=False)
    items = [(it.path, it.digest) for it in scan.items][: args.limit]
    n = len(items)
    work = Path(tempfile.mkdtemp(prefix="tfguess-ray-bench-"))
    rows = []

    def fresh(name: str) -> BottleneckCache:
        return BottleneckCache(work / name, ref.cache_key)

    for k in (1, 2):
        cpu, t = _self_cpu(), time.perf_counter()
        res = compute_features(items, fresh(f"local{k}"), lambda k=k: TFLiteEngine(ref.engine_file, k),
                               ref.input_size, ref.resize, workers=k, progress=False)
        wall, cpu = time.perf_counter() - t, _self_cpu() - cpu
        assert res.computed == n
        rows.append({"config": f"local-{k}", "images": n, "wall_s": wall, "img_s": n / wall,
                     "steady_img_s": n / wall, "startup_s": 0.0, "cpu_ms_img": 1000 * cpu / n})

    t = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray_init_s = time.perf_counter() - t
    quiet = {"progress": False, "log": lambda *_: None}
    for k in (1, 2):
        t = time.perf_counter()
        compute_features_ray(items[:4], fresh(f"ray{k}-warm"), ref, spec.build, workers=k, **quiet)
        t4 = time.perf_counter() - t
        cpu = _self_cpu()
        with ActorCPU() as actors:
            t = time.perf_counter()
            res = compute_features_ray(items, fresh(f"ray{k}"), ref, spec.build, workers=k,
                                       **quiet)
            wall = time.perf_counter() - t
        cpu = _self_cpu() - cpu + actors.seconds
        assert res.computed == n
        rows.append({"config": f"ray-{k}", "images": n, "wall_s": wall, "img_s": n / wall,
                     "steady_img_s": (n - 4) / max(wall - t4, 1e-9), "startup_s": t4,
                     "cpu_ms_img": 1000 * cpu / n})
    ray.shutdown()
    shutil.rmtree(work)

    for k in (1, 2):
        local = next(r for r in rows if r["config"] == f"local-{k}")
        remote = next(r for r in rows if r["config"] == f"ray-{k}")
        remote["overhead_ms_img"] = 1000 / remote["steady_img_s"] - 1000 / local["img_s"]
    load = os.getloadavg()
    print(f"{n} images from {args.dataset}; {os.cpu_count()} CPUs; ray.init {ray_init_s:.1f} s; "
          f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(f"{'config':8} {'wall s':>7} {'img/s':>7} {'steady img/s':>13} {'start-up s':>11} "
          f"{'CPU ms/img':>11} {'Ray overhead ms/img':>20}")
    for r in rows:
        over = f"{r['overhead_ms_img']:.1f}" if "overhead_ms_img" in r else "-"
        print(f"{r['config']:8} {r['wall_s']:7.1f} {r['img_s']:7.1f} {r['steady_img_s']:13.1f} "
              f"{r['startup_s']:11.1f} {r['cpu_ms_img']:11.1f} {over:>20}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "ray_init_s": ray_init_s,
                                         "loadavg": load}, indent=2))


if __name__ == "__main__":
    main()
