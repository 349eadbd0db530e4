"""Ensemble / TTA combination: mean, entropy and mutual information by hand."""
import numpy as np
import pytest

from cxr_tf.errors import CXRInputError
from cxr_tf.evaluation.predictive_uncertainty import check_compatible, combine


def test_agreeing_members_have_no_mutual_information():
    p = np.array([[[0.9, 0.1], [0.5, 0.5]]] * 3)  # 3 identical members, 2 images
    r = combine(p)
    assert np.allclose(r["mean"], p[0]) and np.allclose(r["mutual_information"], 0)
    assert r["entropy"][1] == pytest.approx(np.log(2))  # a 50/50 call: maximal entropy
    assert r["entropy"][0] == pytest.approx(-(0.9 * np.log(0.9) + 0.1 * np.log(0.1)))


def test_disagreeing_members():
    p = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # two confident members that disagree
    r = combine(p)
    assert np.allclose(r["mean"], [[0.5, 0.5]])
    assert r["mutual_information"][0] == pytest.approx(np.log(2), abs=1e-6)  # all from disagreement
    assert r["member_std"][0, 0] == pytest.approx(0.5)


def test_multilabel_binary_entropy():
    r = combine(np.array([[[0.5, 1.0]]]), multilabel=True)
    assert r["entropy"][0] == pytest.approx(np.log(2), abs=1e-6)


def test_errors():
    with pytest.raises(CXRInputError):
        combine(np.zeros((2, 3)))
    with pytest.raises(CXRInputError, match="disagree on class names"):
        check_compatible([{"class_names": ["a", "b"]}, {"class_names": ["b", "a"]}])


def test_tta_views_first_is_original_and_seeded():
    from cxr_tf.data.tta import predict_tta, tta_views

    x = np.random.default_rng(0).random((2, 32, 32, 1)).astype("float32")
    v = tta_views(x, 4, seed=1)
    assert v.shape == (4, 2, 32, 32, 1) and np.array_equal(v[0], x)
    assert not np.allclose(v[1], x) and np.array_equal(v, tta_views(x, 4, seed=1))
    m = predict_tta(lambda b: b.mean(axis=(1, 2)), x, 3)
    assert m.shape == (3, 2, 1)
