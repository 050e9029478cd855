"""The ``coreml`` format: ``model.mlpackage``, an ML Program classifier with an RGB image input
(needs coremltools: pip install 'tfguess[export]', on macOS or Linux x86_64)."""

from __future__ import annotations

import json
from pathlib import Path

from tfguess.core.errors import ExportError
from tfguess.data.images import CROP_FRACTION, PAD_VALUE
from tfguess.export.common import (
    ExportJob,
    converter_quiet,
    description,
    keras_function,
    publish_folder,
    resize_text,
)

COREML_DIRNAME = "model.mlpackage"


def write(job: ExportJob) -> list[Path]:
    """``model.mlpackage`` (float32: Core ML takes no ``quantize``)."""
    with converter_quiet(job.config.quiet):
        return [publish_folder(lambda d: save_coreml(job.classifier, d), job.out / COREML_DIRNAME,
                               job.log)]


def _coremltools_platform() -> bool:
    """Whether coremltools publishes wheels for this machine (macOS, Linux x86_64)."""
    import platform
    import sys

    return sys.platform == "darwin" or (sys.platform == "linux" and platform.machine() == "x86_64")


def save_coreml(classifier, path: Path) -> None:
    """An ML Program classifier: image input ``image`` (RGB, 0..255 as is), labels built in."""
    try:
        import coremltools as ct
    except ImportError:
        import platform

        raise ExportError(
            "Core ML export needs coremltools, which is not installed here"
            + (f" (it has no wheel for {platform.system()} {platform.machine()}: export on macOS "
               "or Linux x86_64 instead)" if not _coremltools_platform() else
               ": pip install 'tfguess[export]'")) from None

    size = classifier.input_size
    mlmodel = ct.convert(
        [keras_function(classifier, 1, name="image")],
        source="tensorflow",
        inputs=[ct.ImageType(name="image", shape=(1, size, size, 3), scale=1.0, bias=[0.0, 0.0, 0.0],
                             color_layout=ct.colorlayout.RGB)],
        classifier_config=ct.ClassifierConfig(list(classifier.labels)),
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS15,
    )
    mlmodel.short_description = (f"tfguess classifier ({classifier.backbone_name}): "
                                 f"{', '.join(classifier.labels)}")
    mlmodel.input_description["image"] = coreml_input_description(classifier)
    mlmodel.user_defined_metadata["tfguess"] = json.dumps(description(classifier, "none"))
    mlmodel.save(str(path))


def coreml_input_description(classifier) -> str:
    """How to feed the image, in Vision's terms."""
    size = classifier.input_size
    if classifier.resize == "squash":
        return (f"RGB image, {size}x{size}: the whole image resized to {size}x{size}, "
                "aspect ratio not kept (with Vision: imageCropAndScaleOption = .scaleFill)")
    if classifier.resize == "pad":
        return (f"RGB image, {size}x{size}: the whole image centred on a square of grey "
                f"{PAD_VALUE} (letterbox), resized to {size}x{size}. Vision's .scaleFit pads "
                f"with black: pad the image to a square with grey {PAD_VALUE} yourself, then use "
                ".scaleFill")
    return (f"RGB image, {size}x{size}: the central {CROP_FRACTION:.1%} square of the image "
            f"resized to {size}x{size}, bicubic ({resize_text(classifier)}). Vision's .centerCrop "
            "takes the whole central square instead: crop the central square to "
            f"{CROP_FRACTION:.1%} of its side yourself (or set the request's regionOfInterest), "
            "then use .scaleFill")
