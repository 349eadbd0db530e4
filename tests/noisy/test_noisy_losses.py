import numpy as np
import pytest
import tensorflow as tf

from cxr_tf.errors import CXRConfigError
from cxr_tf.noisy.losses import MaskedBinaryCrossentropy, MentorNetBinaryCrossentropy
from cxr_tf.noisy.methods import (
    CHEXPERT_HIERARCHY, conditional_weights, derive_parent_labels, freeze_all_but, hierarchical_probabilities,
    make_masked_mixup, relabel, restrict_hierarchy,
)
from cxr_tf.noisy.uncertainty import pack


def _grad(loss, t, w, p):
    p = tf.Variable(p)
    with tf.GradientTape() as tape:
        v = loss(tf.constant(pack(t, w)), p)
    return float(v), tape.gradient(v, p).numpy()


def test_masked_entries_have_zero_gradient_and_loss_is_mean_over_known():
    t = np.array([[1, 0, 1], [0, 1, 0]], np.float32)
    w = np.array([[1, 0, 1], [1, 1, 0]], np.float32)
    p = np.array([[0.8, 0.3, 0.6], [0.2, 0.9, 0.99]], np.float32)
    v, g = _grad(MaskedBinaryCrossentropy(), t, w, p)
    assert np.all(g[w == 0] == 0) and np.all(g[w == 1] != 0)
    known = w == 1
    ref = -np.mean(np.where(t == 1, np.log(p), np.log(1 - p))[known])
    assert v == pytest.approx(ref, rel=1e-5)
    # changing a masked target or prediction changes nothing
    t2, p2 = t.copy(), p.copy()
    t2[0, 1], p2[1, 2] = 1.0, 0.01
    assert _grad(MaskedBinaryCrossentropy(), t2, w, p2)[0] == pytest.approx(v, rel=1e-6)


def test_mentornet_downweights_high_loss_samples():
    t = np.array([[1, 1], [1, 1]], np.float32)
    w = np.ones_like(t)
    p = np.array([[0.9, 0.9], [0.1, 0.1]], np.float32)  # sample 1 loss 0.105, sample 2 loss 2.3
    v_plain, g_plain = _grad(MaskedBinaryCrossentropy(), t, w, p)
    v_m, g_m = _grad(MentorNetBinaryCrossentropy(threshold=0.5, high_loss_weight=0.25), t, w, p)
    np.testing.assert_allclose(g_m[0], g_plain[0], rtol=1e-6)  # below threshold: untouched
    np.testing.assert_allclose(g_m[1], 0.25 * g_plain[1], rtol=1e-6)  # above: weighted, not dropped
    assert v_m < v_plain
    with pytest.raises(CXRConfigError):
        MentorNetBinaryCrossentropy(high_loss_weight=2.0)
    cfg = MentorNetBinaryCrossentropy(threshold=0.3).get_config()
    assert MentorNetBinaryCrossentropy.from_config(cfg).threshold == 0.3


NAMES = ["Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Consolidation", "Pneumonia", "Edema"]


def test_hierarchy_inference_never_exceeds_parent():
    h = restrict_hierarchy(NAMES)
    assert h == {"Cardiomegaly": "Enlarged Cardiomediastinum", "Pneumonia": "Consolidation",
                 "Edema": "Lung Opacity", "Consolidation": "Lung Opacity"}
    rng = np.random.default_rng(0)
    cond = rng.uniform(size=(1000, len(NAMES))).astype(np.float32)
    marg = hierarchical_probabilities(cond, NAMES, h)
    for c, p in h.items():
        assert np.all(marg[:, NAMES.index(c)] <= marg[:, NAMES.index(p)] + 1e-7)
    # recursive: P(pneumonia) = P(pn|cons) P(cons|LO) P(LO)
    i = [NAMES.index(n) for n in ("Pneumonia", "Consolidation", "Lung Opacity")]
    np.testing.assert_allclose(marg[:, i[0]], cond[:, i[0]] * cond[:, i[1]] * cond[:, i[2]], rtol=1e-5)
    # roots unchanged
    np.testing.assert_allclose(marg[:, 2], cond[:, 2])


def test_hierarchy_skips_missing_parents_and_finds_cycles():
    assert restrict_hierarchy(["Pneumonia", "Lung Opacity"]) == {"Pneumonia": "Lung Opacity"}
    assert restrict_hierarchy(["Cardiomegaly", "Edema"]) == {}
    with pytest.raises(CXRConfigError, match="cycle"):
        restrict_hierarchy(["a", "b"], {"a": "b", "b": "a"})


def test_conditional_weights_and_derived_parents():
    h = restrict_hierarchy(NAMES)
    nan = np.nan
    raw = np.array([[nan, 1, nan, nan, 1, 0], [0, 0, 0, 0, 0, 0]], np.float32)
    y = derive_parent_labels(raw, NAMES, h)
    assert y[0, 0] == 1 and y[0, 3] == 1 and y[0, 2] == 1  # Cardiomegaly->ECM, Pneumonia->Cons->LO
    t = np.nan_to_num(y)
    w = (~np.isnan(y)).astype(np.float32)
    wc = conditional_weights(t, w, NAMES, h)
    assert wc[0, 1] == 1 and wc[0, 4] == 1  # parents positive: children trained
    assert wc[1, 1] == 0 and wc[1, 4] == 0 and wc[1, 5] == 0  # parents negative: children masked
    assert wc[1, 0] == 1 and wc[1, 2] == 1  # roots always kept


def test_masked_mixup_mixes_only_known_targets():
    mix = make_masked_mixup(alpha=0.4, seed=1)
    images = tf.constant(np.stack([np.zeros((8, 8, 1)), np.ones((8, 8, 1))]).astype(np.float32))
    t = np.array([[1, 0], [0, 1]], np.float32)
    w = np.array([[1, 1], [1, 0]], np.float32)  # sample 2's label 2 is masked
    for _ in range(5):
        x, packed = mix(images, tf.constant(pack(t, w)))
        x, packed = x.numpy(), packed.numpy()
        tm, wm = packed[:, :2], packed[:, 2:]
        for i in range(2):
            lam = 1.0 - x[i].mean() if i == 0 else x[i].mean()  # share of the sample's own image
            # label 1 known in both: linear mix
            own, other = t[i, 0], t[1 - i, 0]
            if abs(x[i].mean() - (0.0 if i == 0 else 1.0)) > 1e-6:  # really mixed with the other
                assert tm[i, 0] == pytest.approx(lam * own + (1 - lam) * other, abs=1e-5)
            # label 2: only sample 1 knows it (target 0) -> mixed target 0 with weight = its share
            assert tm[i, 1] == pytest.approx(0.0, abs=1e-6)
            assert 0.0 <= wm[i, 1] <= 1.0 and wm[i, 0] == pytest.approx(1.0, abs=1e-6)


def test_relabel_and_freeze_all_but_last():
    raw = np.array([[-1, 0, 1], [0, 1, -1]], np.float32)
    t = np.array([[0, 0, 1], [0, 1, 0]], np.float32)
    w = np.array([[0, 1, 1], [1, 1, 0]], np.float32)
    p = np.array([[0.7, 0.95, 0.05], [0.5, 0.6, 0.2]], np.float32)
    t2, w2, c = relabel(raw, t, w, p, confident=0.9)
    assert t2[0, 0] == pytest.approx(0.7) and w2[0, 0] == 1 and t2[1, 2] == pytest.approx(0.2)
    assert t2[0, 1] == 1 and t2[0, 2] == 0  # confident disagreements flipped
    assert t2[1, 0] == 0 and t2[1, 1] == 1  # unconfident: kept
    assert c == {"soft_filled": 2, "flipped_to_1": 1, "flipped_to_0": 1}
    from cxr_tf.models import build_model

    m = build_model("tiny_cnn", num_classes=3, image_size=32, head="fc8", freeze_until=0, multilabel=True)
    n = freeze_all_but(m)
    assert n == 8 * 3 + 3
    assert [l.name for l in m.layers if l.trainable and l.weights] == ["predictions"]
