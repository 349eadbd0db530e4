"""CNN distortions: generator knobs change the graph, models round-trip, and tiny
models learn their task within a few seconds."""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")

from cxr_tf.distortions import apply_distortion, get_distortion, register_distortion  # noqa: E402
from cxr_tf.distortions.cnn import (  # noqa: E402
    DistortionGAN,
    GANConfig,
    GeneratorConfig,
    build_denoising_autoencoder,
    build_generator,
    dae_distortion,
    generator_distortion,
    train_denoising_autoencoder,
)
from cxr_tf.errors import CXRConfigError  # noqa: E402


def _smooth_images(n, size=32, seed=0):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    a = ndimage.gaussian_filter(rng.standard_normal((n, size, size)), (0, 2.5, 2.5))
    a -= a.min(axis=(1, 2), keepdims=True)
    a /= a.max(axis=(1, 2), keepdims=True)
    return (0.1 + 0.8 * a).astype(np.float32)


def _kinds(model):
    return [type(l).__name__ for l in model.layers]


@pytest.mark.parametrize(
    "cfg, present, absent",
    [
        (GeneratorConfig(32, 2, 4, skips=True, upsampling="transpose", norm="batch"),
         {"Concatenate", "Conv2DTranspose", "BatchNormalization"}, {"UpSampling2D", "Dropout"}),
        (GeneratorConfig(32, 3, 4, skips=False, dropout=0.3, upsampling="nearest", norm="instance"),
         {"UpSampling2D", "GroupNormalization", "Dropout"}, {"Concatenate", "Conv2DTranspose", "BatchNormalization"}),
        (GeneratorConfig(32, 1, 4, skips=True, upsampling="bilinear", norm="none"),
         {"UpSampling2D"}, {"BatchNormalization", "GroupNormalization"}),
    ],
)
def test_generator_knobs_shape_the_graph(cfg, present, absent):
    g = build_generator(cfg)
    kinds = set(_kinds(g))
    assert present <= kinds and not (absent & kinds)
    assert sum(l.name.startswith("enc") and l.name.endswith("_conv") for l in g.layers) == cfg.layers
    y = np.asarray(g(np.random.rand(2, 32, 32, 1).astype("float32")))
    assert y.shape == (2, 32, 32, 1) and 0 <= y.min() and y.max() <= 1
    if cfg.upsampling != "transpose":
        assert all(l.name == f"dec{i}_up" for i, l in
                   zip(range(cfg.layers, 0, -1), [l for l in g.layers if type(l).__name__ == "UpSampling2D"]))


def test_config_errors():
    with pytest.raises(CXRConfigError, match="upsampling"):
        GeneratorConfig(upsampling="pixelshuffle")
    with pytest.raises(CXRConfigError, match="multiple"):
        GeneratorConfig(image_size=36, layers=3)
    with pytest.raises(CXRConfigError, match="loss"):
        GANConfig(loss="wgan")


def test_generator_save_load_round_trip(tmp_path):
    g = build_generator(GeneratorConfig(32, 2, 4, norm="instance", dropout=0.2))
    x = np.random.default_rng(0).random((2, 32, 32, 1)).astype("float32")
    p = tmp_path / "g.keras"
    g.save(p)
    g2 = keras.models.load_model(p)
    assert [l.name for l in g2.layers] == [l.name for l in g.layers]
    np.testing.assert_allclose(np.asarray(g2(x, training=False)), np.asarray(g(x, training=False)), atol=1e-6)


def test_gan_learns_to_imitate_a_real_distortion():
    keras.utils.set_random_seed(0)
    x = _smooth_images(32)
    target = lambda b, rng: np.stack([apply_distortion("gaussian_blur", i, 0.6, rng)[0] for i in b[..., 0]])[..., None]
    gan = DistortionGAN(GANConfig(GeneratorConfig(32, 2, 8, skips=True), disc_layers=2, disc_filters=8,
                                  l1_weight=20.0, lr=2e-3))
    hist = gan.fit(x[..., None], target, steps=60, batch_size=8)
    first, last = np.mean([h["l1"] for h in hist[:5]]), np.mean([h["l1"] for h in hist[-5:]])
    assert last < 0.5 * first
    d = gan.discriminator([x[:2, ..., None], x[:2, ..., None]])
    assert tuple(d.shape) == (2, 8, 8, 1)
    dist = generator_distortion(gan.generator, name="gan_test")
    register_distortion(dist)
    out0, _ = get_distortion("gan_test").apply(x[0], 0.0)
    out1, p = get_distortion("gan_test").apply(x[0], 1.0)
    np.testing.assert_allclose(out0, x[0], atol=1e-6)
    assert p["blend"] == 1.0 and np.abs(out1 - x[0]).mean() > 1e-3


def test_dae_denoises_and_is_a_distortion():
    keras.utils.set_random_seed(0)
    x = _smooth_images(96)
    m = build_denoising_autoencoder(32, (8, 16))
    hist = train_denoising_autoencoder(m, x, noise_sigma=0.1, epochs=12, batch_size=16)
    assert hist[-1] < hist[0]
    test = _smooth_images(16, seed=1)
    rng = np.random.default_rng(5)
    noisy = np.clip(test + rng.normal(0, 0.1, test.shape), 0, 1).astype("float32")
    den = np.asarray(m(noisy[..., None]))[..., 0]
    assert np.mean((den - test) ** 2) < 0.7 * np.mean((noisy - test) ** 2)
    d = dae_distortion(m, name="dae_test")
    assert np.array_equal(d.apply(test[0], 0.0)[0], test[0])
    a, pa = d.apply(test[0], 0.5, 3)
    assert pa["noise_sigma"] == pytest.approx(0.15) and np.array_equal(a, d.apply(test[0], 0.5, 3)[0])
    with pytest.raises(CXRConfigError, match="32x32"):
        d.apply(np.zeros((16, 16)), 0.5)
