"""NumPy-only preprocessing for the portable exports (ONNX, TFLite).

ONNX has no PNG/JPEG decoder, and neither ONNX nor TFLite's builtin op set has TF's
antialiased resize (``ScaleAndTranslate``), so the portable models take the
model-ready batch ``(N, S, S, 1)`` float32 in ``[0, 1]``. A client without
TensorFlow turns decoded pixels into that batch with :func:`preprocess_images`, a
NumPy transcription of :func:`cxr_tf.data.preprocess.prepare_float_batch` (the
SavedModel's ``predict_images`` preprocessing). ``tests/export`` checks the two
agree within 1e-5 on real radiographs of several sizes and channel counts.

The file imports NumPy only, so it can be copied next to an ``.onnx`` or
``.tflite`` file and used on its own::

    import numpy as np, onnxruntime as ort
    from PIL import Image
    from preprocess_np import preprocess_images
    x = preprocess_images(np.asarray(Image.open("cxr.png"), np.float32)[None, ..., None], 224)
    probs = ort.InferenceSession("model.onnx").run(None, {"images": x})[0]
"""
from __future__ import annotations

import math

import numpy as np

#: Channels of every image cxr_tf feeds a model (grayscale).
CHANNELS = 1
_EPS = np.float32(1e-6)


def scale_per_image(images: np.ndarray) -> np.ndarray:
    """Min-max scale each image of ``(N, H, W, C)`` to ``[0, 1]``; a constant image -> zeros."""
    x = images.astype(np.float32, copy=False)
    lo = x.min(axis=(1, 2, 3), keepdims=True)
    hi = x.max(axis=(1, 2, 3), keepdims=True)
    rng = hi - lo
    out = (x - lo) / np.maximum(rng, _EPS)
    return np.where(rng > _EPS, out, np.float32(0)).astype(np.float32)


def _triangle_weights(out_size: int, in_size: int) -> np.ndarray:
    """``(out_size, in_size)`` resampling matrix of TF's ``ScaleAndTranslate`` with the
    triangle kernel and ``antialias=True`` (what ``tf.image.resize(..., "bilinear",
    antialias=True)`` runs), transcribed from ``scale_and_translate_op.cc``: float32
    arithmetic in the kernel's order, so the result matches it to rounding."""
    f32 = np.float32
    scale = f32(out_size) / f32(in_size)
    inv_scale = f32(1.0) / scale
    kernel_scale = max(inv_scale, f32(1.0))  # widen the kernel only when shrinking (low-pass)
    one_over_kernel_scale = f32(1.0) / kernel_scale
    radius = f32(1.0) * kernel_scale
    w = np.zeros((out_size, in_size), np.float32)
    for x in range(out_size):
        sample = (f32(x) + f32(0.5)) * inv_scale
        if sample < 0 or sample > in_size:
            continue
        start = min(max(int(math.ceil(sample - radius - f32(0.5))), 0), in_size - 1)
        end = min(max(int(math.floor(sample + radius - f32(0.5))), 0), in_size - 1) + 1
        src = np.arange(start, end, dtype=np.float32)
        pos = np.abs((src + f32(0.5) - sample) * one_over_kernel_scale)
        weights = np.where(pos < 1, f32(1) - pos, f32(0)).astype(np.float32)
        total = np.float32(0)
        for v in weights:  # sequential float32 sum, as the kernel accumulates
            total = np.float32(total + v)
        if abs(total) >= 1000.0 * np.finfo(np.float32).tiny:
            w[x, start:end] = weights * (f32(1.0) / total)
    return w


def resize_with_pad(images: np.ndarray, image_size: int) -> np.ndarray:
    """Aspect-preserving antialiased bilinear resize of ``(N, H, W, C)`` to ``S x S``,
    zero-padded and clipped to ``[0, 1]``; an image already ``S x S`` is only clipped
    (as :func:`cxr_tf.data.preprocess.resize_with_pad`)."""
    n, h, w, c = images.shape
    s = int(image_size)
    x = images.astype(np.float32, copy=False)
    if (h, w) != (s, s):
        # integer arithmetic, as cxr_tf.data.preprocess.resized_size: long side -> s,
        # short side -> round(short * s / long), centred
        m = max(h, w)
        rh, rw = max(1, (2 * h * s + m) // (2 * m)), max(1, (2 * w * s + m) // (2 * m))
        ph, pw = (s - rh) // 2, (s - rw) // 2
        wy, wx = _triangle_weights(rh, h), _triangle_weights(rw, w)
        # columns first, then rows: the kernel's order (GatherColumns, then GatherRows)
        tmp = np.einsum("nhwc,ow->nhoc", x, wx, dtype=np.float32)
        resized = np.einsum("nhwc,oh->nowc", tmp, wy, dtype=np.float32)
        x = np.zeros((n, s, s, c), np.float32)
        x[:, ph:ph + rh, pw:pw + rw, :] = resized
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def preprocess_images(images, image_size: int) -> np.ndarray:
    """Decoded pixels -> the model-ready batch the portable exports take.

    Equal (within 1e-5) to the SavedModel's ``predict_images`` preprocessing: channels
    averaged to one gray channel, per-image min-max scaling to ``[0, 1]``, then an
    aspect-preserving antialiased bilinear resize with zero padding.

    Args:
        images: ``(N, H, W, C)`` or one ``(H, W, C)`` / ``(H, W)`` image, any numeric
            dtype and range (8-bit, 16-bit, float), finite.
        image_size: ``S``, the side the model expects (``image_size`` in the metadata).

    Returns:
        float32 ``(N, S, S, 1)`` in ``[0, 1]``.

    Raises:
        ValueError: wrong rank, an empty dimension or non-finite values.
    """
    x = np.asarray(images)
    if x.ndim == 2:
        x = x[None, ..., None]
    elif x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or 0 in x.shape[1:]:
        raise ValueError(f"expected images (N, H, W, C) with non-empty H, W, C; got shape {x.shape}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError("images: values must be finite (no NaN/Inf)")
    if x.shape[-1] != CHANNELS:
        x = x.mean(axis=-1, keepdims=True, dtype=np.float32)
    return resize_with_pad(scale_per_image(x), image_size)
