"""ONNX Runtime on tfguess's ``model.onnx`` (see _common.py). The labels and the resize recipe
come from the model's metadata properties; the image is resized as they say (and the README):
OpenCV's bilinear warp with the corners aligned for "squash" up to 2x the input size, Pillow's
antialiased bilinear beyond; Pillow's bicubic for "crop"."""

import json

from _common import main


def load(model):
    import onnxruntime

    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    return session, json.loads(props["labels"]), json.loads(props["tfguess"])


def pixels(path, size, resize):
    """The resize the metadata describes: the whole image (squash) or the centre crop."""
    import numpy as np
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    w, h = image.size
    if resize == "squash" and max(w, h) <= 2 * size:
        import cv2

        corners = cv2.getAffineTransform(np.float32([[0, 0], [w, 0], [w, h]]),
                                         np.float32([[0, 0], [size, 0], [size, size]]))
        out = cv2.warpAffine(np.asarray(image), corners, (size, size), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE)
        return out.astype(np.float32)[None]
    if resize == "squash":
        return np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.float32)[None]
    side = min(w, h) * size / round(size / 0.875)
    left, top = (w - side) / 2, (h - side) / 2
    box = (max(left, 0.0), max(top, 0.0), min(left + side, w), min(top + side, h))
    image = image.resize((size, size), Image.BICUBIC, box=box, reducing_gap=3.0)
    return np.asarray(image, dtype=np.float32)[None]


def classify(client, path):
    session, labels, description = client
    x = pixels(path, description["input_size"], description["resize"])
    probs = session.run(None, {session.get_inputs()[0].name: x})[0][0]
    best = int(probs.argmax())
    return labels[best], probs[best]


if __name__ == "__main__":
    main(load, classify)
