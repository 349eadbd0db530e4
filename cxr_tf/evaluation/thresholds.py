"""Operating points for binary tasks: threshold sweeps and threshold selection.

The decision rule everywhere is ``positive <=> score >= threshold``, so sensitivity
is non-increasing and specificity non-decreasing in the threshold.
Pick thresholds on VALIDATION data, then report them on the test set.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from cxr_tf.errors import CXRInputError

from ._utils import as_binary
from .ci import normal_approx_ci, wilson_ci

DEFAULT_SENSITIVITY_TARGETS: tuple[float, ...] = (0.98, 0.95, 0.90)

SWEEP_COLUMNS = [
    "threshold", "target_sensitivity", "TP", "FP", "TN", "FN",
    "sensitivity", "sensitivity_wilson_lo", "sensitivity_wilson_hi",
    "sensitivity_normal_lo", "sensitivity_normal_hi",
    "specificity", "specificity_wilson_lo", "specificity_wilson_hi",
    "specificity_normal_lo", "specificity_normal_hi",
    "precision", "youden_j",
]


def _counts(y: np.ndarray, s: np.ndarray, thresholds: np.ndarray):
    """TP, FP, TN, FN at each threshold (score >= t is positive), O((N+T) log N)."""
    pos = np.sort(s[y])
    neg = np.sort(s[~y])
    tp = len(pos) - np.searchsorted(pos, thresholds, side="left")
    fp = len(neg) - np.searchsorted(neg, thresholds, side="left")
    return tp, fp, len(neg) - fp, len(pos) - tp


def _threshold_for_sensitivity(y: np.ndarray, s: np.ndarray, target: float) -> float | None:
    """Highest threshold whose sensitivity is >= target (None without positives)."""
    if not 0.0 < float(target) <= 1.0:
        raise CXRInputError(None, f"sensitivity target must be in (0, 1], got {target}")
    pos = np.sort(s[y])[::-1]
    if len(pos) == 0:
        return None
    # Need k positives at or above t; the k-th highest positive score is the
    # highest such t. The rounding guards against 0.95*20 = 19.000000000000004.
    k = max(1, math.ceil(round(float(target) * len(pos), 9)))
    return float(pos[k - 1])


def threshold_sweep(
    y_true_binary,
    score,
    thresholds=None,
    *,
    sensitivity_targets=None,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Sensitivity/specificity (with Wilson and normal-approx CIs) across thresholds.

    Args:
        y_true_binary: (N,) 0/1 labels (or (N, 2) one-hot).
        score: (N,) score of the positive class (or (N, 2) probabilities).
        thresholds: thresholds to evaluate; default 0.05..0.95 step 0.05.
        sensitivity_targets: for each target, add the highest threshold reaching
            sensitivity >= target. Default (0.98, 0.95, 0.90) when ``thresholds``
            is None, none otherwise.
        alpha: 1 - confidence level of the CIs.

    Returns:
        DataFrame sorted by threshold with columns ``SWEEP_COLUMNS``;
        ``target_sensitivity`` is the (highest) target a row was added for, else NaN.
    """
    y, s = as_binary(y_true_binary, score)
    if thresholds is None:
        grid = np.round(np.arange(1, 20) * 0.05, 2)
        if sensitivity_targets is None:
            sensitivity_targets = DEFAULT_SENSITIVITY_TARGETS
    else:
        grid = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
        sensitivity_targets = sensitivity_targets or ()
    targets_at: dict[float, float] = {}
    for target in sorted(sensitivity_targets):
        t = _threshold_for_sensitivity(y, s, target)
        if t is not None:
            targets_at[t] = float(target)  # ascending loop: keeps the highest target
    ts = np.unique(np.concatenate([grid, np.array(list(targets_at), dtype=np.float64)]))
    tp, fp, tn, fn = _counts(y, s, ts)
    with np.errstate(divide="ignore", invalid="ignore"):
        sens = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
        spec = np.where(tn + fp > 0, tn / (tn + fp), np.nan)
        prec = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), np.nan)
    sens_w = wilson_ci(tp, tp + fn, alpha)
    spec_w = wilson_ci(tn, tn + fp, alpha)
    sens_n = normal_approx_ci(np.nan_to_num(sens), tp + fn, alpha)
    spec_n = normal_approx_ci(np.nan_to_num(spec), tn + fp, alpha)
    df = pd.DataFrame({
        "threshold": ts,
        "target_sensitivity": [targets_at.get(float(t), np.nan) for t in ts],
        "TP": tp, "FP": fp, "TN": tn, "FN": fn,
        "sensitivity": sens,
        "sensitivity_wilson_lo": sens_w[0], "sensitivity_wilson_hi": sens_w[1],
        "sensitivity_normal_lo": sens_n[0], "sensitivity_normal_hi": sens_n[1],
        "specificity": spec,
        "specificity_wilson_lo": spec_w[0], "specificity_wilson_hi": spec_w[1],
        "specificity_normal_lo": spec_n[0], "specificity_normal_hi": spec_n[1],
        "precision": prec,
        "youden_j": sens + spec - 1.0,
    })
    return df[SWEEP_COLUMNS]


def choose_threshold(y_true_binary, score, method: str = "youden", target: float | None = None) -> float:
    """Pick an operating threshold (do this on VALIDATION data, not test).

    Args:
        y_true_binary: (N,) 0/1 labels; both classes must be present.
        score: (N,) positive-class scores (or (N, 2) probabilities).
        method: "youden" maximises sensitivity + specificity - 1 over the observed
            scores (ties -> the highest such threshold); "sensitivity" returns the
            highest threshold with sensitivity >= ``target``; "specificity" the
            lowest threshold with specificity >= ``target``.
        target: required sensitivity / specificity, in (0, 1].

    Returns:
        The threshold, an observed score value; predict positive when score >= it.
    """
    y, s = as_binary(y_true_binary, score)
    if y.all() or not y.any():
        raise CXRInputError(None, "choose_threshold needs both positive and negative examples")
    if method == "youden":
        cands = np.unique(s)
        tp, fp, tn, fn = _counts(y, s, cands)
        j = tp / (tp + fn) + tn / (tn + fp) - 1.0
        best = np.flatnonzero(j >= j.max() - 1e-12)
        return float(cands[best[-1]])
    if method == "sensitivity":
        if target is None:
            raise CXRInputError(None, 'method="sensitivity" needs a target, e.g. target=0.95')
        return float(_threshold_for_sensitivity(y, s, target))
    if method == "specificity":
        if target is None or not 0.0 < float(target) <= 1.0:
            raise CXRInputError(None, f'method="specificity" needs a target in (0, 1], e.g. target=0.95; got {target}')
        # Lowest threshold with specificity >= target: the k lowest negatives must fall
        # below it, so it sits just above the k-th lowest negative score.
        neg = np.sort(s[~y])
        k = max(1, math.ceil(round(float(target) * len(neg), 9)))
        return float(np.nextafter(neg[k - 1], np.inf))
    raise CXRInputError(None, f'unknown method {method!r}; use "youden", "sensitivity" or "specificity"')
