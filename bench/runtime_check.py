"""The TFLite engine on LiteRT (ai-edge-litert) against TensorFlow's tf.lite.Interpreter fallback.

    python bench/runtime_check.py [--images N] [--rounds R]

Decodes N hymenoptera photos once, then times the EfficientNet-Lite0 engine (the cached TFLite
twin, one single-threaded interpreter per core) on them in a child process per runtime,
alternating R rounds so that a change in the machine's load hits both; prints images/s and the
largest feature difference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "datasets" / "hymenoptera" / "val"

CHILD = """
import json, sys, time
import numpy as np
from tfguess.engine.runtime import TFLiteEngine, runtime_name
pixels = np.load(sys.argv[1])
engine = TFLiteEngine(sys.argv[2])
engine(pixels[:2])  # warm-up: interpreters created
start = time.perf_counter()
features = engine(pixels)
seconds = time.perf_counter() - start
np.save(sys.argv[3], features)
print(json.dumps({"runtime": runtime_name(), "seconds": seconds}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from tfguess.data.images import load_image
    from tfguess.engine.backbones import get_backbone
    from tfguess.engine.features import BackboneRef, make_extractor

    spec = get_backbone("efficientnet_lite0")
    ref = BackboneRef(spec.name, spec.weights_id(), spec.input_size, spec.resize)
    make_extractor(ref, spec.build, "tflite", log=lambda *_: None)  # converts once if needed
    paths = sorted(p for p in DATA.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))[:args.images]
    pixels = np.stack([load_image(p, ref.input_size, ref.resize) for p in paths])
    work = Path(tempfile.mkdtemp())
    np.save(work / "pixels.npy", pixels)
    rates: dict[str, list[float]] = {}
    features = {}
    for _ in range(args.rounds):
        for name, env in (("ai-edge-litert", {}), ("tf.lite", {"TFGUESS_RUNTIME": "tf.lite"})):
            out = work / f"{name}.npy"
            result = subprocess.run([sys.executable, "-c", CHILD, str(work / "pixels.npy"),
                                     str(ref.engine_file), str(out)], capture_output=True, text=True,
                                    env={**os.environ, **env}, check=True)
            info = json.loads(result.stdout.strip().splitlines()[-1])
            assert info["runtime"] == name, info
            rates.setdefault(name, []).append(len(pixels) / info["seconds"])
            features[name] = np.load(out)
    diff = float(np.abs(features["ai-edge-litert"] - features["tf.lite"]).max())
    print(f"{len(pixels)} images, {args.rounds} alternating rounds, load average "
          f"{os.getloadavg()[0]:.1f}")
    for name, r in rates.items():
        print(f"  {name:15s} {np.median(r):6.1f} images/s (runs: {', '.join(f'{x:.1f}' for x in r)})")
    print(f"  max feature difference: {diff:.2e}")


if __name__ == "__main__":
    main()
