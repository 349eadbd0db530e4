"""Restoration losses for SSL pretraining (images in ``[0, 1]``).

``ssim`` (1 - SSIM, SPEC S0's default), ``ms_ssim`` (1 - MS-SSIM), ``mse`` (the official
Models Genesis loss) and ``l1_ssim`` (``alpha * (1 - SSIM) + (1 - alpha) * L1``, Zhao et
al. 2017's mix). SSIM comes from ``tf.image.ssim`` / ``tf.image.ssim_multiscale`` (Keras
has no SSIM); the rest is ``keras.ops``.
"""
from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from cxr_tf.errors import CXRConfigError

LOSSES = ("ssim", "ms_ssim", "mse", "l1_ssim")
_MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003


def _filter_size(image_size: int, scales: int = 1) -> int:
    """The SSIM Gaussian window (11) shrunk so that the coarsest scale still holds it."""
    return max(3, min(11, int(image_size) // 2 ** (scales - 1)))


def ssim(y_true, y_pred, filter_size: int | None = None):
    """Per-image SSIM ``(N,)`` for ``[0, 1]`` images."""
    size = filter_size or _filter_size(y_true.shape[1] or 11)
    return tf.image.ssim(tf.cast(y_true, tf.float32), tf.cast(y_pred, tf.float32), max_val=1.0, filter_size=size)


def psnr(y_true, y_pred):
    """Per-image PSNR ``(N,)`` in dB for ``[0, 1]`` images."""
    return tf.image.psnr(tf.cast(y_true, tf.float32), tf.cast(y_pred, tf.float32), max_val=1.0)


@keras.saving.register_keras_serializable(package="cxr_tf")
class RestorationLoss(keras.losses.Loss):
    """One of :data:`LOSSES`; ``alpha`` weighs 1 - SSIM in ``l1_ssim``.

    MS-SSIM uses as many of its 5 scales as the image size allows (each scale halves
    the image and the coarsest must still hold the Gaussian window).
    """

    def __init__(self, kind: str = "ssim", alpha: float = 0.84, name: str | None = None, **kwargs):
        if kind not in LOSSES:
            raise CXRConfigError(f"loss must be one of {LOSSES}; received {kind!r}")
        if not 0.0 <= alpha <= 1.0:
            raise CXRConfigError(f"alpha must be in [0, 1]; received {alpha}")
        super().__init__(name=name or f"{kind}_loss", **kwargs)
        self.kind = kind
        self.alpha = float(alpha)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.cast(y_pred, "float32")
        if self.kind == "mse":
            return ops.mean(ops.square(y_true - y_pred), axis=(1, 2, 3))
        if self.kind == "ms_ssim":
            size = int(y_true.shape[1])
            scales = 5
            while scales > 1 and size // 2 ** (scales - 1) < 11:
                scales -= 1
            weights = _MS_SSIM_WEIGHTS[:scales]
            ms = tf.image.ssim_multiscale(y_true, y_pred, max_val=1.0, power_factors=weights,
                                          filter_size=_filter_size(size, scales))
            return 1.0 - ms
        s = ssim(y_true, y_pred)
        if self.kind == "ssim":
            return 1.0 - s
        l1 = ops.mean(ops.abs(y_true - y_pred), axis=(1, 2, 3))
        return self.alpha * (1.0 - s) + (1.0 - self.alpha) * l1

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "alpha": self.alpha}


def get_loss(kind: str = "ssim", **kwargs) -> RestorationLoss:
    return RestorationLoss(kind, **kwargs)
