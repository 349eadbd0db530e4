import numpy as np
import pytest

from cxr_tf.errors import CXRConfigError
from cxr_tf.training.uncertainty import UncertaintyPolicy, pack, parse_policy, unpack

N = np.nan
NAMES = ["A", "B", "C"]
RAW = np.array([[1, 0, -1], [-1, N, 0], [0, -1, N]], np.float32)


@pytest.mark.parametrize("policy, t_unc, w_unc", [("ignore", 0.0, 0.0), ("zeros", 0.0, 1.0), ("ones", 1.0, 1.0)])
def test_basic_policies(policy, t_unc, w_unc):
    t, w = UncertaintyPolicy(uncertain=policy).apply(RAW, NAMES)
    unc = RAW == -1
    assert np.all(t[unc] == t_unc) and np.all(w[unc] == w_unc)
    # known entries unchanged, blanks masked
    known = (RAW == 0) | (RAW == 1)
    assert np.array_equal(t[known], RAW[known]) and np.all(w[known] == 1)
    assert np.all(w[np.isnan(RAW)] == 0)


def test_lsr_range_and_constant():
    raw = np.full((500, 3), -1, np.float32)
    t, w = UncertaintyPolicy(uncertain="lsr").apply(raw, NAMES)
    assert t.min() >= 0.55 and t.max() <= 0.85 and t.std() > 0.05 and np.all(w == 1)
    t2, _ = UncertaintyPolicy(uncertain="lsr").apply(raw, NAMES)
    assert np.array_equal(t, t2)  # seeded: same labels, same targets
    t3, _ = UncertaintyPolicy(uncertain="lsr", lsr_range=(0.5, 0.5)).apply(raw, NAMES)
    assert np.all(t3 == 0.5)


def test_per_label_choice_and_blank_weights():
    pol = UncertaintyPolicy(uncertain={"default": "ignore", "A": "ones", "B": "zeros"}, blank="zero",
                            blank_weight={"default": 1.0, "C": 0.25})
    t, w = pol.apply(RAW, NAMES)
    assert (t[1, 0], w[1, 0]) == (1.0, 1.0)  # A uncertain -> 1
    assert (t[2, 1], w[2, 1]) == (0.0, 1.0)  # B uncertain -> 0
    assert w[0, 2] == 0.0  # C uncertain -> ignored
    assert (t[1, 1], w[1, 1]) == (0.0, 1.0)  # B blank -> 0 weight 1
    assert (t[2, 2], w[2, 2]) == (0.0, 0.25)  # C blank -> 0 weight 0.25


def test_parse_and_pack_and_errors():
    assert parse_policy("lsr") == "lsr"
    assert parse_policy("default=ignore,Edema=ones") == {"default": "ignore", "Edema": "ones"}
    t, w = UncertaintyPolicy().apply(RAW, NAMES)
    t2, w2 = unpack(pack(t, w))
    assert np.array_equal(t, t2) and np.array_equal(w, w2)
    with pytest.raises(CXRConfigError, match="unknown labels"):
        UncertaintyPolicy(uncertain={"Z": "ones", "default": "ignore"}).apply(RAW, NAMES)
    with pytest.raises(CXRConfigError, match="must be one of"):
        UncertaintyPolicy(uncertain="maybe").apply(RAW, NAMES)
    with pytest.raises(CXRConfigError):
        UncertaintyPolicy(lsr_range=(0.9, 0.1))
    with pytest.raises(CXRConfigError, match="1, 0, -1 or NaN"):
        UncertaintyPolicy().apply(RAW + 2, NAMES)
