"""Pure-TensorFlow image preprocessing shared by training, evaluation and export.

One definition, used in three places: the tf.data training pipeline, offline
evaluation, and the exported SavedModel's signatures.  Because the very same ops
run in all three, a prediction served by TF Serving equals the offline one.

Image convention everywhere in cxr_tf: ``float32``, shape ``(H, W, 1)``, values in
``[0, 1]`` after a per-image min-max scaling (sources differ in bit depth and
windowing, so a fixed divisor would not put them on one scale; SPEC S0).
"""
from __future__ import annotations

import tensorflow as tf

from cxr_tf.io.graph import GRAPH_CHANNELS, tf_decode

#: Channels of every image cxr_tf feeds a model (grayscale).
CHANNELS = GRAPH_CHANNELS


def decode_image(contents: tf.Tensor) -> tf.Tensor:
    """Decode PNG (8/16-bit) or JPEG bytes to a float32 ``(H, W, 1)`` tensor.

    Other formats reach the graph as the 16-bit PNGs of the decode cache
    (:func:`cxr_tf.data.prepare_items`).

    RGB and RGBA inputs are converted to one luminance channel by the decoder;
    16-bit PNGs keep their precision. Values keep the file's own range.
    """
    # The same op validation runs eagerly (cxr_tf.io.graph): what validation proved
    # decodes is what decodes here.
    img = tf_decode(contents)
    img = tf.cast(img, tf.float32)
    img.set_shape([None, None, CHANNELS])
    return img


def scale_per_image(img: tf.Tensor, eps: float = 1e-6) -> tf.Tensor:
    """Min-max scale one image (or each image of a batch) to ``[0, 1]``.

    A constant image maps to all zeros rather than NaN.
    """
    img = tf.cast(img, tf.float32)
    axes = [-3, -2, -1]
    lo = tf.reduce_min(img, axis=axes, keepdims=True)
    hi = tf.reduce_max(img, axis=axes, keepdims=True)
    rng = hi - lo
    return tf.where(rng > eps, (img - lo) / tf.maximum(rng, eps), tf.zeros_like(img))


def resize_with_pad(img: tf.Tensor, image_size: int) -> tf.Tensor:
    """Aspect-preserving resize to ``image_size`` x ``image_size``, padding with zeros.

    Works on one image ``(H, W, C)`` or a batch ``(N, H, W, C)``; bilinear with
    antialiasing so large originals (2,000+ px) do not alias when shrunk.
    """
    img = tf.cast(img, tf.float32)
    shape = tf.shape(img)
    same = tf.logical_and(tf.equal(shape[-3], image_size), tf.equal(shape[-2], image_size))
    # An image already at the target size is returned as it is: the antialiased
    # resampler would reproduce it (up to rounding) at about the cost of decoding it
    # (benchmarks/input_pipeline.py measured it on 224 px files).
    out = tf.cond(same, lambda: img, lambda: _resize_and_pad(img, shape[-3], shape[-2], image_size))
    out.set_shape(img.shape[:-3].concatenate([image_size, image_size]).concatenate(img.shape[-1:]))
    return tf.clip_by_value(out, 0.0, 1.0)


def resized_size(height, width, image_size: int):
    """The aspect-kept size inside ``image_size``: the long side becomes ``image_size``,
    the short one ``round(short * image_size / long)`` (at least 1).

    Integer arithmetic on purpose: ``tf.image.resize_with_pad`` divides in float32, and
    its floor of e.g. 224 / (224 / 48) came out 47 in a graph but 48 eagerly, so eager
    callers and the tf.data / serving graph resized the same image differently.
    """
    m = tf.maximum(height, width)
    return (tf.maximum(1, (2 * height * image_size + m) // (2 * m)),
            tf.maximum(1, (2 * width * image_size + m) // (2 * m)))


def _resize_and_pad(img: tf.Tensor, height, width, image_size: int) -> tf.Tensor:
    nh, nw = resized_size(height, width, image_size)
    out = tf.image.resize(img, tf.stack([nh, nw]), method="bilinear", antialias=True)
    return tf.image.pad_to_bounding_box(out, (image_size - nh) // 2, (image_size - nw) // 2, image_size, image_size)


def prepare_image(contents: tf.Tensor, image_size: int) -> tf.Tensor:
    """Encoded bytes -> model-ready ``(image_size, image_size, 1)`` float32 in [0, 1]."""
    img = scale_per_image(decode_image(contents))
    img = resize_with_pad(img, image_size)
    img.set_shape([image_size, image_size, CHANNELS])
    return img


def prepare_float_batch(images: tf.Tensor, image_size: int) -> tf.Tensor:
    """A float batch ``(N, H, W, C)`` of any size and range -> model-ready batch.

    Multi-channel inputs are averaged to one channel (the mean of equal RGB
    channels is the gray image itself), then scaled per image and resized.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    if images.shape.rank != 4:
        raise ValueError(f"expected a batch of images (N, H, W, C); got shape {images.shape}")
    if images.shape[-1] != CHANNELS:
        images = tf.reduce_mean(images, axis=-1, keepdims=True)
    images = scale_per_image(images)
    images = resize_with_pad(images, image_size)
    return tf.ensure_shape(images, [None, image_size, image_size, CHANNELS])
