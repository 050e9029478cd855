"""``--precision auto``'s guessing engine: an int8 engine the model carries for guessing only where
the CPU has int8 instructions and it is as accurate as float32 on the model's photos."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from tfguess.core.config import TrainConfig
from tfguess.core.runfolder import RunFolder
from tfguess.data.dataset import DatasetScan
from tfguess.engine.features import BackboneRef, calibration_digest, choose_calibration
from tfguess.engine.runtime import auto_precision
from tfguess.training.backbone_ref import LazyBackbone, calibration_pixels
from tfguess.training.extraction import SplitData, extract


def guess_engine(run: RunFolder, scan: DatasetScan, data: SplitData, head, ref: BackboneRef,
                  backbone: LazyBackbone, config: TrainConfig,
                  log: Callable[[str], None]) -> tuple[BackboneRef | None, dict]:
    """``--precision auto``: the features stay float32 (int8 features cost accuracy on some data
    sets, docs/benchmarks.md, "Speed"). Where the CPU has int8 dot-product instructions, an int8
    engine is calibrated on 100 training photos (the smallest content digests) and the model
    carries it for ``guess``, ``guess-dir`` and ``serve`` only when it is as accurate as float32
    on the held-out photos (:func:`int8_check`): guessing never trades accuracy unasked.
    Returns that engine's ref (or None) and what the run summary records."""
    info = {"setting": config.precision, "features": ref.precision, "guess": ref.precision}
    if config.precision != "auto":
        return None, info
    decision = auto_precision()
    info["cpu"] = decision["reason"]
    if decision["precision"] != "int8" or config.engine == "keras" or config.ray or config.fine_tune:
        return None, info
    digests = choose_calibration([it.digest for it in scan.items if it.split == "train"])
    int8 = dataclasses.replace(ref, precision="int8", calibration=calibration_digest(digests))
    if not int8.engine_file.exists():
        from tfguess.engine.features import make_extractor

        try:
            make_extractor(int8, backbone, "tflite", log, calibration_pixels(scan, digests, int8))
        except Exception as exc:  # noqa: BLE001 - a converter failure costs only the faster guessing
            log(f"  note: no int8 engine for guessing ({exc.__class__.__name__}: {exc}); "
                "guessing runs float32")
            return None, info
    check = int8_check(run, int8, backbone, data, head, config)
    info["int8_check"] = check
    if not check["passed"]:
        log(f"Guessing runs float32: {check['why']}")
        return None, info
    log(f"Guessing runs int8 (faster): {check['why']}")
    return int8, {**info, "guess": "int8"}


INT8_AGREEMENT = 0.995
INT8_RULE = ("int8 guessing only when its top label is float32's on at least "
             f"{INT8_AGREEMENT:.1%} of the model's photos (training photos too: no labels needed) "
             "and it gets at most one held-out photo (validation and test splits) fewer right")


def int8_check(run: RunFolder, int8: BackboneRef, backbone: LazyBackbone, data: SplitData, head,
                config: TrainConfig) -> dict:
    """The int8 engine against float32 on every usable photo: how often their top labels agree,
    how many held-out photos each gets right, and whether int8 passes :data:`INT8_RULE`. A
    held-out split of tens of photos cannot see a loss of one photo in a hundred; agreement on
    every photo can. Their int8 features are cached like any others."""
    held_out = [s for s in ("validation", "test") if data.splits[s]]
    if not held_out:
        return {"passed": False, "n": 0, "rule": INT8_RULE,
                "why": "no held-out photos to check the int8 engine on (--validation-pct 0)"}
    splits = [s for s in ("train", "validation", "test") if data.splits[s]]
    items = [it for s in splits for it in data.splits[s]]
    int8_features = extract(run, int8, backbone, items, config, progress=False,
                            log=lambda *_: None).result.features
    if any(it.digest not in int8_features for it in items):
        return {"passed": False, "n": len(items), "rule": INT8_RULE,
                "why": "the int8 engine could not read every photo"}
    x8 = np.stack([int8_features[it.digest] for it in items]).astype(np.float32)
    x32 = np.concatenate([data.arrays[s][0] for s in splits])
    y = np.concatenate([data.arrays[s][1] for s in splits])
    top8, top32 = head(x8).argmax(1), head(x32).argmax(1)
    held = np.concatenate([np.full(len(data.splits[s]), s in held_out) for s in splits])
    right32, right8 = int((top32 == y)[held].sum()), int((top8 == y)[held].sum())
    agree = float((top8 == top32).mean())
    passed = right8 >= right32 - 1 and agree >= INT8_AGREEMENT
    return {"passed": passed, "n": int(held.sum()), "float32_correct": right32,
            "int8_correct": right8, "photos": len(items), "agreement": round(agree, 4),
            "rule": INT8_RULE,
            "why": f"int8's top label is float32's on {agree:.1%} of {len(items)} photos; it got "
                   f"{right8} of {int(held.sum())} held-out photos right, float32 {right32}"}
