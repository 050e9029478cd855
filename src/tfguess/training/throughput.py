"""This machine's throughput for a time plan (:mod:`tfguess.training.plan`): the rates of the last
run in the same TF_FILES when there are any, else reference rates measured on a 2-core machine,
scaled by the cores this process may use and by the share of them the rest of the machine leaves
(sampled from /proc/stat). :func:`costs` converts between backbones and input sizes. Nothing here
imports TensorFlow.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

# Reference throughput of lite0 at 224 on 2 idle cores (x86, AVX-512; the run summaries of the
# time plan's recipes on cub_songbirds22, converted by each recipe's costs), images/s: frozen features
# of one image or view; the cached views of fine-tuning (augmenting + the lower blocks); one
# fine-tuning epoch on them.
REFERENCE_CORES = 2
REFERENCE = {"extract": 110.0, "views": 145.0, "fine_tune": 85.0}


@dataclass(frozen=True)
class Speed:
    """This machine's throughput for lite0 at 224, images/s (see :data:`REFERENCE`)."""

    extract: float
    views: float
    fine_tune: float
    source: str
    slowdown: float = 1.0  # the fixed costs' factor: 1 / the share of the cores left to this run

    @classmethod
    def estimate(cls, cores: int, busy: float | None = None, summary: dict | None = None) -> Speed:
        """From the previous run's summary (``run_summary.json``) where it measured something,
        else the reference rates scaled by ``cores`` and the share of them this run gets beside
        other work keeping ``busy`` cores busy: ``cores / (cores + busy)``."""
        share = 1.0 if not busy else cores / (cores + max(0.0, busy))
        scale = max(0.05, cores / REFERENCE_CORES * share)
        rates = {k: v * scale for k, v in REFERENCE.items()}
        source = f"reference rates x {scale:.2f} ({cores} cores, {busy or 0:.1f} busy elsewhere)"
        measured = history_rates(summary or {})
        if measured:
            rates.update(measured)
            source = f"the last run in this folder ({', '.join(sorted(measured))})" + (
                f", reference rates x {scale:.2f} for the rest" if len(measured) < len(rates) else "")
        return cls(rates["extract"], rates["views"], rates["fine_tune"], source, 1 / max(share, 0.05))


def costs(backbone: str, size: int) -> tuple[float, float, float]:
    """The (extraction, fine-tuning view, fine-tuning epoch) cost factors of ``backbone`` at
    ``size``, relative to lite0 at 224 (measured at 224, 288 and 320 for lite0, 260 and 300 for
    lite2; lite1, in no recipe, is put between the two, unmeasured)."""
    if backbone == "efficientnet_lite0":
        c = (size / 224) ** 2
        return c, c, c
    area = (size / 260) ** 2
    if backbone == "efficientnet_lite2":
        return 1.77 * area, 2.24 * area, 1.62 * area
    area = (size / 240) ** 2
    return 1.35 * area, 1.6 * area, 1.3 * area



def history_rates(summary: dict) -> dict:
    """Rates measured by an earlier run, converted to lite0 at 224."""
    out = {}
    try:
        backbone = summary.get("backbone") or {}
        extract_cost, _, ft_cost = costs(backbone.get("name", "efficientnet_lite0"), backbone.get("input_size") or 224)
        computed = (summary.get("features") or {}).get("computed") or 0
        seconds = (summary.get("timings_s") or {}).get("features") or 0
        if computed >= 50 and seconds > 0:
            out["extract"] = computed / seconds * extract_cost
        ft = summary.get("fine_tune") or {}
        if ft.get("images_per_second") and ft.get("cached_views"):
            out["fine_tune"] = float(ft["images_per_second"]) * ft_cost
    except (TypeError, ValueError, AttributeError):
        return {}
    return out


def read_summary(path: Path) -> dict:
    """A previous run's summary, or {} (missing or damaged: only the history is lost)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def speed(summary_path: Path) -> Speed:
    """This machine's throughput now (:meth:`Speed.estimate`), the last run's at ``summary_path`` first."""
    from tfguess.data.pipeline import default_workers

    busy = busy_cores()
    if busy is None and hasattr(os, "getloadavg"):  # no /proc/stat (macOS): the load average
        busy = os.getloadavg()[0]
    return Speed.estimate(default_workers(), busy, read_summary(summary_path))


def busy_cores(seconds: float = 0.5) -> float | None:
    """How many cores the rest of the machine keeps busy now: the share of CPU time that was not
    idle over ``seconds`` (this process sleeps meanwhile), from /proc/stat, times the cores it
    counts; None where there is no /proc/stat."""

    def sample() -> tuple[float, float, int]:
        with open("/proc/stat", encoding="ascii") as f:
            lines = f.read().splitlines()
        times = [float(x) for x in lines[0].split()[1:]]
        cpus = sum(1 for line in lines if re.match(r"cpu\d", line))
        return sum(times[:8]), times[3] + times[4], cpus  # idle + iowait

    try:
        total0, idle0, cpus = sample()
        time.sleep(seconds)
        total1, idle1, _ = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return max(0.0, 1.0 - (idle1 - idle0) / (total1 - total0)) * cpus
