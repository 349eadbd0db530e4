"""Restoration losses on known cases."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from cxr_tf.errors import CXRConfigError
from cxr_tf.ssl.losses import LOSSES, RestorationLoss, psnr, ssim

rng = np.random.default_rng(0)
A = rng.random((3, 64, 64, 1)).astype(np.float32)
B = np.clip(A + rng.normal(0, 0.2, A.shape), 0, 1).astype(np.float32)
C = np.clip(A + rng.normal(0, 0.05, A.shape), 0, 1).astype(np.float32)


@pytest.mark.parametrize("kind", LOSSES)
def test_identical_is_zero_and_more_noise_is_worse(kind):
    loss = RestorationLoss(kind)
    assert float(loss(A, A)) == pytest.approx(0.0, abs=1e-5)
    small, big = float(loss(A, C)), float(loss(A, B))
    assert 0 < small < big


def test_known_values():
    np.testing.assert_allclose(float(RestorationLoss("mse")(A, B)), np.mean((A - B) ** 2), rtol=1e-5)
    s = ssim(A, B).numpy()
    np.testing.assert_allclose(float(RestorationLoss("ssim")(A, B)), np.mean(1 - s), rtol=1e-5)
    l1 = np.mean(np.abs(A - B))
    np.testing.assert_allclose(float(RestorationLoss("l1_ssim", alpha=0.5)(A, B)), 0.5 * np.mean(1 - s) + 0.5 * l1,
                               rtol=1e-5)
    # a constant image vs its negative: SSIM ~ 0 or below -> loss ~1 or more
    z, o = np.zeros((1, 32, 32, 1), np.float32), np.ones((1, 32, 32, 1), np.float32)
    assert float(RestorationLoss("ssim")(z, o)) > 0.99
    np.testing.assert_allclose(psnr(A, np.clip(A + 0.1, 0, 1)).numpy() > 19.0, True)
    assert np.isinf(psnr(A, A).numpy()).all()


def test_serialization_and_validation():
    loss = RestorationLoss("l1_ssim", alpha=0.3)
    back = RestorationLoss.from_config(loss.get_config())
    assert back.kind == "l1_ssim" and back.alpha == 0.3
    with pytest.raises(CXRConfigError, match="loss must be one of"):
        RestorationLoss("ssmi")
    assert float(RestorationLoss("ms_ssim")(tf.constant(A[:, :28, :28]), tf.constant(A[:, :28, :28]))) < 1e-5
