"""Bottleneck extraction on Ray against the single-process engine, in the same run: one table.

Usage: PYTHONPATH=src .venv/bin/python bench/ray_scale.py [--dataset DIR] [--limit N] [--json OUT]

Every configuration extracts the same images into a fresh cache (nothing cached):
  local-1   the single-process path (bottlenecks.compute_features), 1 decoding thread, 1 interpreter
  local-2   the same with 2 threads and 2 interpreters (the default on 2 cores)
  ray-1     distributed.compute_features_ray on a local Ray instance, 1 actor
  ray-2     the same with 2 actors (one per CPU)
Ray starts its actors (processes importing tfguess and building the engine) for every job:
"start-up s" is the time to the first finished batch, and "steady img/s" the rate after it
(images of the later batches / time from the first batch to the last).
"CPU ms/img" is the CPU time of the driver plus, for Ray, of the actor processes (sampled from
/proc; Ray's other processes are printed apart), per image: the other load of a shared machine changes it much less than the wall time.
For Ray it is given with the actors' start-up ("CPU ms/img") and without it ("steady CPU
ms/img" = (CPU of the N-image job - CPU of a 4-image job) / (N - 4)).
Ray's overhead per image = steady CPU ms/img of ray-k minus CPU ms/img of local-k.
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
    """CPU seconds of the ImageActor processes (``seconds``) and of Ray's other processes
    (``others``: raylet, GCS, idle workers; not the driver), sampled while a job runs."""

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}
        self.actors: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK")

    def _sample(self) -> None:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes()
                if b"ray" not in cmdline or int(proc.name) == os.getpid():
                    continue
                if b"ImageActor" in cmdline:
                    self.actors.add(int(proc.name))
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
        return sum(v - self.base.get(pid, 0.0) for pid, v in self.seen.items() if pid in self.actors)

    @property
    def others(self) -> float:
        return sum(v - self.base.get(pid, 0.0) for pid, v in self.seen.items()
                   if pid not in self.actors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=240, help="images per configuration")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    import ray

    from tfguess.data.dataset import scan_dataset
    from tfguess.engine.backbones import get_backbone
    from tfguess.engine.bottlenecks import BottleneckCache, compute_features
    from tfguess.engine.features import BackboneRef, make_extractor
    from tfguess.engine.runtime import TFLiteEngine
    from tfguess.guess.distributed import compute_features_ray

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
    def ray_job(k: int, job: list, name: str):
        marks: list[tuple[float, int]] = []
        cpu = _self_cpu()
        with ActorCPU() as actors:
            t = time.perf_counter()
            res = compute_features_ray(job, fresh(name), ref, spec.build, workers=k,
                                       on_batch=lambda done: marks.append((time.perf_counter(), done)),
                                       **quiet)
            wall = time.perf_counter() - t
        assert res.computed == len(job)
        driver = _self_cpu() - cpu
        parts = {"driver": driver, "actors": actors.seconds, "ray_other": actors.others}
        return wall, driver + actors.seconds, [(m - t, done) for m, done in marks], parts

    for k in (1, 2):
        _, cpu4, _, parts4 = ray_job(k, items[:4], f"ray{k}-small")
        wall, cpu, marks, parts = ray_job(k, items, f"ray{k}")
        (t_first, n_first), (t_last, n_last) = marks[0], marks[-1]
        steady = (n_last - n_first) / (t_last - t_first) if t_last > t_first else float("nan")
        rows.append({"config": f"ray-{k}", "images": n, "wall_s": wall, "img_s": n / wall,
                     "steady_img_s": steady, "startup_s": t_first, "cpu_ms_img": 1000 * cpu / n,
                     "steady_cpu_ms_img": 1000 * (cpu - cpu4) / (n - 4),
                     "cpu_s": {"job": parts, "4-image job": parts4}})
    ray.shutdown()
    shutil.rmtree(work)

    for k in (1, 2):
        local = next(r for r in rows if r["config"] == f"local-{k}")
        remote = next(r for r in rows if r["config"] == f"ray-{k}")
        remote["overhead_ms_img"] = remote["steady_cpu_ms_img"] - local["cpu_ms_img"]
    load = os.getloadavg()
    print(f"{n} images from {args.dataset}; {os.cpu_count()} CPUs; ray.init {ray_init_s:.1f} s; "
          f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print("| config | wall s | img/s | start-up s | steady img/s | CPU ms/img | steady CPU ms/img "
          "| Ray overhead CPU ms/img |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        steady_cpu = r.get("steady_cpu_ms_img", r["cpu_ms_img"])
        over = f"{r['overhead_ms_img']:.1f}" if "overhead_ms_img" in r else "-"
        print(f"| {r['config']} | {r['wall_s']:.1f} | {r['img_s']:.1f} | {r['startup_s']:.1f} | "
              f"{r['steady_img_s']:.1f} | {r['cpu_ms_img']:.1f} | {steady_cpu:.1f} | {over} |")
    for r in rows:
        if "cpu_s" in r:
            print(f"{r['config']} CPU s (driver, actors, Ray's other processes): " + "; ".join(
                f"{job}: " + ", ".join(f"{v:.1f}" for v in p.values())
                for job, p in r["cpu_s"].items()))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "ray_init_s": ray_init_s,
                                         "loadavg": load}, indent=2))


if __name__ == "__main__":
    main()
