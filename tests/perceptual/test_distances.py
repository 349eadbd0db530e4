"""Distances: hand values, monotonicity in distortion strength, deep features (LPIPS Eq. 1)
and the learned linear weights."""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
pytest.importorskip("tensorflow")

from cxr_tf.errors import CXRInputError, CXRModelError  # noqa: E402
from cxr_tf.perceptual.distances import (  # noqa: E402
    DeepFeatureDistance,
    default_feature_layers,
    l2,
    load_classifier,
    ms_ssim_distance,
    ms_ssim_scales,
    ssim_distance,
)
from cxr_tf.perceptual.scoring import score_2afc  # noqa: E402


def _imgs(n=4, size=64, seed=0):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    a = ndimage.gaussian_filter(rng.standard_normal((n, size, size)), (0, 3, 3))
    a = (a - a.min()) / (a.max() - a.min())
    return (0.2 + 0.6 * a).astype(np.float32)


def test_l2_hand_value_and_shape_errors():
    assert l2(np.zeros((2, 4, 4)), np.full((2, 4, 4), 0.5)).tolist() == [0.25, 0.25]
    with pytest.raises(CXRInputError, match="differ in shape"):
        l2(np.zeros((2, 4, 4)), np.zeros((2, 5, 5)))
    with pytest.raises(CXRInputError, match="gray"):
        l2(np.zeros((2, 4, 4, 3)), np.zeros((2, 4, 4, 3)))


@pytest.mark.parametrize("fn", [l2, ssim_distance, ms_ssim_distance])
def test_zero_on_identical_and_grows_with_noise(fn):
    x = _imgs()
    rng = np.random.default_rng(1)
    noise = rng.standard_normal(x.shape).astype(np.float32)
    assert np.allclose(fn(x, x), 0, atol=1e-5)
    d = [fn(x, np.clip(x + s * noise, 0, 1)).mean() for s in (0.02, 0.05, 0.1, 0.2)]
    assert all(a < b for a, b in zip(d, d[1:])), d


def test_ms_ssim_scales_fit_the_window():
    assert ms_ssim_scales(64, 7) == 4 and ms_ssim_scales(256, 11) == 5 and ms_ssim_scales(16, 11) == 1


@pytest.fixture(scope="module")
def tiny():
    return load_classifier("random:tiny_cnn", image_size=32, seed=0)


def test_default_layers_and_lpips_equation(tiny):
    assert default_feature_layers(tiny) == ["block1_relu", "block2_relu", "block3_relu"]
    dist = DeepFeatureDistance(tiny)
    x0, x1 = _imgs(3, 32), _imgs(3, 32, seed=5)
    v = dist.channel_distances(x0, x1)
    assert v.shape == (3, 16 + 32 + 64)
    # LPIPS Eq. 1 by hand for layer 1, channel-normalised features, mean over space
    f0 = [np.asarray(t, np.float64) for t in dist.extractor(x0[..., None])]
    f1 = [np.asarray(t, np.float64) for t in dist.extractor(x1[..., None])]
    want = 0.0
    for a, b in zip(f0, f1):
        a = a / (np.linalg.norm(a, axis=-1, keepdims=True) + 1e-10)
        b = b / (np.linalg.norm(b, axis=-1, keepdims=True) + 1e-10)
        want = want + ((a - b) ** 2).sum(-1).mean(axis=(1, 2))
    np.testing.assert_allclose(dist(x0, x1), want, rtol=1e-5)
    assert np.allclose(dist(x0, x0), 0)
    # other sizes are resized to the model's input
    assert dist(_imgs(2, 64), _imgs(2, 64, 3)).shape == (2,)


def test_bad_layer_is_clear(tiny):
    with pytest.raises(CXRModelError, match="4-D outputs"):
        DeepFeatureDistance(tiny, layers=["nope"])
    with pytest.raises(CXRModelError, match="run folder"):
        load_classifier("/nonexistent")


def test_fit_linear_learns_the_informative_channels(tiny):
    dist = DeepFeatureDistance(tiny)
    rng = np.random.default_rng(0)
    n, c = 400, sum(dist.channels)
    v0, v1 = rng.random((n, c)), rng.random((n, c))
    # raters see only channels 0-4: they choose p1 when it is closer there
    judge = ((v1[:, :5].sum(1) < v0[:, :5].sum(1)) * 0.8 + 0.1).astype(np.float32)
    base = score_2afc(v0.sum(1), v1.sum(1), judge)[0]
    lin = dist.fit_linear(v0[:300], v1[:300], judge[:300])
    held = score_2afc(v0[300:] @ lin.w, v1[300:] @ lin.w, judge[300:])[0]
    assert (lin.w >= 0).all() and lin.w[:5].mean() > 5 * lin.w[5:].mean()
    assert held > base + 0.1 and held > 0.8
    assert lin.name.endswith("+lin") and lin.extractor is dist.extractor


def test_load_classifier_from_run_folder_and_keras_file(tmp_path):
    import json

    from cxr_tf.models import build_model

    m = build_model("tiny_cnn", num_classes=2, image_size=32, freeze_until=0, head="gap")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "model.json").write_text(json.dumps({"config": m.get_config()}))
    m.save_weights(tmp_path / "checkpoints" / "best.weights.h5")
    m.save(tmp_path / "m.keras")
    x = np.random.default_rng(0).random((2, 32, 32, 1)).astype("float32")
    for spec in (str(tmp_path), str(tmp_path / "m.keras")):
        m2 = load_classifier(spec)
        np.testing.assert_allclose(np.asarray(m2(x)), np.asarray(m(x)), atol=1e-6)
        assert DeepFeatureDistance(m2).layers == ["block1_relu", "block2_relu", "block3_relu"]
