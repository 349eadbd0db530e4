"""Calibration: ECE, temperature scaling, reliability diagram, per-class operating points."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from cxr_tf.errors import CXRInputError
from cxr_tf.evaluation.calibration import (
    apply_temperature,
    calibration_summary,
    decide,
    ece_with_ci,
    expected_calibration_error,
    fit_temperature,
    operating_points,
    plot_reliability_diagram,
    reliability_table,
)
from cxr_tf.evaluation.thresholds import choose_threshold


def _overconfident(n=3000, c=3, sharpen=4.0, seed=0):
    """Labels drawn from calibrated probabilities; the model reports them sharpened by
    ``sharpen`` (logits x4): the arg-max is right as often as before, but it claims more."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.0, (n, c))
    p_true = softmax(z, axis=1)
    y = np.array([rng.choice(c, p=row) for row in p_true])
    return y, softmax(z * sharpen, axis=1), p_true


def test_ece_by_hand():
    # 4 images, 2 bins: confidences 0.6, 0.6 (one right) and 0.9, 0.9 (both right).
    y = np.array([0, 1, 0, 0])
    p = np.array([[0.6, 0.4], [0.6, 0.4], [0.9, 0.1], [0.9, 0.1]])
    # bin [0.5,1.0] holds all four when n_bins=2: mean conf 0.75, accuracy 0.75 -> 0.
    assert expected_calibration_error(y, p, n_bins=2) == pytest.approx(0.0)
    # 10 bins: bin 0.6 -> |0.5 - 0.6| * 2/4; bin 0.9 -> |1 - 0.9| * 2/4  => 0.1
    assert expected_calibration_error(y, p, n_bins=10) == pytest.approx(0.1)
    rows = reliability_table(y, p, n_bins=10)
    assert sum(r["count"] for r in rows) == 4
    assert [r["count"] for r in rows if r["count"]] == [2, 2]


def test_temperature_scaling_lowers_ece_on_overconfident_model():
    y, p_model, _ = _overconfident()
    yv, pv, yt, pt = y[:1500], p_model[:1500], y[1500:], p_model[1500:]
    t = fit_temperature(yv, pv)
    assert 3.0 < t < 5.5  # the sharpening was x4
    before = expected_calibration_error(yt, pt)
    after = expected_calibration_error(yt, apply_temperature(pt, t))
    assert before > 0.15 and after < before / 3
    # Temperature never changes the arg-max (so accuracy and AUC stay the same).
    assert (apply_temperature(pt, t).argmax(1) == pt.argmax(1)).all()


def test_calibrated_model_keeps_temperature_near_one():
    y, _, p_true = _overconfident(seed=1)
    assert fit_temperature(y, p_true) == pytest.approx(1.0, abs=0.15)


def test_multilabel_temperature_ignores_unknown_labels():
    rng = np.random.default_rng(2)
    z = rng.normal(0, 2, (2000, 3))
    y = (rng.random((2000, 3)) < 1 / (1 + np.exp(-z))).astype(float)
    y[rng.random(y.shape) < 0.3] = np.nan  # unknown labels
    p_over = 1 / (1 + np.exp(-3 * z))
    t = fit_temperature(y, p_over, multilabel=True)
    assert 2.3 < t < 3.8
    assert expected_calibration_error(y, apply_temperature(p_over, t, True), multilabel=True) < \
        expected_calibration_error(y, p_over, multilabel=True) / 2


def test_summary_and_ci():
    y, p_model, _ = _overconfident(n=1200, seed=3)
    s = calibration_summary(y[:600], p_model[:600], y[600:], p_model[600:], n_boot=200)
    assert s["ece_after"]["value"] < s["ece_before"]["value"]
    lo, hi = s["ece_before"]["ci"]
    assert lo <= s["ece_before"]["value"] <= hi and hi - lo < 0.1
    assert s["nll_after"] < s["nll_before"]
    ci = ece_with_ci(y, p_model, n_boot=100)
    assert ci["ci"][0] < ci["ci"][1]


def test_reliability_diagram_png(tmp_path):
    y, p_model, _ = _overconfident(n=600)
    t = fit_temperature(y, p_model)
    out = plot_reliability_diagram(y, {"before": p_model, f"after T={t:.2f}": apply_temperature(p_model, t)},
                                   tmp_path / "rel.png")
    assert (tmp_path / "rel.png").stat().st_size > 5000 and out.endswith("rel.png")


def test_specificity_rule():
    y = np.array([0] * 10 + [1] * 10, bool)
    s = np.concatenate([np.linspace(0, 0.9, 10), np.linspace(0.5, 1, 10)])
    t = choose_threshold(y, s, method="specificity", target=0.9)
    spec = ((s < t) & ~y).sum() / (~y).sum()
    assert spec >= 0.9
    # the lowest such threshold: one notch lower loses specificity
    assert ((s < np.nextafter(t, -np.inf) - 1e-12) & ~y).sum() / 10 < 0.9
    with pytest.raises(CXRInputError):
        choose_threshold(y, s, method="specificity")


def test_operating_points_per_class_and_decision():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 900)
    z = rng.normal(0, 1, (900, 3))
    z[np.arange(900), y] += 1.5
    p = softmax(z, axis=1)
    op = operating_points(y, p, ["bacterial", "viral", "normal"], rule="sensitivity:0.9")
    assert set(op["thresholds"]) == {"bacterial", "viral", "normal"}
    for j, name in enumerate(["bacterial", "viral", "normal"]):
        t = op["thresholds"][name]
        assert ((p[:, j] >= t) & (y == j)).sum() / (y == j).sum() >= 0.9
    d = decide(p, list(op["thresholds"].values()))
    assert d.shape == (900,) and set(np.unique(d)) <= {0, 1, 2}
    # binary with a threshold on class 1 only: exactly p1 >= t1, the report's rule
    pb = softmax(rng.normal(0, 2, (500, 2)), axis=1)
    assert (decide(pb, [None, 0.7]) == (pb[:, 1] >= 0.7)).all()
    # the most probable class among those over their thresholds, else argmax
    assert decide(np.array([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2]]), [0.6, 0.25, None]).tolist() == [1, 1]
    assert decide(np.array([[0.5, 0.3, 0.2]]), [0.6, 0.4, None]).tolist() == [0]
    with pytest.raises(CXRInputError):
        operating_points(y, p, ["a", "b", "c"], rule="precision:0.9")


def test_multilabel_operating_points_skip_labels_without_both_classes():
    y = np.array([[1, 0], [0, 0], [1, 0], [0, np.nan]], float)
    p = np.array([[0.9, 0.1], [0.2, 0.3], [0.7, 0.2], [0.1, 0.5]])
    op = operating_points(y, p, ["effusion", "mass"], rule="youden", multilabel=True)
    assert op["thresholds"]["mass"] is None and op["thresholds"]["effusion"] == pytest.approx(0.7)
    assert decide(p, [0.7, None], multilabel=True).tolist() == [[1, 0], [0, 0], [1, 0], [0, 1]]


def test_decide_equals_the_served_graph_rule():
    from cxr_tf.export.savedmodel import decision_rule

    rng = np.random.default_rng(5)
    p = softmax(rng.normal(0, 1.5, (400, 3)), axis=1)
    t = [0.5, 0.3, 0.4]
    assert (decide(p, t) == decision_rule(p, class_thresholds=t)).all()
