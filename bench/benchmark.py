"""Speed of tfguess on this machine, against the naive Keras recipe in the same run: prints one table.

Usage: .venv/bin/python bench/benchmark.py [--quick] [--only PARTS] [--repeat N] [--dataset DIR]

PARTS (comma-separated): extract, retrain, guessdir, guess, rss, finetune, decode, auto (default:
all). decode: where the decoding and resizing time of a web-sized image goes, and the squash's
bilinear resize before / after its rewrite; auto: what ``--precision auto`` picks on this CPU,
guess-dir with it against float32 and the naive loop, one invoke of each engine. Working sets are
made once under bench/work/ (git-ignored) from ../shared/datasets/hymenoptera:
  web    the data set as is (398 files, typically 500x375 JPEGs, one placeholder GIF);
  phone  JPEGs re-encoded at 4000x3000 (upscaled, with sensor-like noise so that they weigh
         about as much as phone photos);
  1000   1,000 distinct images for the retrain test (the originals, plus mirrored and slightly
         cropped re-encodings).
Throughput is wall-clock images/s; "CPU ms/img" is the process's CPU time (all threads) per
image, which the other load of a shared machine changes much less than the wall time.
The "ceiling" rows time the two halves of extraction apart, on one thread: decoding and resizing
an image as tfguess does, and one ``invoke`` of the float32 and int8 engines; no pipeline can do
better than every core spending that sum on each image.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / "work"
DATASET = REPO.parent / "shared" / "datasets" / "hymenoptera"
BACKBONE = "efficientnet_lite0"
SIZE = 224
PARTS = ("extract", "retrain", "guessdir", "guess", "rss", "finetune", "decode", "auto")
FINETUNE_SET = REPO.parent / "shared" / "datasets" / "cub_songbirds22" / "train"


def quiet(*_args, **_kwargs) -> None:
    pass


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from tfguess.data.pipeline import default_workers

    return f"{model}, {default_workers()} cores, load average {os.getloadavg()[0]:.1f}"


# --- working sets -------------------------------------------------------------------------------


def web_set(dataset: Path) -> list[Path]:
    return sorted(p for p in dataset.rglob("*") if p.is_file())


@functools.cache
def default_resize(dataset: Path) -> str:
    """What ``--resize auto`` picks for the data set's photos: how a model trained on them, and
    so every extraction row here, makes a photo square."""
    from tfguess.data.images import auto_resize_of

    return auto_resize_of(web_set(dataset))[0]


def _jpegs(dataset: Path) -> list[Path]:
    ants = sorted(dataset.rglob("ants/*.jpg"))
    bees = sorted(dataset.rglob("bees/*.jpg"))
    mixed = [p for pair in zip(ants, bees) for p in pair]
    return mixed + ants[len(bees):] + bees[len(ants):]


def phone_set(dataset: Path, n: int) -> list[Path]:
    """``n`` phone-sized JPEGs (4000x3000 or 3000x4000), made once."""
    folder = WORK / "phone"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i, src in enumerate(_jpegs(dataset)[:n]):
        path = folder / f"{i:04d}.jpg"
        if not path.exists():
            im = Image.open(src).convert("RGB")
            size = (4000, 3000) if im.width >= im.height else (3000, 4000)
            big = np.asarray(im.resize(size, Image.Resampling.BICUBIC), np.int16)
            big = big + rng.normal(0, 6, (size[1], size[0], 1)).astype(np.int16)
            Image.fromarray(np.clip(big, 0, 255).astype(np.uint8)).save(path, quality=92)
        out.append(path)
    return out


def retrain_set(dataset: Path, n: int = 1000) -> Path:
    """``n`` distinct labelled images in bench/work/retrain/data/<label>/, made once."""
    root = WORK / "retrain" / "data"
    done = root / ".complete"
    if done.exists() and int(done.read_text()) == n:
        return root
    shutil.rmtree(root, ignore_errors=True)
    sources = _jpegs(dataset)
    count = 0
    for variant in range(3):
        for src in sources:
            if count == n:
                break
            label = src.parent.name
            (root / label).mkdir(parents=True, exist_ok=True)
            dst = root / label / f"{src.stem}-{variant}.jpg"
            if variant == 0:
                shutil.copyfile(src, dst)
            else:
                im = Image.open(src).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                if variant == 2:
                    w, h = im.size
                    im = im.crop((w // 20, h // 20, w - w // 20, h - h // 20))
                im.save(dst, quality=90)
            count += 1
    done.write_text(str(n))
    return root


# --- bottleneck extraction ----------------------------------------------------------------------


def digests(paths: list[Path], salt: str = "") -> list[tuple[Path, str]]:
    return [(p, hashlib.sha256(salt.encode() + p.read_bytes()).hexdigest()) for p in paths]


def extract(items: list[tuple[Path, str]], backbone, key, engine: str, resize: str) -> dict:
    """Bottleneck extraction with tfguess into an empty cache (the engine's TFLite file cached)."""
    from tfguess.engine.bottlenecks import BottleneckCache, compute_features
    from tfguess.engine.features import make_extractor

    root = Path(tempfile.mkdtemp(dir=WORK, prefix="cache-"))
    try:
        cache = BottleneckCache(root, "bench")
        c = cpu_seconds()
        result = compute_features(
            items, cache, lambda: make_extractor(key, lambda: backbone, engine, quiet), SIZE, resize,
            progress=False,
        )
        cpu = cpu_seconds() - c
    finally:
        shutil.rmtree(root)
    n = len(items)
    return {"ips": n / result.seconds, "cpu_ms": 1000 * cpu / n, "skipped": len(result.skipped)}


def naive(paths: list[Path], model, batch_size: int = 32) -> dict:
    """The tutorial recipe: each image decoded at full size by PIL, resized, model.predict a batch."""
    start, c = time.perf_counter(), cpu_seconds()
    batch: list[np.ndarray] = []
    n_feats = 0

    def flush() -> int:
        if not batch:
            return 0
        feats = model.predict(np.stack(batch).astype(np.float32), batch_size=batch_size, verbose=0)
        batch.clear()
        return len(feats)

    for path in paths:
        try:
            im = Image.open(path).convert("RGB")
        except OSError:
            continue
        w, h = im.size
        side = min(w, h) * 0.875  # the same central crop as tfguess
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        batch.append(np.asarray(im.resize((SIZE, SIZE), Image.Resampling.BICUBIC, box=box)))
        if len(batch) == batch_size:
            n_feats += flush()
    n_feats += flush()
    seconds = time.perf_counter() - start
    return {"ips": len(paths) / seconds, "cpu_ms": 1000 * (cpu_seconds() - c) / len(paths)}


def int8_ref(key, paths: list[Path], resize: str):
    """The int8 engine of ``key`` calibrated on the web set as training would (the 100 smallest
    content digests), converted once and cached."""
    import dataclasses

    from tfguess.data.images import load_image
    from tfguess.engine.features import calibration_digest, choose_calibration

    by_digest = {d: p for p, d in digests(paths)}
    chosen = choose_calibration(list(by_digest))
    ref = dataclasses.replace(key, precision="int8", calibration=calibration_digest(chosen))

    def calibration():
        for d in chosen:
            try:
                yield load_image(by_digest[d], SIZE, resize, reject_placeholders=True)
            except Exception:  # noqa: BLE001 - as in training: unusable images are left out
                continue

    return ref, calibration


def invoke_ms(tflite: Path, seconds: float = 3.0) -> float:
    """One thread's time per image for the engine's ``invoke`` alone (no decoding)."""
    from tfguess.engine.runtime import new_interpreter

    interpreter = new_interpreter(model_path=str(tflite), num_threads=1)
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]
    x = np.random.default_rng(0).uniform(0, 255, (1, SIZE, SIZE, 3)).astype(np.float32)
    interpreter.set_tensor(index, x)
    interpreter.invoke()  # warm-up
    best = float("inf")
    for _ in range(3):  # the least disturbed of three rounds
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            interpreter.set_tensor(index, x)
            interpreter.invoke()
            n += 1
        best = min(best, 1000 * (time.perf_counter() - start) / n)
    return best


def decode_ms(paths: list[Path], resize: str) -> float:
    """One thread's CPU time per image for decoding and resizing as tfguess does (no inference)."""
    from tfguess.data.images import load_image

    start, n = time.process_time(), 0
    for path in paths:
        try:
            load_image(path, SIZE, resize)
            n += 1
        except Exception:  # noqa: BLE001 - the placeholder GIF and the like: not counted
            continue
    return 1000 * (time.process_time() - start) / max(1, n)


def bench_extraction(dataset: Path, quick: bool, repeat: int) -> dict:
    from tfguess.engine.backbones import get_backbone
    from tfguess.engine.features import BackboneRef, make_extractor

    spec = get_backbone(BACKBONE)
    backbone = spec.build()
    key = BackboneRef(spec.name, spec.weights_id(), spec.input_size, spec.resize)
    t = time.perf_counter()
    make_extractor(key, lambda: backbone, "tflite", quiet)  # converts once when not cached
    convert_s = time.perf_counter() - t
    resize = default_resize(dataset)
    key8, calibration = int8_ref(key, web_set(dataset), resize)
    t = time.perf_counter()
    make_extractor(key8, lambda: backbone, "tflite", quiet, calibration)
    convert8_s = time.perf_counter() - t
    sets = {"web": web_set(dataset), "phone": phone_set(dataset, 32 if quick else 120)}
    runs: dict[tuple[str, str], list[dict]] = {}
    for _ in range(repeat):  # interleaved, so that a change in the machine's load hits all rows
        for name, paths in sets.items():
            items = digests(paths)
            for row in ("tflite", "int8", "keras", "naive"):
                if row == "keras" and (quick or name == "phone"):
                    continue
                if row == "naive":
                    r = naive(paths, backbone)
                elif row == "int8":
                    r = extract(items, backbone, key8, "tflite", resize)
                else:
                    r = extract(items, backbone, key, row, resize)
                runs.setdefault((name, row), []).append(r)
    # What the cores allow at best: each image's decoding plus one invoke, on every core at once.
    ceiling = {"invoke": {"float32": invoke_ms(key.engine_file), "int8": invoke_ms(key8.engine_file)},
               "decode": {name: decode_ms(paths, resize) for name, paths in sets.items()}}
    return {"runs": runs, "n": {k: len(v) for k, v in sets.items()}, "convert_s": convert_s,
            "convert8_s": convert8_s, "ceiling": ceiling}


# --- retrain, guess-dir, guess.sh ---------------------------------------------------------------


def _tfguess_train(tf_files: Path, data: Path, precision: str, importtime: bool = False) -> dict:
    """``tfguess train`` as a new process (report included): wall and CPU seconds, and the
    TensorFlow modules it imported (with ``importtime``)."""
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "tfguess.cli", "-q",
           "train", str(tf_files), "--image-dir", str(data), "--precision", precision]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"tfguess train failed:\n{proc.stderr[-3000:]}")
    tf_modules = [line for line in proc.stderr.splitlines()
                  if line.startswith("import time:") and line.split("|")[-1].strip().split(".")[0]
                  in ("tensorflow", "keras")]
    summary = json.loads((tf_files / "run_summary.json").read_text())
    return {"seconds": seconds, "cpu": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
            "computed": summary["features"]["computed"], "tf_modules": len(tf_modules) if importtime else None,
            **summary["timings_s"]}


def bench_retrain(dataset: Path, precision: str = "float32") -> dict:
    """``tfguess train`` on 1,000 images as a whole process, twice: cold (empty bottleneck cache;
    the engine file cached, as after the first run on a machine) and warm (every feature cached)."""
    data = retrain_set(dataset)
    tf_files = WORK / f"retrain-{precision}" / "tf_files"
    if tf_files.exists():
        shutil.rmtree(tf_files)
    tf_files.mkdir(parents=True)
    out = {"cold": _tfguess_train(tf_files, data, precision)}
    out["warm"] = _tfguess_train(tf_files, data, precision, importtime=True)
    out["tf_files"] = tf_files
    return out


def trained_model(dataset: Path, precision: str = "float32") -> Path:
    tf_files = WORK / f"retrain-{precision}" / "tf_files"
    if not (tf_files / "model.keras").exists():
        bench_retrain(dataset, precision)
    return tf_files


def bench_guess_dir(dataset: Path, repeat: int) -> dict:
    """guess-dir with a float32 and an int8 model, and the naive Keras loop, interleaved."""
    from tfguess.engine.backbones import get_backbone
    from tfguess.guess.predict import guess_dir

    models = {p: trained_model(dataset, p) for p in ("float32", "int8")}
    backbone = get_backbone(BACKBONE).build()
    paths = web_set(dataset)
    out: dict = {p: {"rates": [], "totals": []} for p in models}
    out["naive"] = []
    for _ in range(repeat):
        out["naive"].append(naive(paths, backbone)["ips"])
        for precision, model in models.items():
            dst = Path(tempfile.mkdtemp(dir=WORK, prefix="guessdir-")) / "out"
            try:
                start = time.perf_counter()
                result = guess_dir(model, dataset, dst, recursive=True, progress=False, log=quiet)
                out[precision]["totals"].append(time.perf_counter() - start)
                out[precision]["rates"].append(result.images_per_second)
            finally:
                shutil.rmtree(dst.parent)
    return {**{p: {"ips": statistics.median(v["rates"]), "total_s": statistics.median(v["totals"])}
               for p, v in out.items() if p != "naive"},
            "naive": statistics.median(out["naive"]), "n": len(result.copied) + len(result.skipped)}


def bench_guess_sh(dataset: Path, repeat: int) -> dict:
    model = trained_model(dataset)
    image = _jpegs(dataset)[0]
    env = {**os.environ, "TFGUESS_LOCAL": "1", "TFGUESS_VENV": str(REPO / ".venv")}
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run(["bash", str(REPO / "guess.sh"), str(model), str(image)], env=env,
                              capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0 or "score" not in proc.stdout:
            raise RuntimeError(f"guess.sh failed: {proc.stdout}{proc.stderr}")
    return {"seconds": statistics.median(times), "all": times}


# --- peak memory --------------------------------------------------------------------------------


def rss_child(n: int, dataset: Path) -> None:
    """Extract ``n`` images (the web set repeated, each copy under its own cache entry) and print
    the peak RSS before and after, as JSON. Runs in its own process."""
    from tfguess.engine.backbones import get_backbone
    from tfguess.engine.bottlenecks import BottleneckCache, compute_features
    from tfguess.engine.features import BackboneRef, make_extractor

    spec = get_backbone(BACKBONE)
    backbone = spec.build()
    key = BackboneRef(spec.name, spec.weights_id(), spec.input_size, spec.resize)
    paths = web_set(dataset)
    items = []
    for i in range(n):
        path = paths[i % len(paths)]
        items.append((path, hashlib.sha256(f"{i}:{path}".encode()).hexdigest()))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Reset the peak ("VmHWM") so that the peak of the extraction itself can be read afterwards.
    reset = Path("/proc/self/clear_refs")
    try:
        reset.write_text("5")
    except OSError:
        pass
    root = Path(tempfile.mkdtemp(dir=WORK, prefix="rss-"))
    try:
        result = compute_features(
            items, BottleneckCache(root, "bench"), lambda: make_extractor(key, lambda: backbone, "auto", quiet),
            SIZE, default_resize(dataset), progress=False,
        )
    finally:
        shutil.rmtree(root)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hwm = _status_kb("VmHWM")
    print(json.dumps({"n": n, "before_mb": before / 1024, "peak_mb": peak / 1024,
                      "extract_peak_mb": hwm / 1024 if hwm else None, "ips": n / result.seconds}))


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def bench_rss(sizes: tuple[int, int], dataset: Path) -> dict:
    out = {}
    for n in sizes:
        proc = subprocess.run([sys.executable, __file__, "--rss-child", str(n), "--dataset", str(dataset)], capture_output=True,
                              text=True, cwd=REPO)
        if proc.returncode != 0:
            raise RuntimeError(f"the {n}-image memory run failed:\n{proc.stderr[-3000:]}")
        out[n] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


# --- int8 where the CPU has int8 dot products; decoding and resizing ----------------------------


def cpu_flags_text() -> str:
    """The CPU flags that decide the int8 and bf16 speed, present and absent, and what
    ``--precision auto`` picks here."""
    from tfguess.engine.runtime import SPEED_FLAGS, auto_precision, cpu_flags

    flags = cpu_flags()
    have = [f for f in SPEED_FLAGS if f in flags]
    lack = [f for f in SPEED_FLAGS if f not in flags]
    decision = auto_precision()
    return (f"{' '.join(have) or 'none of the listed'} (not: {' '.join(lack) or '-'}); "
            f"--precision auto: {decision['precision']} for guessing ({decision['reason']})")


def _stage_ms(fn, items, repeat: int = 3) -> float:
    """One thread's CPU ms per item for ``fn(item)``: the least disturbed of ``repeat`` passes."""
    best = float("inf")
    for _ in range(repeat):
        start = time.thread_time()
        for item in items:
            fn(item)
        best = min(best, time.thread_time() - start)
    return 1000 * best / len(items)


def _plain_squash_bilinear(pixels: np.ndarray, size: int) -> np.ndarray:
    """The squash's bilinear formula as it was written before (int32 over the whole image)."""
    from tfguess.data.images import SUBPIXEL, _bilinear_axis

    h, w = pixels.shape[:2]
    x0, x1, fx = _bilinear_axis(w, size)
    y0, y1, fy = _bilinear_axis(h, size)
    a = pixels.astype(np.int32)
    fx, fy = fx[None, :, None], fy[:, None, None]
    top = a[y0][:, x0] * (SUBPIXEL - fx) + a[y0][:, x1] * fx
    bottom = a[y1][:, x0] * (SUBPIXEL - fx) + a[y1][:, x1] * fx
    half = SUBPIXEL * SUBPIXEL // 2
    return ((top * (SUBPIXEL - fy) + bottom * fy + half) // (2 * half)).astype(np.uint8)


def bench_decode(dataset: Path) -> dict:
    """Where ``load_image``'s time goes on the web-sized JPEGs (CPU ms an image, one thread):
    reading the header, the JPEG decode (Pillow; simplejpeg), EXIF and colour conversion, the
    resize of the backbone's recipe; and the squash's bilinear resize (the path of images at most
    2x the input size, and of the centre squares the crop / pad modes make) before / after."""
    import io

    from PIL import ImageOps

    from tfguess.data import images

    resize = default_resize(dataset)
    paths = _jpegs(dataset)
    datas = [p.read_bytes() for p in paths]
    sizes = [Image.open(io.BytesIO(d)).size for d in datas]
    bilinear = sum(images.squash_is_bilinear(w, h, SIZE) for w, h in sizes)

    def decoded(d):
        im = Image.open(io.BytesIO(d))
        im.load()
        return im

    def exif_rgb(d):
        im = decoded(d)
        ImageOps.exif_transpose(im, in_place=True)
        return im.convert("RGB")

    out = {"n": len(paths), "recipe": resize, "bilinear_share": bilinear / len(paths),
           "median_size": tuple(int(statistics.median(s[i] for s in sizes)) for i in (0, 1))}
    out["header"] = _stage_ms(lambda d: Image.open(io.BytesIO(d)), datas)
    out["decode_pillow"] = _stage_ms(decoded, datas)
    if images._simplejpeg is not None:
        def simple(d):
            try:
                return images._simplejpeg.decode_jpeg(d, colorspace="RGB")
            except ValueError:  # a JPEG it declines: Pillow then decodes it
                return decoded(d)

        out["decode_simplejpeg"] = _stage_ms(simple, datas)
    out["exif_rgb"] = max(0.0, _stage_ms(exif_rgb, datas) - out["decode_pillow"])
    out["load_image"] = _stage_ms(lambda d: images.load_image("x.jpg", SIZE, resize, data=d), datas)
    out["decode_used"] = out.get("decode_simplejpeg", out["decode_pillow"])
    out["resize"] = max(0.0, out["load_image"] - out["decode_used"] - out["exif_rgb"])

    def before(d):
        """Preprocessing version 3: Pillow's decode, bicubic for reductions beyond 2x."""
        im = exif_rgb(d)
        if resize == "squash" and images.squash_is_bilinear(*im.size, SIZE):
            return images.squash_bilinear(np.asarray(im), SIZE)
        box = images.crop_box(*im.size, SIZE) if resize == "crop" else None
        return np.array(im.resize((SIZE, SIZE), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0))

    out["load_before"] = _stage_ms(before, datas)
    squares = []
    for d in datas[:120]:
        a = np.asarray(images.decode_image("x.jpg", data=d, draft_size=SIZE))
        side = min(a.shape[:2])
        squares.append(a[:side, :side])
    out["squash_before"] = _stage_ms(lambda a: _plain_squash_bilinear(a, SIZE), squares)
    out["squash_after"] = _stage_ms(lambda a: images.squash_bilinear(a, SIZE), squares)
    out["squash_same"] = all(np.array_equal(_plain_squash_bilinear(a, SIZE), images.squash_bilinear(a, SIZE))
                             for a in squares)
    return out


def _auto_model(dataset: Path) -> Path:
    """A model trained with ``--precision auto`` on the data set's train/ (made once): float32
    features, and the int8 engine guessing runs where the CPU has int8 dot products."""
    from tfguess.core.config import TrainConfig
    from tfguess.training.train import train

    tf_files = WORK / "auto" / "tf_files"
    if not (tf_files / "model.keras").exists():
        data = dataset / "train" if (dataset / "train").is_dir() else dataset
        train(tf_files, TrainConfig(image_dir=str(data), report=False, views=0, precision="auto",
                                       resize="squash"),
              progress=False, log=quiet)
    return tf_files


def bench_auto(dataset: Path, repeat: int) -> dict:
    """guess-dir on the web-sized set with one ``--precision auto`` model, run as auto picks here
    and forced to float32, against the naive Keras loop (interleaved); the top-1 agreement of the
    two; and one invoke of each engine."""
    import csv
    import dataclasses

    from tfguess.engine.backbones import get_backbone
    from tfguess.engine.features import BackboneRef
    from tfguess.engine.model import read_meta
    from tfguess.guess.predict import Predictor, guess_dir

    model = _auto_model(dataset)
    backbone_meta = read_meta(model / "model.keras")["backbone"]
    backbone = get_backbone(BACKBONE).build()
    paths = web_set(dataset)
    rates: dict[str, list[float]] = {"auto": [], "float32": [], "naive": []}
    # CPU ms an image (this process, all its threads): what other work on the machine changes
    # least, so the runs compare even where they get different shares of the cores.
    cpu_ms: dict[str, list[float]] = {"auto": [], "float32": [], "naive": []}
    labels: dict[str, dict[str, str]] = {}
    for _ in range(repeat):
        run = naive(paths, backbone)
        rates["naive"].append(run["ips"])
        cpu_ms["naive"].append(run["cpu_ms"])
        for precision in ("float32", "auto"):
            predictor = Predictor.load(model, log=quiet, precision=precision)
            dst = Path(tempfile.mkdtemp(dir=WORK, prefix="guessdir-")) / "out"
            try:
                c = cpu_seconds()
                result = guess_dir(model, dataset, dst, recursive=True, progress=False, log=quiet,
                                   predictor=predictor)
                rates[precision].append(result.images_per_second)
                cpu_ms[precision].append(1000 * (cpu_seconds() - c) / len(paths))
                with open(result.manifest, newline="") as f:
                    labels[precision] = {r["source"]: r["label"] for r in csv.DictReader(f)}
            finally:
                shutil.rmtree(dst.parent)
    common = set(labels["auto"]) & set(labels["float32"])
    agree = sum(labels["auto"][k] == labels["float32"][k] for k in common)
    ref = BackboneRef.from_meta(backbone_meta)
    invoke = {"float32": invoke_ms(ref.engine_file)}
    if backbone_meta.get("guess_calibration"):
        int8 = dataclasses.replace(ref, precision="int8", calibration=backbone_meta["guess_calibration"])
        invoke["int8"] = invoke_ms(int8.engine_file)
    return {"ips": {k: statistics.median(v) for k, v in rates.items()},
            "cpu_ms": {k: statistics.median(v) for k, v in cpu_ms.items()}, "n": len(common),
            "agree": agree, "guess_precision": backbone_meta.get("guess_precision", "float32"),
            "invoke": invoke}


def precision_and_decode_rows(res: dict) -> list[tuple[str, str, str, str]]:
    """The table's rows of the decode and auto parts."""
    rows = []
    if "decode" in res:
        d = res["decode"]
        w, h = d["median_size"]
        simple = f" (simplejpeg: {d['decode_simplejpeg']:.2f})" if "decode_simplejpeg" in d else ""
        rows.append((f"Decode + resize, web-sized JPEG ({d['n']} files, median {w}x{h}), "
                     f"load_image({SIZE}, {d['recipe']}), one thread",
                     f"{d['load_image']:.2f} CPU ms: header {d['header']:.2f} + JPEG decode "
                     f"{d['decode_pillow']:.2f} Pillow{simple} + EXIF/colour {d['exif_rgb']:.2f} "
                     f"+ resize {d['resize']:.2f} ({d['bilinear_share']:.0%} of these images take "
                     "the bilinear squash, the others the antialiased bilinear)", "", ""))
        rows.append(("Decode + resize, web-sized, before (preprocessing 3: Pillow's decode, "
                     "bicubic beyond 2x) / after",
                     f"{d['load_before']:.2f} / {d['load_image']:.2f} CPU ms "
                     f"({d['load_before'] / d['load_image']:.2f}x)", "", ""))
        rows.append(("Squash bilinear resize of a web-sized photo's centre square, before / after",
                     f"{d['squash_before']:.2f} / {d['squash_after']:.2f} CPU ms "
                     f"({d['squash_before'] / d['squash_after']:.1f}x), same pixels: "
                     f"{'yes' if d['squash_same'] else '**NO**'}", "", ""))
    if "auto" in res:
        a = res["auto"]
        ips, cpu = a["ips"], a["cpu_ms"]
        ratio = ips["auto"] / ips["naive"]
        rows.append((f"guess-dir, web-sized ({a['n']} files), --precision auto model, run as auto "
                     f"picks here ({a['guess_precision']} engine)",
                     f"{ips['auto']:.0f} img/s, {cpu['auto']:.1f} CPU ms/img; {ratio:.1f}x the "
                     f"naive Keras loop ({ips['naive']:.0f} img/s, {cpu['naive']:.1f} CPU ms/img, "
                     f"same run; {cpu['naive'] / cpu['auto']:.1f}x in CPU time)", ">= 5x naive",
                     _check(ratio >= 5)))
        rows.append(("guess-dir, same model forced to float32",
                     f"{ips['float32']:.0f} img/s, {cpu['float32']:.1f} CPU ms/img; top-1 "
                     f"agreement with auto: {a['agree']} / {a['n']}", "", ""))
        inv = a["invoke"]
        if "int8" in inv:
            rows.append(("One invoke, int8 / float32 engine (one thread)",
                         f"{inv['int8']:.2f} / {inv['float32']:.2f} ms "
                         f"(int8 {inv['float32'] / inv['int8']:.1f}x faster)", "", ""))
    return rows


# --- the table ----------------------------------------------------------------------------------


def _rate(runs: list[dict]) -> tuple[float, str]:
    rates = [r["ips"] for r in runs]
    med = statistics.median(rates)
    spread = f" ({min(rates):.0f}-{max(rates):.0f})" if len(rates) > 1 else ""
    cpu = statistics.median(r["cpu_ms"] for r in runs)
    return med, f"{med:.0f} img/s{spread}, {cpu:.1f} CPU ms/img"


def _check(ok: bool) -> str:
    return "yes" if ok else "**no**"


def table(res: dict, load_before: float, load_after: float) -> str:
    rows = [("Measurement", "Result", "Target", "Met")]
    if "extract" in res:
        ex = res["extract"]
        runs, n = ex["runs"], ex["n"]
        web, web_s = _rate(runs["web", "tflite"])
        web8, web8_s = _rate(runs["web", "int8"])
        naive_web, naive_web_s = _rate(runs["web", "naive"])
        rows.append((f"Bottlenecks, web-sized ({n['web']} files), float32 engine", web_s, "", ""))
        rows.append(("Bottlenecks, web-sized, int8 engine", web8_s, ">= 250 img/s",
                     _check(max(web, web8) >= 250)))
        if ("web", "keras") in runs:
            rows.append(("Bottlenecks, web-sized, tfguess --engine keras", _rate(runs["web", "keras"])[1],
                         "", ""))
        rows.append(("Bottlenecks, web-sized, naive Keras baseline", naive_web_s, "", ""))
        rows.append(("Speed-up over the naive baseline, web-sized, float32 / int8",
                     f"{web / naive_web:.1f}x / {web8 / naive_web:.1f}x", "", ""))
        phone, phone_s = _rate(runs["phone", "tflite"])
        phone8, phone8_s = _rate(runs["phone", "int8"])
        naive_phone, naive_phone_s = _rate(runs["phone", "naive"])
        rows.append((f"Bottlenecks, phone-sized 4000x3000 ({n['phone']} files), float32 engine",
                     phone_s, "", ""))
        rows.append(("Bottlenecks, phone-sized, int8 engine", phone8_s, ">= 55 img/s",
                     _check(max(phone, phone8) >= 55)))
        rows.append(("Bottlenecks, phone-sized, naive Keras baseline", naive_phone_s, "", ""))
        rows.append(("Speed-up over the naive baseline, phone-sized, float32 / int8",
                     f"{phone / naive_phone:.1f}x / {phone8 / naive_phone:.1f}x", "", ""))
        from tfguess.data.pipeline import default_workers

        ceiling, cores = ex["ceiling"], default_workers()
        fastest = min(ceiling["invoke"].values())
        for name, label in (("web", "web-sized"), ("phone", "phone-sized")):
            decode = ceiling["decode"][name]
            rows.append((f"Ceiling, {label}: decoding + one invoke per image on each of {cores} cores",
                         f"{decode:.1f} ms + {ceiling['invoke']['float32']:.1f} ms float32 / "
                         f"{ceiling['invoke']['int8']:.1f} ms int8 = at most "
                         f"{cores * 1000 / (decode + fastest):.0f} img/s", "", ""))
    if "guessdir" in res:
        g = res["guessdir"]
        for precision in ("float32", "int8"):
            ratio = g[precision]["ips"] / g["naive"]
            rows.append((f"guess-dir, web-sized ({g['n']} files), {precision} model",
                         f"{g[precision]['ips']:.0f} img/s ({g[precision]['total_s']:.1f} s with model "
                         f"loading); {ratio:.1f}x the naive Keras loop ({g['naive']:.0f} img/s, same run)",
                         ">= 5x naive", _check(ratio >= 5)))
    if "retrain" in res:
        r = res["retrain"]
        cold, warm = r["cold"], r["warm"]
        rows.append((f"`tfguess train`, 1,000 images, cold cache ({r['precision']}), whole process",
                     f"{cold['seconds']:.1f} s wall, {cold['cpu']:.1f} s CPU (bottlenecks "
                     f"{cold['features']:.1f} s)", "", ""))
        share = warm["seconds"] / cold["seconds"]
        rows.append(("`tfguess train`, 1,000 images, warm cache, whole process",
                     f"{warm['seconds']:.1f} s wall ({share:.0%} of cold), {warm['cpu']:.1f} s CPU "
                     f"({warm['cpu'] / cold['cpu']:.0%}); TensorFlow/Keras modules imported: "
                     f"{warm['tf_modules']}", "<= 15% of cold, no TensorFlow",
                     _check(share <= 0.15 and warm["tf_modules"] == 0)))
    if "guess" in res:
        rows.append(("guess.sh, one image, new process (local)", f"{res['guess']['seconds']:.1f} s", "", ""))
    if "rss" in res:
        (a, ra), (b, rb) = sorted(res["rss"].items())
        ratio = rb["peak_mb"] / ra["peak_mb"]
        rows.append((f"Peak RSS of the process, bottlenecks of {a:,} / {b:,} images",
                     f"{ra['peak_mb']:.0f} / {rb['peak_mb']:.0f} MB ({ra['ips']:.0f} / {rb['ips']:.0f} img/s)",
                     "", ""))
        if ra["extract_peak_mb"] and rb["extract_peak_mb"]:
            rows.append(("Peak RSS during the extraction alone (after the model is built)",
                         f"{ra['extract_peak_mb']:.0f} / {rb['extract_peak_mb']:.0f} MB "
                         f"(ratio {rb['extract_peak_mb'] / ra['extract_peak_mb']:.2f})", "", ""))
        rows.append((f"Peak RSS ratio {b:,} / {a:,}", f"{ratio:.2f}", "<= 1.5", _check(ratio <= 1.5)))
    rows += precision_and_decode_rows(res)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines.append(f"\nLoad average (1 min) before / after: {load_before:.1f} / {load_after:.1f}")
    return "\n".join(lines)


def bench_finetune(quick: bool) -> str:
    """Fine-tuning lite0 (the top 6 blocks) at 224 and 288 on cub_songbirds22 photos: the epochs'
    images/s with fresh views through the whole backbone (``fine_tune_views=0``) and with cached
    views through the top blocks (the default), side by side, old and new interleaved. The first
    epoch, which traces the training step, is left out of the epochs' rate; "all in" counts
    everything, the cached views and the tracing included: images trained / fine-tuning seconds."""
    from tfguess.core.config import TrainConfig
    from tfguess.engine.backbones import get_backbone
    from tfguess.engine.runtime import Head
    from tfguess.training.finetune import fine_tune

    per_label = 4 if quick else 8
    items = []
    for k, folder in enumerate(sorted(p for p in FINETUNE_SET.iterdir() if p.is_dir())):
        items += [(p, k) for p in sorted(folder.iterdir())[:per_label]]
    classes = k + 1
    epochs = 3 if quick else 4
    rng = np.random.default_rng(0)
    head = Head(rng.normal(0, 0.01, (1280, classes)).astype(np.float32), np.zeros(classes, np.float32))
    rows = [("lite0, top 6 blocks", "epochs 2+, images/s (median)", "all in, images/s",
             "CPU ms / image-epoch")]
    for size in (224, 288):
        for views, name in ((0, "fresh views, whole backbone"), (None, "cached views, top blocks")):
            backbone = get_backbone(BACKBONE, size).build()
            config = TrainConfig(fine_tune=True, fine_tune_epochs=epochs, fine_tune_views=views)
            cpu = cpu_seconds()
            r = fine_tune(backbone, head, items, [], classes, config, size, "squash",
                          progress=False, log=quiet)
            cpu = cpu_seconds() - cpu
            done = len(items) * epochs
            later = [h["images_per_second"] for h in r.history
                     if isinstance(h["epoch"], int) and h["epoch"] > 1]
            rows.append((f"{size} px, {name}", f"{statistics.median(later):.1f}",
                         f"{done / r.seconds:.1f}", f"{1000 * cpu / done:.0f}"))
            print(f"  finetune {rows[-1]}", file=sys.stderr, flush=True)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return (f"Fine-tuning, {len(items)} cub_songbirds22 photos, {epochs} epochs:\n"
            + "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sets, fewer repeats, RSS 200/2,000")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}")
    parser.add_argument("--repeat", type=int, default=0, help="runs per throughput row (median)")
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    WORK.mkdir(parents=True, exist_ok=True)
    if args.rss_child:
        rss_child(args.rss_child, args.dataset)
        return 0
    if not args.dataset.is_dir():
        sys.exit(f"data set not found: {args.dataset} (pass --dataset DIR)")
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        sys.exit(f"unknown part(s) {', '.join(sorted(unknown))}: choose from {', '.join(PARTS)}")
    repeat = args.repeat or (1 if args.quick else 2)
    print(f"Machine: {machine()}", flush=True)
    print(f"CPU flags: {cpu_flags_text()}", flush=True)
    load_before = os.getloadavg()[0]
    res: dict = {}
    for part in PARTS:
        if part not in parts:
            continue
        print(f"running {part} ...", file=sys.stderr, flush=True)
        if part == "extract":
            res[part] = bench_extraction(args.dataset, args.quick, repeat)
        elif part == "retrain":
            from tfguess.core.config import TrainConfig

            res[part] = {**bench_retrain(args.dataset, TrainConfig.precision),
                         "precision": TrainConfig.precision}
        elif part == "guessdir":
            res[part] = bench_guess_dir(args.dataset, repeat)
        elif part == "guess":
            res[part] = bench_guess_sh(args.dataset, 3)
        elif part == "rss":
            res[part] = bench_rss((200, 2000) if args.quick else (1000, 10000), args.dataset)
        elif part == "finetune":
            res[part] = bench_finetune(args.quick)
        elif part == "decode":
            res[part] = bench_decode(args.dataset)
        elif part == "auto":
            res[part] = bench_auto(args.dataset, repeat)
    text = table({k: v for k, v in res.items() if k != "finetune"}, load_before, os.getloadavg()[0])
    if "finetune" in res:
        text = f"{res['finetune']}\n\n{text}"
    print(text)
    results = REPO / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "latest.md").write_text(f"Machine: {machine()}\nCPU flags: {cpu_flags_text()}\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
