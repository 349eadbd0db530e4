import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import roc_auc_score

from cxr_tf.errors import CXRInputError
from cxr_tf.evaluation import bootstrap_ci, classification_metrics, normal_approx_ci, wilson_ci


@pytest.mark.parametrize("k,n", [(81, 263), (15, 148), (0, 20), (1, 29), (20, 20), (98, 100), (1, 1)])
def test_wilson_matches_scipy(k, n):
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_ci(k, n) == pytest.approx((ref.low, ref.high), abs=1e-12)
    ref90 = binomtest(k, n).proportion_ci(confidence_level=0.90, method="wilson")
    assert wilson_ci(k, n, alpha=0.10) == pytest.approx((ref90.low, ref90.high), abs=1e-12)


def test_wilson_textbook_values():
    # Newcombe (1998), Stat Med 17:857, Table II, method 3 (score interval).
    assert wilson_ci(81, 263) == pytest.approx((0.2553, 0.3662), abs=5e-5)
    assert wilson_ci(15, 148) == pytest.approx((0.0624, 0.1605), abs=5e-5)
    assert wilson_ci(0, 20) == (0.0, pytest.approx(0.1611, abs=5e-5))
    assert wilson_ci(1, 29) == pytest.approx((0.0061, 0.1718), abs=5e-5)


def test_wilson_vectorised_and_edge_cases():
    lo, hi = wilson_ci(np.array([0, 5, 10]), np.array([10, 10, 10]))
    assert lo[0] == 0.0 and hi[2] == 1.0
    assert (lo[1], hi[1]) == pytest.approx(wilson_ci(5, 10))
    assert all(np.isnan(wilson_ci(0, 0)))
    with pytest.raises(CXRInputError):
        wilson_ci(5, 4)


def test_normal_approx_deep_covid_example():
    # 1.96 * sqrt(0.98 * 0.02 / 100) = 0.02744; upper end clipped to 1.
    lo, hi = normal_approx_ci(0.98, 100)
    assert lo == pytest.approx(0.98 - 0.02744, abs=1e-5)
    assert hi == 1.0
    lo, hi = normal_approx_ci(0.5, 100)
    assert (lo, hi) == pytest.approx((0.5 - 0.0980, 0.5 + 0.0980), abs=1e-4)
    assert all(np.isnan(normal_approx_ci(0.5, 0)))


def _binary_auc_data(n, seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    s = 1 / (1 + np.exp(-(y * 0.8 + rng.normal(0, 1, n))))  # probabilities
    return y, s


def test_bootstrap_contains_point_and_narrows():
    y, s = _binary_auc_data(80, 0)
    point = roc_auc_score(y, s)
    lo, hi = bootstrap_ci(roc_auc_score, y, s, n_boot=100, seed=0)
    assert lo < point < hi
    # Same distribution, 12.5x the data -> CI about 3.5x narrower.
    yb, sb = _binary_auc_data(1000, 1)
    m = classification_metrics(yb, sb, ["neg", "pos"], n_boot=200)
    blo, bhi = m["per_class"]["pos"]["auc"]["bootstrap_ci"]
    assert blo < m["per_class"]["pos"]["auc"]["value"] < bhi
    assert (bhi - blo) < 0.5 * (hi - lo)


def test_bootstrap_reproducible_and_matches_vectorised_path(noisy_3class):
    y, p, names = noisy_3class
    fn = lambda yt, ps: roc_auc_score(yt == 0, ps[:, 0])  # noqa: E731
    a = bootstrap_ci(fn, y, p, n_boot=60, seed=3)
    assert a == bootstrap_ci(fn, y, p, n_boot=60, seed=3)
    assert a != bootstrap_ci(fn, y, p, n_boot=60, seed=4)
    # classification_metrics' vectorised AUC bootstrap draws the same resamples.
    m = classification_metrics(y, p, names, n_boot=60, seed=3)
    assert m["per_class"][names[0]]["auc"]["bootstrap_ci"] == pytest.approx(a, abs=1e-12)


def test_bootstrap_unstratified_skips_resamples_missing_a_class():
    y = np.array([0] * 9 + [1])
    s = np.linspace(0, 1, 10)
    seen = []

    def metric(yt, ys):
        seen.append(len(np.unique(yt)))
        return roc_auc_score(yt, ys)

    lo, hi = bootstrap_ci(metric, y, s, n_boot=100, stratified=False, seed=0)
    assert set(seen) == {2}  # never called on a one-class resample
    assert 0 < len(seen) < 100  # roughly 1/e of resamples lack the positive and are skipped
    assert lo <= hi == 1.0
