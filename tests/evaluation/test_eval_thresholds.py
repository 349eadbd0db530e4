import numpy as np
import pytest
from sklearn.metrics import roc_curve

from cxr_tf.errors import CXRInputError
from cxr_tf.evaluation import choose_threshold, threshold_sweep, wilson_ci


def test_sweep_counts_cis_and_monotonicity(binary_case):
    y, s = binary_case
    df = threshold_sweep(y, s)
    assert df["threshold"].is_monotonic_increasing
    grid = np.round(np.arange(1, 20) * 0.05, 2)
    assert set(grid) <= set(df["threshold"])
    # Sensitivity never rises and specificity never falls as the threshold rises.
    assert np.all(np.diff(df["sensitivity"]) <= 1e-12)
    assert np.all(np.diff(df["specificity"]) >= -1e-12)
    for r in df.itertuples():
        pred = s >= r.threshold
        assert (r.TP, r.FP, r.TN, r.FN) == (
            np.sum(pred & (y == 1)), np.sum(pred & (y == 0)), np.sum(~pred & (y == 0)), np.sum(~pred & (y == 1)))
        assert r.sensitivity == pytest.approx(r.TP / (r.TP + r.FN))
        assert (r.sensitivity_wilson_lo, r.sensitivity_wilson_hi) == pytest.approx(wilson_ci(r.TP, r.TP + r.FN))
        assert r.sensitivity_normal_lo <= r.sensitivity <= r.sensitivity_normal_hi
        assert r.specificity_wilson_lo <= r.specificity <= r.specificity_wilson_hi


def test_sweep_sensitivity_target_rows(binary_case):
    y, s = binary_case
    df = threshold_sweep(y, s)
    rows = df[df["target_sensitivity"].notna()]
    assert set(rows["target_sensitivity"]) == {0.98, 0.95, 0.90}
    for r in rows.itertuples():
        assert r.sensitivity >= r.target_sensitivity
        # It is the highest such threshold: any higher observed score misses the target.
        higher = np.unique(s[s > r.threshold])
        if higher.size:
            assert np.mean(s[y == 1] >= higher[0]) < r.target_sensitivity
    # Explicit thresholds: exactly those rows, no target rows.
    df2 = threshold_sweep(y, s, thresholds=[0.3, 0.5])
    assert df2["threshold"].tolist() == [0.3, 0.5]
    assert df2["target_sensitivity"].isna().all()


def test_choose_threshold_youden_separable():
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8])
    t = choose_threshold(y, s)
    assert 0.3 < t <= 0.6
    assert np.all((s >= t) == (y == 1))


def test_choose_threshold_youden_matches_roc(binary_case):
    y, s = binary_case
    t = choose_threshold(y, s, method="youden")
    fpr, tpr, thr = roc_curve(y, s)
    assert np.mean(s[y == 1] >= t) - np.mean(s[y == 0] >= t) == pytest.approx(np.max(tpr - fpr))


def test_choose_threshold_sensitivity_target():
    y = np.array([1] * 10 + [0] * 5)
    s = np.array([0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.1, 0.2, 0.3, 0.4, 0.52])
    assert choose_threshold(y, s, method="sensitivity", target=0.9) == 0.55  # 9th highest positive
    assert choose_threshold(y, s, method="sensitivity", target=0.95) == 0.5
    assert choose_threshold(y, np.stack([1 - s, s], 1), "sensitivity", 1.0) == 0.5
    with pytest.raises(CXRInputError):
        choose_threshold(y, s, method="sensitivity")
    with pytest.raises(CXRInputError):
        choose_threshold(np.ones(4), np.linspace(0, 1, 4))
