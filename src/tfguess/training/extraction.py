"""A training run's features: computed (or read from the cache) for one backbone ref, then the
images that have them and the ``(x, y)`` arrays of each split.

Used by ``train`` for the stock backbone's features and again for a fine-tuned backbone's.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfguess.core.config import TrainConfig
from tfguess.core.errors import DatasetError
from tfguess.core.fsutil import display_path
from tfguess.core.runfolder import RunFolder
from tfguess.data.dataset import SPLITS, DatasetScan, Item
from tfguess.engine.bottlenecks import BottleneckCache, FeatureResult, compute_features
from tfguess.engine.features import BackboneRef
from tfguess.training.backbone_ref import LazyExtractor


@dataclass
class Features:
    """The features of one backbone ref: its cache, the lazy extractor, the function that computed
    them (:func:`compute_features`, or a Ray cluster's) and the result."""

    ref: BackboneRef
    cache: BottleneckCache
    extractor: LazyExtractor
    compute: Callable
    result: FeatureResult


def extract(run: RunFolder, ref: BackboneRef, backbone: Callable[[], object], items: list[Item],
            config: TrainConfig, progress: bool, log: Callable[[str], None], calibration=None,
            ray: bool = False) -> Features:
    """The features of ``items`` for ``ref`` from the run folder's cache, the missing ones computed
    (on the Ray cluster of ``config.ray`` with ``ray``)."""
    cache = BottleneckCache(run.bottlenecks, ref.cache_key)
    extractor = LazyExtractor(ref, backbone, config.engine, log, calibration)
    compute = functools.partial(compute_features, keep_placeholders=config.keep_placeholders)
    if ray:
        from tfguess.guess.distributed import RayFeatureComputer

        compute = RayFeatureComputer(ref, backbone, config.ray, config.ray_workers, log)
    result = compute([(it.path, it.digest) for it in items], cache, extractor, ref.input_size,
                     ref.resize, workers=config.workers, progress=progress)
    return Features(ref, cache, extractor, compute, result)


@dataclass
class SplitData:
    """The images with features by split, the skipped files, and the arrays ``(x, y)`` by split."""

    labels: list[str]
    usable: list[Item]
    skipped: list[dict]
    splits: dict[str, list[Item]]
    arrays: dict[str, tuple[np.ndarray, np.ndarray]]

    @property
    def index(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    def pairs(self, split: str) -> list[tuple[Path, int]]:
        """``(path, label index)`` of the images of ``split``."""
        index = self.index
        return [(it.path, index[it.label]) for it in self.splits[split]]

    def with_features(self, feats: FeatureResult) -> SplitData:
        """The same images with the arrays of other features (a fine-tuned backbone's)."""
        return dataclasses.replace(self, arrays=_arrays(self.splits, self.index, feats))


def split_data(scan: DatasetScan, feats: FeatureResult, config: TrainConfig, image_dir: Path,
               log: Callable[[str], None]) -> SplitData:
    """The usable images of ``scan`` (with features) by split and their arrays; the skipped files
    are listed. A label with fewer than ``config.min_per_label`` usable images is an error."""
    usable, skipped = _usable_items(scan, feats, config, image_dir, log)
    splits = {split: [it for it in usable if it.split == split] for split in SPLITS}
    index = {label: i for i, label in enumerate(scan.labels)}
    return SplitData(scan.labels, usable, skipped, splits, _arrays(splits, index, feats))


def refeature(run: RunFolder, feats: Features, weights_id: str, backbone: Callable[[], object],
              data: SplitData, config: TrainConfig, progress: bool, log: Callable[[str], None],
              calibration=None) -> tuple[Features, SplitData]:
    """The features of the usable images for the backbone's new ``weights_id`` (a fine-tuned
    backbone is another backbone: its own engine and feature cache), and the arrays of them."""
    ref = dataclasses.replace(feats.ref, weights_id=weights_id)
    new = extract(run, ref, backbone, data.usable, config, progress, log, calibration)
    missing = [it for it in data.usable if it.digest not in new.result.features]
    if missing:
        raise DatasetError(f"the fine-tuned backbone could not read {display_path(missing[0].path)} "
                           "(it was read before): check the file and train again")
    return new, data.with_features(new.result)


def _arrays(splits: dict[str, list[Item]], index: dict[str, int],
            feats: FeatureResult) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    def xy(items: list[Item]) -> tuple[np.ndarray, np.ndarray]:
        x = (np.stack([feats.features[it.digest] for it in items]).astype(np.float32) if items
             else np.zeros((0, 1), np.float32))
        return x, np.array([index[it.label] for it in items], np.int64)

    return {split: xy(items) for split, items in splits.items()}


def _usable_items(scan: DatasetScan, feats: FeatureResult, config: TrainConfig, image_dir: Path,
                  log: Callable[[str], None]) -> tuple[list[Item], list[dict]]:
    """The images that have features, and every skipped file with its reason."""
    skipped = [{"path": display_path(s.path), "reason": s.reason} for s in scan.skipped]
    usable = []
    for item in scan.items:
        if item.digest in feats.skipped:
            skipped.append({"path": display_path(item.path), "reason": feats.skipped[item.digest]})
        else:
            usable.append(item)
    if skipped:
        log(f"Skipped {len(skipped)} file(s):")
        for s in skipped:
            log(f"  {s['path']}: {s['reason']}")
    if len(usable) < len(scan.items):
        log(f"Usable: {len(usable)} of the {len(scan.items)} images found")
    per_label = {label: sum(1 for it in usable if it.label == label) for label in scan.labels}
    too_few = [f"{label} ({n})" for label, n in per_label.items() if n < config.min_per_label]
    if too_few:
        raise DatasetError(
            f"too few usable images for label(s) {', '.join(too_few)} in {image_dir}: "
            f"each label needs at least {config.min_per_label}. Add images or remove the folder."
        )
    return usable, skipped
