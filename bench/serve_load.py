"""Load test of ``tfguess serve`` on loopback, compared with ``guess-dir`` on the same images.

    python bench/serve_load.py [TF_FILES] [IMAGES] [--requests 1000] [--concurrency 1 4 16]

Starts a real server process on a free loopback port, sends REQUESTS single-image predict
requests at each concurrency (one keep-alive client a thread), and prints images/s, p50/p99
latency, errors, the server's RSS before and after, and checks that ``/metrics`` counted every
request sent; then times ``guess-dir`` on the same images. The CPU's instruction sets are
printed beside the figures. Stops by itself. Defaults: the hymenoptera data set in ../shared/datasets (a model is
trained on its train/ folder into bench/work/ when TF_FILES is not given) and its val/ images.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
HYMENOPTERA = REPO.parent / "shared" / "datasets" / "hymenoptera"
sys.path.insert(0, str(REPO / "src"))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def predict_count(base: str) -> float:
    """``POST /api/predict`` answers counted by the server's ``/metrics`` (every status)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(base + "/metrics", timeout=30).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "tfguess_http_requests_total" and s.labels.get("route") == "/api/predict"
               and s.labels.get("method") == "POST")


def cpu_flags() -> str:
    """The CPU and the instruction sets that change the figures (int8 and float throughput)."""
    model, flags = "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    shown = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{model}; {os.cpu_count()} CPUs; {' '.join(shown) or 'no AVX2'}"


def load(url: str, payloads: list[tuple[str, bytes]], requests: int, clients: int) -> dict:
    latencies: list[float] = []
    codes: dict[int, int] = {}
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                name, data = payloads[i % len(payloads)]
                t = time.perf_counter()
                try:
                    status = http.post(url, files=[("files", (name, data, "image/jpeg"))]).status_code
                except httpx.HTTPError:
                    status = -1
                dt = time.perf_counter() - t
                with lock:
                    latencies.append(dt)
                    codes[status] = codes.get(status, 0) + 1

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    return {"clients": clients, "requests": requests, "seconds": round(wall, 2),
            "images_per_s": round(requests / wall, 1), "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "errors": sum(n for c, n in codes.items() if c != 200), "codes": codes}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tf_files", nargs="?")
    ap.add_argument("images", nargs="?")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "serve_load.json"))
    args = ap.parse_args()

    images = Path(args.images) if args.images else HYMENOPTERA / "val"
    if args.tf_files:
        tf_files = Path(args.tf_files)
    else:
        tf_files = REPO / "bench" / "work" / "serve-hymenoptera"
        if not (tf_files / "model.keras").exists():
            from tfguess.core.config import TrainConfig
            from tfguess.training.train import train

            print(f"training {tf_files} on {HYMENOPTERA / 'train'} (once)", flush=True)
            train(tf_files, TrainConfig(image_dir=str(HYMENOPTERA / "train"), report=False),
                  progress=False, log=lambda *_: None)
    from tfguess.data.images import IMAGE_EXTENSIONS

    paths = sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    payloads = [(p.name, p.read_bytes()) for p in paths]
    print(f"{len(paths)} images from {images}; model {tf_files}", flush=True)

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    server = subprocess.Popen([sys.executable, "-m", "tfguess", "-q", "serve", str(tf_files),
                               "--port", str(port)], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.3)
        # warm-up at the highest concurrency: interpreters, threads and buffers all created
        load(base + "/api/predict", payloads, 200, max(args.concurrency))
        rss_before = rss_mb(server.pid)
        runs = []
        for c in args.concurrency:
            counted, rss = predict_count(base), rss_mb(server.pid)
            runs.append(load(base + "/api/predict", payloads, args.requests, c))
            runs[-1]["server_rss_mb_before"] = round(rss, 1)
            runs[-1]["server_rss_mb"] = round(rss_mb(server.pid), 1)
            runs[-1]["metrics_counted"] = int(predict_count(base) - counted)
        rss_after = rss_mb(server.pid)
        health = httpx.get(base + "/healthz").json()
    finally:
        server.terminate()
        server.wait(30)

    from tfguess.guess.predict import guess_dir

    with tempfile.TemporaryDirectory() as dst:
        gd = guess_dir(tf_files, images, Path(dst) / "out", recursive=True, progress=False,
                       log=lambda *_: None)
    result = {
        "images": str(images), "n_images": len(paths), "runs": runs,
        "server_rss_mb": {"before": round(rss_before, 1), "after": round(rss_after, 1),
                          "growth": round(rss_after / rss_before - 1, 4)},
        "mean_batch": round(health["images"] / max(health["batches"], 1), 2),
        "guess_dir_images_per_s": round(gd.images_per_second, 1), "cpus": os.cpu_count(),
    }
    result["cpu"] = cpu_flags()
    print(f"\nmachine: {result['cpu']}; load average {os.getloadavg()[0]:.1f}")
    print("\n| clients | requests | images/s | p50 ms | p99 ms | errors | /metrics counted | "
          "server RSS before, MB | after, MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['clients']} | {r['requests']} | {r['images_per_s']} | {r['p50_ms']} | "
              f"{r['p99_ms']} | {r['errors']} | {r['metrics_counted']} | "
              f"{r['server_rss_mb_before']} | {r['server_rss_mb']} |")
    rss = result["server_rss_mb"]
    print(f"\nserver RSS: {rss['before']} MB before, {rss['after']} MB after "
          f"({100 * rss['growth']:+.1f} %); mean network batch {result['mean_batch']} images "
          f"(all runs, warm-up included); RSS 'before' is taken after a warm-up of 200 requests "
          f"at {max(args.concurrency)} clients")
    print(f"guess-dir on the same {len(paths)} images: {result['guess_dir_images_per_s']} images/s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    counted = all(r["metrics_counted"] == r["requests"] for r in runs)
    print("/metrics counted every request sent" if counted else
          "FAILED: /metrics counts differ from the requests sent")
    ok = all(r["errors"] == 0 for r in runs) and rss["growth"] < 0.10 and counted
    print("OK" if ok else "FAILED: errors, RSS growth of 10 % or more, or /metrics miscounted")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
