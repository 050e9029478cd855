"""The ``savedmodel`` format: ``saved_model/`` with ``serving_default`` (pixels ->
probabilities) and ``classify_image`` (encoded image bytes -> labels, probabilities, top label
and score); the labels are its asset ``assets/retrained_labels.txt``."""

from __future__ import annotations

import tempfile
from pathlib import Path

from tfguess.core.runfolder import LABELS_FILENAME
from tfguess.export.common import ExportJob, publish_folder
from tfguess.export.preprocessing import decode_like_pil, resize_like_load_image

SAVEDMODEL_DIRNAME = "saved_model"
BYTES_SIGNATURE = "classify_image"


def write(job: ExportJob) -> list[Path]:
    """The ``saved_model/`` folder."""
    return [publish_folder(lambda d: save_savedmodel(job.classifier, d),
                           job.out / SAVEDMODEL_DIRNAME, job.log)]


def save_savedmodel(classifier, path: Path) -> None:
    """Two signatures: ``serving_default`` takes pixels ``[N, size, size, 3]`` (0..255) and
    returns ``probabilities``; ``classify_image`` takes encoded images (``image_bytes``, a
    ``[N]`` string tensor: JPEG, PNG, GIF or BMP, decoded and resized as ``guess`` does, EXIF
    orientation not applied) and returns ``labels`` ``[N, labels]``, ``probabilities``, the top
    ``label`` and its ``score``. The labels file is the asset ``assets/retrained_labels.txt``."""
    import keras
    import tensorflow as tf

    model, size, resize = classifier.keras_model, classifier.input_size, classifier.resize
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default",
        lambda pixels: {"probabilities": model(pixels, training=False)},
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="pixels")],
    )
    with tempfile.TemporaryDirectory() as tmp:
        labels_file = Path(tmp) / LABELS_FILENAME
        labels_file.write_text("\n".join(classifier.labels) + "\n", encoding="utf-8")
        asset = tf.saved_model.Asset(str(labels_file))
        _add_bytes_endpoint(archive, model, size, resize, asset)
        # The archive saves this object: an Asset tracked by it is copied into assets/.
        archive._tf_trackable.labels_file = asset
        archive.write_out(str(path), verbose=False)


def _add_bytes_endpoint(archive, model, size: int, resize: str, asset) -> None:
    import tensorflow as tf

    def classify_image(image_bytes):
        labels = tf.strings.split(tf.strings.strip(tf.io.read_file(asset)), "\n")

        def one(contents):
            pixels = resize_like_load_image(decode_like_pil(contents, size), size, resize)
            return model(pixels, training=False)[0]

        probs = tf.map_fn(one, image_bytes, fn_output_signature=tf.float32)
        return {"labels": tf.broadcast_to(labels, tf.shape(probs)), "probabilities": probs,
                "label": tf.gather(labels, tf.argmax(probs, axis=-1)),
                "score": tf.reduce_max(probs, axis=-1)}

    archive.add_endpoint(BYTES_SIGNATURE, classify_image,
                         input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
