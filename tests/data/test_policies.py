"""Augmentation policies (cxr_tf.data.augment): the CXR extras, MixUp / CutMix, composition."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from cxr_tf.data.augment import (
    EXTRAS, POLICIES, AugmentPolicy, apply_policy, apply_policy_with_labels, get_policy, random_elastic,
)
from cxr_tf.datasets.synthetic import make_synthetic_cxr
from cxr_tf.errors import CXRConfigError

SEED = tf.constant([3, 7], tf.int64)


def _cxr(n=8, size=32, seed=0) -> np.ndarray:
    """Synthetic chest films as a (n, size, size, 1) float batch, each scaled to [0, 1]."""
    ds = make_synthetic_cxr(n=n, image_size=size, seed=seed)
    x = np.stack([np.asarray(i, np.float32) for i in ds.items])[..., None]
    lo, hi = x.min(axis=(1, 2, 3), keepdims=True), x.max(axis=(1, 2, 3), keepdims=True)
    return (x - lo) / (hi - lo)


def _per_image(a) -> np.ndarray:
    return np.asarray(a).reshape(len(a), -1)


def _clahe(images):
    layer = keras.layers.ContrastLimitedAdaptiveHistogramEqualization(
        value_range=(0, 1), clip_limit=2.0, tile_grid_size=(8, 8))
    return np.asarray(layer(tf.constant(images)))


# --- names and composition -------------------------------------------------------------

def test_plus_composes_named_policy_and_extras():
    p = get_policy("moderate+clahe+mixup")
    base = POLICIES["moderate"]
    assert p.name == "moderate+clahe+mixup"
    for f in ("rotation_deg", "shift_x", "shift_y", "shear_deg", "crop_pad", "brightness", "contrast"):
        assert getattr(p, f) == getattr(base, f)  # the named policy's geometry and jitter kept
    assert (p.clahe, p.mixup, p.cutmix, p.elastic) == (EXTRAS["clahe"]["clahe"], EXTRAS["mixup"]["mixup"], 0.0, 0.0)
    assert p.geometric and p.photometric and p.keras_image_ops and p.label_mixing
    assert {"name", "rotation_deg", "clahe", "mixup"} <= set(p.describe())  # inspectable
    alone = get_policy("clahe")  # an extra alone = none + extra
    assert alone.clahe == EXTRAS["clahe"]["clahe"] and not alone.geometric and not alone.photometric
    assert get_policy("s2+elastic+cutmix").describe() == {**POLICIES["s2"].describe(), "name": "s2+elastic+cutmix",
                                                          "elastic": EXTRAS["elastic"]["elastic"], "cutmix": 1.0}
    assert get_policy(None).identity and get_policy("none").identity


@pytest.mark.parametrize("name, match", [
    ("sparkles", r"unknown augmentation policy 'sparkles'; named policies: \[.*'moderate'"),
    ("moderate+sparkles", r"unknown augmentation extra 'sparkles' in 'moderate\+sparkles'; extras: \[.*'clahe'"),
    ("moderate+", r"unknown augmentation extra ''"),
])
def test_unknown_policy_name_is_a_clear_config_error(name, match):
    with pytest.raises(CXRConfigError, match=match):
        get_policy(name)
    with pytest.raises(ValueError):  # also a ValueError, for callers that catch that
        apply_policy(tf.zeros((1, 8, 8, 1)), name, SEED)


# --- CXR-sensible extras ------------------------------------------------------------------

def test_clahe_gives_a_low_contrast_image_contrast():
    x = _cxr(8, 64)
    low = 0.45 + 0.1 * x  # the film squeezed into [0.45, 0.55]
    out = apply_policy(tf.constant(low), AugmentPolicy(name="c", clahe=1.0), SEED).numpy()
    assert out.shape == low.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    gain = _per_image(out).std(1) / _per_image(low).std(1)
    assert (gain > 1.2).all(), gain
    assert np.allclose(out, _clahe(low), atol=1e-5)  # exactly the Keras layer


def test_clahe_extra_applies_to_about_half_the_images():
    x = 0.45 + 0.1 * _cxr(16, 32)
    out = apply_policy(tf.constant(x), "clahe", SEED).numpy()
    changed = np.abs(_per_image(out - x)).max(1) > 1e-6
    assert 3 <= changed.sum() <= 13, changed  # probability 0.5 per image
    np.testing.assert_allclose(out[changed], _clahe(x)[changed], atol=1e-5)
    np.testing.assert_array_equal(out[~changed], x[~changed])


def test_brightness_is_a_per_image_shift_and_contrast_a_scale_about_the_mean():
    x = 0.3 + 0.4 * _cxr(8, 32)  # in [0.3, 0.7]: the jitter below never clips
    b = apply_policy(tf.constant(x), AugmentPolicy(name="b", brightness=0.1), SEED).numpy()
    shift = _per_image(b - x)
    assert np.allclose(shift, shift[:, :1], atol=1e-6)  # one constant per image
    assert (np.abs(shift[:, 0]) <= 0.1 + 1e-6).all() and np.ptp(shift[:, 0]) > 0.01
    c = apply_policy(tf.constant(x), AugmentPolicy(name="c", contrast=0.2), SEED).numpy()
    m = x.mean(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(c.mean(axis=(1, 2, 3), keepdims=True), m, atol=1e-5)  # mean kept
    k = _per_image(c).std(1) / _per_image(x).std(1)
    assert ((k >= 0.8 - 1e-4) & (k <= 1.2 + 1e-4)).all() and np.ptp(k) > 0.01
    np.testing.assert_allclose(c - m, k[:, None, None, None] * (x - m), atol=1e-5)
    # the "bc" extra: both, clipped to [0, 1] on full-range films
    full = _cxr(8, 32)
    bc = apply_policy(tf.constant(full), "bc", SEED).numpy()
    assert bc.shape == full.shape and bc.min() >= 0.0 and bc.max() <= 1.0
    assert (np.abs(_per_image(bc - full)).mean(1) > 1e-3).all()


def test_small_elastic_changes_every_image_and_keeps_the_mean():
    x = _cxr(16, 64)
    out = apply_policy(tf.constant(x), "elastic", SEED).numpy()
    assert out.shape == x.shape and out.min() >= 0.0 and out.max() <= 1.0
    diff = np.abs(_per_image(out - x)).mean(1)
    assert (diff > 1e-3).all(), diff  # every image deformed ...
    one_px = np.abs(_per_image(np.roll(x, 1, axis=2) - x)).mean(1)
    assert (diff < one_px).all(), (diff, one_px)  # ... slightly: less than a one-pixel shift at 64 px
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), x.mean(axis=(1, 2, 3)), atol=0.01)
    np.testing.assert_array_equal(out, apply_policy(tf.constant(x), "elastic", SEED).numpy())  # stateless
    assert not np.allclose(out, apply_policy(tf.constant(x), "elastic", SEED + 1).numpy())


def test_elastic_displacement_is_small_smooth_and_independent_in_x_and_y():
    """Ramps read the field back: channel 0 = x, channel 1 = y. Keras 3.15's
    RandomElasticTransform fails the independence check (dx == dy)."""
    n = 64
    yy, xx = np.meshgrid(np.arange(n, dtype=np.float32), np.arange(n, dtype=np.float32), indexing="ij")
    ramps = np.repeat(np.stack([xx, yy], -1)[None], 8, axis=0)
    out = random_elastic(tf.constant(ramps), 0.01, SEED).numpy()
    inner = (slice(None), slice(8, -8), slice(8, -8))
    dx, dy = (out - ramps)[inner + (0,)], (out - ramps)[inner + (1,)]
    for d in (dx, dy):
        assert 0.3 < d.std() < 1.0  # about 1% of 64 px
        assert np.corrcoef(d[:, :, :-1].ravel(), d[:, :, 1:].ravel())[0, 1] > 0.9  # smooth, not pixel jitter
    assert abs(np.corrcoef(dx.ravel(), dy.ravel())[0, 1]) < 0.3


# --- label mixing (keras.layers.MixUp / CutMix) -----------------------------------------------

def test_mixup_mixes_images_and_labels_with_the_same_weights():
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).random((8, 16, 16, 1)).astype(np.float32)
    y = np.eye(8, dtype=np.float32)  # one label per image: a label row names the mixed images
    im, lab = apply_policy_with_labels(tf.constant(x), tf.constant(y), "mixup", SEED)
    im, lab = im.numpy(), lab.numpy()
    assert im.shape == x.shape and lab.shape == y.shape
    np.testing.assert_allclose(lab.sum(1), 1.0, atol=1e-5)
    assert (lab >= -1e-6).all() and ((lab > 1e-6).sum(1) <= 2).all()
    np.testing.assert_allclose(im, np.einsum("ij,jhwc->ihwc", lab, x), atol=1e-5)  # the convex mix
    assert (lab.max(1) < 0.99).any()  # something was mixed
    # with class labels (3 classes) the rows still sum to 1
    keras.utils.set_random_seed(1)
    _, lab3 = apply_policy_with_labels(tf.constant(x), tf.constant(np.eye(3, dtype=np.float32)[np.arange(8) % 3]),
                                       "mixup", SEED)
    np.testing.assert_allclose(lab3.numpy().sum(1), 1.0, atol=1e-5)


def test_cutmix_pastes_a_box_and_weights_labels_by_its_area():
    keras.utils.set_random_seed(0)
    h = w = 32
    x = np.random.default_rng(1).random((8, h, w, 1)).astype(np.float32)  # distinct pixels everywhere
    y = np.eye(8, dtype=np.float32)
    im, lab = apply_policy_with_labels(tf.constant(x), tf.constant(y), "cutmix", SEED)
    im, lab = im.numpy(), lab.numpy()
    np.testing.assert_allclose(lab.sum(1), 1.0, atol=1e-5)
    pasted_any = False
    for i in range(8):
        others = [j for j in np.flatnonzero(lab[i] > 1e-6) if j != i]
        pasted = im[i, ..., 0] != x[i, ..., 0]
        if not others:
            assert not pasted.any()
            continue
        (j,) = others
        assert (im[i, ..., 0][pasted] == x[j, ..., 0][pasted]).all()  # the patch comes from image j
        rows, cols = np.flatnonzero(pasted.any(1)), np.flatnonzero(pasted.any(0))
        if pasted.any():
            pasted_any = True
            box = np.zeros_like(pasted)
            box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
            np.testing.assert_array_equal(pasted, box)  # one rectangle
        # label weight = pasted area (Keras computes it from the real-valued box: +- one row/column)
        assert abs(pasted.mean() - lab[i, j]) <= (h + w + 1) / (h * w)
        assert lab[i, i] == pytest.approx(1 - lab[i, j], abs=1e-5)
    assert pasted_any


def test_composed_policy_applies_each_part_in_turn():
    """'moderate+clahe+mixup' = the moderate warp and jitter, CLAHE on about half the
    images, then MixUp of the result (images and labels)."""
    keras.utils.set_random_seed(0)
    x = _cxr(16, 32)
    moderate = apply_policy(tf.constant(x), "moderate", SEED).numpy()
    assert np.abs(moderate - x).mean() > 0.01  # the geometry / jitter part
    with_clahe = apply_policy(tf.constant(x), "moderate+clahe", SEED).numpy()
    changed = np.abs(_per_image(with_clahe - moderate)).max(1) > 1e-6
    assert 0 < changed.sum() < 16
    np.testing.assert_allclose(with_clahe[changed], _clahe(moderate)[changed], atol=1e-5)
    np.testing.assert_allclose(with_clahe[~changed], moderate[~changed], atol=1e-6)
    im, lab = apply_policy_with_labels(tf.constant(x), tf.constant(np.eye(16, dtype=np.float32)),
                                       "moderate+clahe+mixup", SEED)
    im, lab = im.numpy(), lab.numpy()
    np.testing.assert_allclose(lab.sum(1), 1.0, atol=1e-5)
    assert (lab.max(1) < 0.99).any()
    np.testing.assert_allclose(im, np.einsum("ij,jhwc->ihwc", lab, with_clahe), atol=1e-5)


def test_policies_run_inside_the_training_pipeline():
    """Every extra in a tf.data map (graph mode, the per-batch seed) keeps shape and range."""
    import pandas as pd

    from cxr_tf.data import build_pipeline
    from cxr_tf.datasets import CXRDataset

    x = (_cxr(16, 32)[..., 0] * 255).astype(np.uint8)
    ds = CXRDataset(x, np.eye(2, dtype=np.float32)[np.arange(16) % 2], ["a", "b"],
                    pd.DataFrame({"patient_id": [f"p{i}" for i in range(16)]}), name="mem")
    pipe = build_pipeline(ds, 32, 8, training=True, policy="moderate+clahe+elastic+bc+cutmix", balance="none", seed=0)
    images, labels = next(iter(pipe.dataset))
    assert images.shape == (8, 32, 32, 1) and labels.shape == (8, 2)
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0
    np.testing.assert_allclose(labels.numpy().sum(1), 1.0, atol=1e-5)
