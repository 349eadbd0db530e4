"""LPIPS scores on small hand-computed cases."""
from __future__ import annotations

import numpy as np
import pytest

from cxr_tf.errors import CXRInputError
from cxr_tf.perceptual.scoring import score_2afc, score_jnd, voc_ap


def test_2afc_hand_computed():
    # p0 closer & 25% chose p1 -> agrees with 75%; p1 closer & 75% chose p1 -> 75%; tie -> 50%
    m, s = score_2afc([1, 2, 3], [2, 1, 3], [0.25, 0.75, 0.6])
    assert s.tolist() == [0.75, 0.75, 0.5] and m == pytest.approx(2 / 3)
    assert score_2afc([0, 0], [1, 1], [0, 0])[0] == 1.0  # unanimous raters, right calls
    assert score_2afc([1, 1], [0, 0], [0, 0])[0] == 0.0
    with pytest.raises(CXRInputError):
        score_2afc([1, 2], [1], [0.5, 0.5])


def test_jnd_map_hand_computed():
    # order by distance: same, diff, same, diff -> recall .5 at precision 1, recall 1 at precision 2/3
    assert score_jnd([0.1, 0.2, 0.3, 0.4], [1, 0, 1, 0]) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert score_jnd([0.4, 0.3, 0.2, 0.1], [0, 0, 1, 1]) == pytest.approx(1.0)  # perfect ranking
    # worst ranking: precision 1/3 at recall .5, 2/4 at recall 1 -> interpolated .5 for both halves
    assert score_jnd([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1]) == pytest.approx(0.5 * 0.5 + 0.5 * 0.5)
    # fractional "same" votes count fractionally: sorted [1, .5], tp=[1, 1.5], fp=[0, .5]
    # rec=[2/3, 1], prec=[1, .75] -> 2/3 * 1 + 1/3 * .75
    assert score_jnd([0.1, 0.2], [1.0, 0.5]) == pytest.approx(2 / 3 + 0.25)
    assert np.isnan(score_jnd([0.1, 0.2], [0, 0]))


def test_voc_ap_is_area_under_interpolated_curve():
    assert voc_ap([0.5, 1.0], [1.0, 0.5]) == pytest.approx(0.75)
    assert voc_ap([1.0], [1.0]) == 1.0
