"""Which backbone a run's features come from, and the lazy model and extractor that compute them.

:func:`backbone_ref` is the one place a :class:`BackboneRef` is made from a backbone spec and the
``--resize`` setting (``train``, ``--backbone auto``'s candidates and the inbox before a first
model); :class:`LazyExtractor` builds the feature extractor only when a feature is not cached
(nor, through :class:`LazyBackbone`, the Keras model and TensorFlow). The int8 calibration images
(:func:`calibration_images`, :func:`calibration_pixels`) are part of an int8 ref.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tfguess.core.config import TrainConfig
from tfguess.core.runfolder import RunFolder
from tfguess.data.dataset import DatasetScan
from tfguess.data.pipeline import iter_loaded
from tfguess.engine.features import BackboneRef, choose_calibration, engine_name, make_extractor


def resolve_backbone(config: TrainConfig):
    """The backbone spec of ``config``: its TF Hub module, else the named backbone."""
    from tfguess.engine.backbones import get_backbone, tfhub_backbone

    if config.tfhub_module:
        return tfhub_backbone(config.tfhub_module, input_size=config.image_size)
    return get_backbone(config.backbone, config.image_size)


def backbone_ref(spec, weights_id: str, resize: str | None, *, auto_resize: str | None = None,
                 precision: str = "float32") -> BackboneRef:
    """The ref of the features of ``spec`` with weights ``weights_id``.

    ``resize`` is the ``--resize`` setting: None is the backbone's own recipe, ``auto`` is
    ``auto_resize``. ``train`` passes there what :func:`choices.choose_resize` measured on the
    photos; without it (the inbox before a first model, ``--backbone auto``'s candidates:
    no photos chosen by) ``auto`` is the backbone's own recipe too.
    """
    setting = resize or spec.resize
    if setting == "auto":
        setting = auto_resize or spec.resize
    return BackboneRef(spec.name, weights_id, spec.input_size, setting, precision)


class LazyBackbone:
    """The backbone's Keras model, built (and TensorFlow imported) the first time it is needed:
    never in a warm re-train whose features are all cached."""

    def __init__(self, spec, weights: str | None) -> None:
        self.spec, self.weights, self.model = spec, weights, None
        self.seconds = 0.0

    def __call__(self):
        if self.model is None:
            from tfguess.core.quiet import import_tensorflow

            t = time.perf_counter()
            import_tensorflow()
            self.model = self.spec.build(weights=self.weights)
            self.seconds = time.perf_counter() - t
        return self.model

    @property
    def built(self) -> bool:
        return self.model is not None


class ModelBackbone(LazyBackbone):
    """The backbone of a saved model (``--head-only``: a fine-tuned one has no other home), loaded
    the first time it is needed."""

    def __init__(self, spec, model_path) -> None:
        super().__init__(spec, None)
        self.model_path = model_path

    def __call__(self):
        if self.model is None:
            from tfguess.engine.model import load_classifier

            t = time.perf_counter()
            self.model = load_classifier(self.model_path).backbone
            self.seconds = time.perf_counter() - t
        return self.model


class LazyExtractor:
    """Builds the feature extractor of ``ref`` the first time features must be computed (never
    when every feature is cached). ``build_model`` returns the backbone's Keras model (a
    :class:`LazyBackbone`, or any function giving one); ``calibration``: an int8 ref's pixels."""

    def __init__(self, ref: BackboneRef, build_model: Callable[[], object], engine: str,
                 log: Callable[[str], None], calibration=None) -> None:
        self.ref, self.backbone, self.engine, self.log = ref, build_model, engine, log
        self.calibration = calibration
        self.extractor = None

    def __call__(self):
        if self.extractor is None:
            self.extractor = make_extractor(self.ref, self.backbone, self.engine, self.log,
                                            self.calibration)
        return self.extractor

    @property
    def name(self) -> str:
        return engine_name(self.extractor) if self.extractor else "none (all cached)"


def calibration_images(run: RunFolder, scan: DatasetScan, ref: BackboneRef) -> list[str]:
    """The digests of the int8 calibration images: the previous run's when all of them are still
    in the folder (so adding photos keeps the cache warm), else a new choice among the training
    photos."""
    present = {item.digest for item in scan.items}
    try:
        previous = run.read_summary() if run.summary.exists() else {}
    except Exception:  # noqa: BLE001 - a damaged summary only means a new calibration
        previous = {}
    old = previous.get("calibration_images") or []
    old_ref = previous.get("backbone") or {}
    same_backbone = (old_ref.get("name"), old_ref.get("weights_id"), old_ref.get("precision")) == (
        ref.name, ref.weights_id, "int8")
    if old and same_backbone and set(old) <= present:
        return sorted(old)
    return choose_calibration([it.digest for it in scan.items if it.split == "train"])


def calibration_pixels(scan: DatasetScan, digests: list[str], ref: BackboneRef):
    """A function giving the calibration images' pixels (decoded when the converter asks)."""
    wanted = set(digests)
    paths = {}
    for item in scan.items:
        if item.digest in wanted:
            paths.setdefault(item.digest, item.path)

    def pixels():
        for loaded in iter_loaded([paths[d] for d in sorted(paths)], ref.input_size, ref.resize,
                                  reject_placeholders=True):
            if loaded.pixels is not None:
                yield loaded.pixels

    return pixels
