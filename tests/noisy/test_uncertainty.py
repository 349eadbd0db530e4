import numpy as np
import pytest

from cxr_tf.errors import CXRConfigError
from cxr_tf.noisy.uncertainty import (
    UncertaintyPolicy, pack, parse_blank, parse_blank_weight, parse_policy, unpack,
)

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


def test_lsr_default_constant_and_range_option():
    raw = np.full((500, 3), -1, np.float32)
    raw[0, 0] = 1.0
    assert UncertaintyPolicy().lsr_range == (0.5, 0.5)  # SPEC S1: smoothed to 0.5 by default
    t, w = UncertaintyPolicy(uncertain="lsr").apply(raw, NAMES)
    assert t[0, 0] == 1.0 and np.all(t[raw == -1] == 0.5) and np.all(w == 1)
    # Pham et al.'s range: per-entry uniform draws, seeded
    t2, _ = UncertaintyPolicy(uncertain="lsr", lsr_range=(0.55, 0.85)).apply(raw, NAMES)
    u = t2[raw == -1]
    assert u.min() >= 0.55 and u.max() <= 0.85 and u.std() > 0.05
    t3, _ = UncertaintyPolicy(uncertain="lsr", lsr_range=(0.55, 0.85)).apply(raw, NAMES)
    assert np.array_equal(t2, t3)  # same labels, same targets
    assert "lsr(0.5, 0.5)" in UncertaintyPolicy(uncertain="lsr").describe()


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


def test_parse_blank_and_blank_weight_per_label():
    names = ["No Finding", "Edema", "Fracture"]
    assert parse_blank("mask") == "mask" and parse_blank(" zero ") == "zero"
    blank = parse_blank("default=mask,Edema=zero")
    assert blank == {"default": "mask", "Edema": "zero"}
    assert parse_blank_weight("0.5") == 0.5 and parse_blank_weight(0.25) == 0.25
    bw = parse_blank_weight("default=1.0,No Finding=0.2")
    assert bw == {"default": 1.0, "No Finding": 0.2}
    raw = np.array([[N, N, N], [1, 0, -1]], np.float32)
    t, w = UncertaintyPolicy(blank=parse_blank("default=zero,Fracture=mask"), blank_weight=bw).apply(raw, names)
    np.testing.assert_allclose(w[0], [0.2, 1.0, 0.0])  # No Finding blank 0 at 0.2, Edema at 1, Fracture masked
    assert np.all(t[0] == 0) and np.array_equal(w[1], [1, 1, 0])
    t, w = UncertaintyPolicy(blank=blank, blank_weight=0.3).apply(raw, names)
    np.testing.assert_allclose(w[0], [0.0, 0.3, 0.0])  # only Edema's blank is a (weighted) 0


@pytest.mark.parametrize("fn, spec, match", [
    (parse_blank, "hide", "not one of"),
    (parse_blank, "default=mask,Edema=0", "'0' for 'Edema' is not one of"),
    (parse_blank, "mask,zero", "label=value"),
    (parse_blank, "default=mask,Edema", "not 'label=value'"),
    (parse_blank, "default=mask,default=zero", "given twice"),
    (parse_blank_weight, "heavy", "not a number"),
    (parse_blank_weight, "default=1,Edema=x", "'x' for 'Edema' is not a number"),
    (parse_blank_weight, "default=1,Edema=-0.5", "must be a number >= 0"),
    (parse_blank_weight, "nan", "must be a number >= 0"),
    (parse_policy, "default=ignore,Edema=maybe", "not one of"),
])
def test_parse_errors(fn, spec, match):
    with pytest.raises(CXRConfigError, match=match):
        fn(spec)


def test_unknown_label_in_per_label_blank():
    for kw in ({"blank": parse_blank("default=mask,Edemaa=zero")},
               {"blank_weight": parse_blank_weight("default=1,Edemaa=0.2")}):
        with pytest.raises(CXRConfigError, match=r"unknown labels \['Edemaa'\]"):
            UncertaintyPolicy(**kw).resolve(["Edema", "Fracture"])
    with pytest.raises(CXRConfigError, match="no 'default'"):
        UncertaintyPolicy(blank={"Edema": "zero"}).resolve(["Edema", "Fracture"])
