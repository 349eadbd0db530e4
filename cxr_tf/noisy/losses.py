"""Masked multi-label losses for noisy CXR labels (keras.ops, any backend).

``y_true`` is the packed ``[targets, weights]`` matrix ``(N, 2L)`` of
:func:`cxr_tf.noisy.uncertainty.pack`: a weight of 0 removes an entry (its
gradient is exactly zero), fractional weights down-weight it. Keras' own
``BinaryCrossentropy`` takes one weight per sample, not per entry, hence these.
"""
from __future__ import annotations

import keras
from keras import ops

from cxr_tf.errors import CXRConfigError

_EPS = 1e-7


def masked_bce_terms(y_true, y_pred):
    """Per-entry BCE ``(N, L)`` and weights ``(N, L)`` from packed ``y_true`` and probabilities."""
    n = ops.shape(y_pred)[-1]
    t = ops.cast(y_true[..., :n], y_pred.dtype)
    w = ops.cast(y_true[..., n:], y_pred.dtype)
    p = ops.clip(y_pred, _EPS, 1.0 - _EPS)
    bce = -(t * ops.log(p) + (1.0 - t) * ops.log(1.0 - p))
    return bce, w


@keras.saving.register_keras_serializable(package="cxr_tf")
class MaskedBinaryCrossentropy(keras.losses.Loss):
    """Multi-label BCE averaged over the known (weighted) entries of the batch.

    ``loss = sum_ij w_ij * bce_ij / sum_ij w_ij``. Returned per sample (scaled so
    that Keras' batch mean gives that ratio), so ``sample_weight`` still applies.
    """

    def __init__(self, name="masked_bce", **kwargs):
        super().__init__(name=name, **kwargs)

    def sample_factors(self, bce, w):
        """Per-sample multipliers (1 here; MentorNet overrides)."""
        return ops.ones_like(bce[:, 0])

    def call(self, y_true, y_pred):
        bce, w = masked_bce_terms(y_true, y_pred)
        v = ops.stop_gradient(self.sample_factors(bce, w))
        per_sample = v * ops.sum(w * bce, axis=-1)
        batch = ops.cast(ops.shape(bce)[0], bce.dtype)
        return per_sample * batch / ops.maximum(ops.sum(w), _EPS)

    def get_config(self):
        return super().get_config()


@keras.saving.register_keras_serializable(package="cxr_tf")
class MentorNetBinaryCrossentropy(MaskedBinaryCrossentropy):
    """Masked BCE with MentorNet-style per-sample weights (Jiang et al. 2018; seed 001).

    A sample whose mean BCE over its known labels exceeds ``threshold`` is likely
    mislabelled: it is not dropped but weighted by ``high_loss_weight`` (the weight is
    a constant for the gradient, as MentorNet's weights are). The seed tried
    thresholds 0.3 and 0.5.

    Args:
        threshold: per-sample loss above which the weight applies.
        high_loss_weight: weight in [0, 1] of those samples (0 would drop them).
    """

    def __init__(self, threshold: float = 0.5, high_loss_weight: float = 0.5, name="mentornet_bce", **kwargs):
        super().__init__(name=name, **kwargs)
        if threshold <= 0:
            raise CXRConfigError(f"threshold must be > 0; received threshold={threshold}")
        if not 0.0 <= high_loss_weight <= 1.0:
            raise CXRConfigError(f"high_loss_weight must be in [0, 1]; received {high_loss_weight}")
        self.threshold = float(threshold)
        self.high_loss_weight = float(high_loss_weight)

    def sample_factors(self, bce, w):
        mean = ops.sum(w * bce, axis=-1) / ops.maximum(ops.sum(w, axis=-1), _EPS)
        return ops.where(mean > self.threshold, self.high_loss_weight, 1.0)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold, "high_loss_weight": self.high_loss_weight}
