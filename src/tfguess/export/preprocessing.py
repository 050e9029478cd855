"""``images.load_image``'s decoding and resizing as TensorFlow ops, the same pixels to the last
bit: the SavedModel's ``classify_image`` signature and the frozen graph take encoded image bytes
and run this inside the graph (:func:`decode_like_pil`, then :func:`resize_like_load_image`)."""

from __future__ import annotations

from tfguess.data.images import CROP_FRACTION, PAD_VALUE, SQUASH_BILINEAR_MAX, SUBPIXEL


def _squash_bilinear_tf(image, size: int):
    """``images.squash_bilinear`` in TensorFlow ops (the same integer arithmetic, exact in
    float32): ``[h, w, 3]`` -> ``[1, size, size, 3]`` float32."""
    import tensorflow as tf

    def axis(n):
        pos = tf.math.rint(tf.range(size, dtype=tf.float64) * (tf.cast(n, tf.float64) / size)
                           * SUBPIXEL)
        first = tf.minimum(tf.floor(pos / SUBPIXEL), tf.cast(n - 1, tf.float64))
        frac = tf.cast(pos - tf.floor(pos / SUBPIXEL) * SUBPIXEL, tf.float32)
        last = tf.minimum(first + 1, tf.cast(n - 1, tf.float64))
        return tf.cast(first, tf.int32), tf.cast(last, tf.int32), frac

    shape = tf.shape(image)
    x0, x1, fx = axis(shape[1])
    y0, y1, fy = axis(shape[0])
    x = tf.cast(image, tf.float32)
    fx, fy = fx[None, :, None], fy[:, None, None]
    top, bottom = tf.gather(x, y0, axis=0), tf.gather(x, y1, axis=0)
    top = tf.gather(top, x0, axis=1) * (SUBPIXEL - fx) + tf.gather(top, x1, axis=1) * fx
    bottom = tf.gather(bottom, x0, axis=1) * (SUBPIXEL - fx) + tf.gather(bottom, x1, axis=1) * fx
    half = SUBPIXEL * SUBPIXEL / 2
    return tf.floor((top * (SUBPIXEL - fy) + bottom * fy + half) / (2 * half))[None]


def _pad_to_square_tf(image):
    """``images.pad_to_square`` in TensorFlow ops: ``[h, w, 3]`` uint8 centred on a square of
    ``PAD_VALUE`` (the extra pixel of an odd margin right of or below the image)."""
    import tensorflow as tf

    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    side = tf.maximum(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    paddings = tf.stack([tf.stack([top, side - h - top]), tf.stack([left, side - w - left]),
                         tf.zeros([2], tf.int32)])
    return tf.pad(image, paddings, constant_values=tf.cast(PAD_VALUE, image.dtype))


def resize_like_load_image(image, size: int, resize: str):
    """``images.load_image``'s resize in TensorFlow ops: "crop" by :func:`_resize_like_pil`
    (bicubic), "pad" by :func:`_pad_to_square_tf` then as "squash": :func:`_squash_bilinear_tf`
    where ``load_image`` squashes bilinearly, else :func:`_resize_like_pil` (antialiased
    bilinear)."""
    import tensorflow as tf

    if resize == "crop":
        return _resize_like_pil(image, size, True)
    if resize == "pad":
        image = _pad_to_square_tf(image)
    shape = tf.shape(image)
    return tf.cond(tf.cast(tf.reduce_max(shape[:2]), tf.float32) <= SQUASH_BILINEAR_MAX * size,
                   lambda: _squash_bilinear_tf(image, size),
                   lambda: _resize_like_pil(image, size, False, "bilinear"))


# Pillow's resampling weights are fixed-point numbers with this many fractional bits (Resample.c).
PILLOW_PRECISION_BITS = 22


def _pillow_weights(in_size, in0, in1, size: int, kernel: str = "bicubic"):
    """Pillow's bicubic or bilinear weights of one axis as a ``[size, in_size]`` float64 matrix
    of its fixed-point integers (``precompute_coeffs`` and ``normalize_coeffs_8bpc`` of
    Resample.c, in the same float64 operations): output ``i`` reads the source interval
    ``in0..in1`` at ``in0 + (i + 0.5) * scale`` with the Keys (a = -0.5) kernel or the triangle,
    widened by the reduction (antialiasing), taps outside the image left out and the rest
    normalised. Both kernels are continuous, so where a graph computes ``scale`` a last bit
    differently (a division by a constant made a multiplication), no tap comes or goes whole (a
    box filter's would, at its edges)."""
    import tensorflow as tf

    f64 = tf.float64
    scale = (in1 - in0) / size
    filterscale = tf.maximum(scale, 1.0)
    support = (2.0 if kernel == "bicubic" else 1.0) * filterscale
    inv = 1.0 / filterscale
    center = in0 + (tf.range(size, dtype=f64) + 0.5) * scale
    xmin = tf.maximum(tf.floor(center - support + 0.5), 0.0)[:, None]
    xmax = tf.minimum(tf.floor(center + support + 0.5), tf.cast(in_size, f64))[:, None]
    j = tf.cast(tf.range(in_size), f64)[None, :]
    x = tf.abs((j - center[:, None] + 0.5) * inv)
    if kernel == "bilinear":
        w = tf.where(x < 1.0, 1.0 - x, tf.zeros_like(x))
    else:
        a = -0.5
        near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
        w = tf.where(x < 1.0, near, tf.where(x < 2.0, far, tf.zeros_like(x)))
    w = tf.where((j >= xmin) & (j < xmax), w, tf.zeros_like(w))
    ww = tf.reduce_sum(w, axis=1, keepdims=True)
    k = tf.where(ww != 0.0, w / tf.where(ww != 0.0, ww, 1.0), w) * float(1 << PILLOW_PRECISION_BITS)
    return tf.where(k < 0, tf.math.ceil(k - 0.5), tf.floor(k + 0.5))


def _resize_like_pil(image, size: int, crop: bool, kernel: str = "bicubic"):
    """``images.load_image``'s Pillow resize in TensorFlow ops, as Pillow computes it: the same
    source box (:func:`images.crop_box`, or the whole image; passed to Pillow as float32), the
    same fixed-point weights (:func:`_pillow_weights`), one pass per axis, each rounded
    and clipped to 0..255, in Pillow's order (13.0: vertical first when
    ``h > max(size, 2 * w - size)``, for the whole image and for a crop box alike; measured on
    2,000 shapes from 16 to 1,400 pixels, none differing). Pillow's extra box reduction for
    sources over 6x the input size (``reducing_gap``) is not done here."""
    import tensorflow as tf

    f64 = tf.float64
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], f64), tf.cast(shape[1], f64)
    if crop:
        scale = round(size / CROP_FRACTION) / tf.minimum(w, h)
        side = size / scale
        left, top = (w - side) / 2, (h - side) / 2
        box = [tf.maximum(left, 0.0), tf.maximum(top, 0.0), tf.minimum(left + side, w),
               tf.minimum(top + side, h)]
        box = [tf.cast(tf.cast(v, tf.float32), f64) for v in box]  # Pillow's box is float32
    else:
        box = [tf.constant(0.0, f64), tf.constant(0.0, f64), w, h]
    kx = _pillow_weights(shape[1], box[0], box[2], size, kernel)
    ky = _pillow_weights(shape[0], box[1], box[3], size, kernel)
    half, one = float(1 << (PILLOW_PRECISION_BITS - 1)), float(1 << PILLOW_PRECISION_BITS)

    def rounded(x):
        return tf.clip_by_value(tf.floor((x + half) / one), 0.0, 255.0)

    # tensordot: MatMul and Transpose, which every TensorFlow runtime of the frozen graph has
    def horizontal(x):
        return rounded(tf.transpose(tf.tensordot(x, kx, axes=[[1], [1]]), [0, 2, 1]))

    def vertical(x):
        return rounded(tf.tensordot(ky, x, axes=[[1], [0]]))

    x = tf.cast(image, f64)
    out = tf.cond(shape[0] > tf.maximum(size, 2 * shape[1] - size),
                  lambda: horizontal(vertical(x)), lambda: vertical(horizontal(x)))
    return tf.cast(out, tf.float32)[None]


def decode_like_pil(contents, size: int):
    """Decode as ``images.decode_image`` does: a large JPEG is decoded at 1/2, 1/4 or 1/8 scale
    like Pillow's draft mode. (EXIF orientation is not applied here.)"""
    import tensorflow as tf

    from tfguess.data.images import DRAFT_MARGIN

    def decode(ratio: int):
        # DecodeJpeg also decodes PNG and (non-animated) GIF.
        return lambda: tf.io.decode_jpeg(contents, channels=3, ratio=ratio,
                                         dct_method="INTEGER_ACCURATE", name="DecodeJpeg")

    def jpeg_ratio():
        hw = tf.cast(tf.io.extract_jpeg_shape(contents)[:2], tf.float32)
        need = size * DRAFT_MARGIN
        scale = need / tf.reduce_min(hw)
        wanted = tf.math.ceil(hw * scale)
        reduction = tf.reduce_min(tf.math.floordiv(hw, wanted))
        return tf.where(tf.reduce_min(hw) >= 2 * need, reduction, 1.0)

    ratio = tf.cond(tf.io.is_jpeg(contents), jpeg_ratio, lambda: 1.0)
    return tf.case([(ratio >= 8, decode(8)), (ratio >= 4, decode(4)), (ratio >= 2, decode(2))],
                   default=decode(1))
