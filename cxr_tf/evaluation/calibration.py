"""Calibration: expected calibration error (with a CI), reliability diagrams and
temperature scaling.

A model that says 0.97 should be right about 97% of the time; a label-smoothed or
over-fitted CXR classifier rarely is, and an operating point chosen on uncalibrated
scores transfers badly to another site. Temperature scaling (Guo et al., ICML 2017,
"On Calibration of Modern Neural Networks") divides the logits by one scalar ``T``
fitted on the VALIDATION split by negative log-likelihood: it never changes the
ranking (AUC) nor the arg-max, only the confidence.

Logits are recovered from probabilities (``log p`` for softmax: the per-row shift of
``log`` cancels inside softmax; ``log(p / (1 - p))`` for sigmoid outputs), so this
works on saved predictions and on any export without retraining.

Pure numpy / scipy: no TensorFlow import.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_softmax, logit, softmax

from cxr_tf.errors import CXRInputError

from ._utils import as_class_indices, as_prob_matrix
from .ci import bootstrap_ci

_EPS = 1e-7


def probs_to_logits(y_prob, multilabel: bool = False) -> np.ndarray:
    """Logits (up to a per-row constant for softmax) that reproduce ``y_prob``."""
    p = np.clip(np.asarray(y_prob, dtype=np.float64), _EPS, 1.0 - _EPS)
    return logit(p) if multilabel else np.log(p)


def apply_temperature(y_prob, temperature: float, multilabel: bool = False) -> np.ndarray:
    """Probabilities after dividing the logits by ``temperature`` (T > 1 softens)."""
    if not temperature > 0:
        raise CXRInputError(None, f"temperature must be > 0, got {temperature}")
    z = probs_to_logits(y_prob, multilabel) / float(temperature)
    return expit(z) if multilabel else softmax(z, axis=-1)


def _nll(z: np.ndarray, y: np.ndarray, multilabel: bool) -> float:
    if multilabel:
        known = ~np.isnan(y)
        # log(sigmoid(z)) and log(1 - sigmoid(z)) without overflow.
        lp, ln = -np.logaddexp(0, -z), -np.logaddexp(0, z)
        return float(-(np.where(known, np.nan_to_num(y) * lp + (1 - np.nan_to_num(y)) * ln, 0)).sum() / max(known.sum(), 1))
    return float(-log_softmax(z, axis=-1)[np.arange(len(y)), y].mean())


def fit_temperature(y_true, y_prob, multilabel: bool = False, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature minimising the NLL of ``y_true`` (fit on VALIDATION data).

    Args:
        y_true: (N,) class indices / names / one-hot for single-label, (N, L) 0/1/NaN
            for multi-label (NaN = unknown, ignored).
        y_prob: (N, C) probabilities of the model being calibrated.
        multilabel: sigmoid outputs (one shared temperature for every label).
        bounds: search range for T (log-scale search).
    """
    prob = np.asarray(y_prob, dtype=np.float64)
    if multilabel:
        y = np.asarray(y_true, dtype=np.float64)
        if y.shape != prob.shape:
            raise CXRInputError(None, f"multi-label y_true {y.shape} and y_prob {prob.shape} differ")
    else:
        prob = as_prob_matrix(prob, prob.shape[1] if prob.ndim == 2 else 2)
        y = as_class_indices(y_true, prob.shape[1])
    if len(y) < 2:
        raise CXRInputError(None, "temperature scaling needs at least 2 validation examples")
    z = probs_to_logits(prob, multilabel)
    res = minimize_scalar(lambda lt: _nll(z / np.exp(lt), y, multilabel),
                          bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded",
                          options={"xatol": 1e-4})
    return float(np.exp(res.x))


def _bins(conf: np.ndarray, correct: np.ndarray, n_bins: int):
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Right-closed bins, the first also closed on the left: a confidence of exactly 1.0
    # belongs to the last bin, 0.0 to the first.
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct.astype(np.float64), minlength=n_bins)
    return edges, count, conf_sum, acc_sum


def _conf_correct(y_true, y_prob, multilabel: bool) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, correct) pairs: top-label for single-label, per known label for multi-label."""
    prob = np.asarray(y_prob, dtype=np.float64)
    if multilabel:
        y = np.asarray(y_true, dtype=np.float64)
        known = ~np.isnan(y)
        return prob[known], y[known] == 1
    prob = as_prob_matrix(prob, prob.shape[1] if prob.ndim == 2 else 2)
    y = as_class_indices(y_true, prob.shape[1])
    return prob.max(axis=1), prob.argmax(axis=1) == y


def expected_calibration_error(y_true, y_prob, n_bins: int = 15, multilabel: bool = False) -> float:
    """ECE: the bin-size-weighted mean |accuracy - confidence| over equal-width bins.

    Single-label: top-label confidence vs whether the arg-max is right (Guo et al.).
    Multi-label: each known (image, label) pair's probability vs its 0/1 label.
    """
    conf, correct = _conf_correct(y_true, y_prob, multilabel)
    if len(conf) == 0:
        return float("nan")
    _, count, conf_sum, acc_sum = _bins(conf, correct, n_bins)
    return float(np.abs(acc_sum - conf_sum).sum() / len(conf))


def ece_with_ci(y_true, y_prob, n_bins: int = 15, multilabel: bool = False, n_boot: int = 1000,
                alpha: float = 0.05, seed: int = 0) -> dict:
    """``{"value", "ci": [lo, hi], "n_bins"}``: ECE with a percentile bootstrap CI over images."""
    value = expected_calibration_error(y_true, y_prob, n_bins, multilabel)
    yt = np.asarray(y_true)
    lo, hi = bootstrap_ci(lambda a, b: expected_calibration_error(a, b, n_bins, multilabel), yt,
                          np.asarray(y_prob), n_boot=n_boot, alpha=alpha, seed=seed, stratified=not multilabel)
    return {"value": value, "ci": [lo, hi], "n_bins": n_bins}


def reliability_table(y_true, y_prob, n_bins: int = 15, multilabel: bool = False) -> list[dict]:
    """Per bin: lower/upper edge, count, mean confidence, accuracy (NaN for empty bins)."""
    conf, correct = _conf_correct(y_true, y_prob, multilabel)
    edges, count, conf_sum, acc_sum = _bins(conf, correct, n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mc, acc = conf_sum / count, acc_sum / count
    return [{"lo": float(edges[i]), "hi": float(edges[i + 1]), "count": int(count[i]),
             "confidence": float(mc[i]), "accuracy": float(acc[i])} for i in range(n_bins)]


def plot_reliability_diagram(y_true, curves: dict, path, n_bins: int = 15, multilabel: bool = False,
                             title: str | None = None) -> str:
    """Reliability diagram: accuracy vs confidence per bin, one line per named curve
    (e.g. ``{"before": p_test, "after T=1.8": p_cal}``), the diagonal for perfect calibration,
    and a bar of how many images fall in each bin (of the first curve) below.
    """
    from .plots import _new_figure, _save  # one Agg figure helper for every plot

    fig = _new_figure(5.2, 6.0, layout="constrained")
    ax, axh = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="perfect calibration")
    for i, (name, prob) in enumerate(curves.items()):
        rows = reliability_table(y_true, prob, n_bins, multilabel)
        used = [r for r in rows if r["count"] > 0]
        ece = expected_calibration_error(y_true, prob, n_bins, multilabel)
        ax.plot([r["confidence"] for r in used], [r["accuracy"] for r in used], marker="o", ms=4,
                label=f"{name} (ECE {ece:.3f})")
        if i == 0:
            axh.bar([(r["lo"] + r["hi"]) / 2 for r in rows], [r["count"] for r in rows],
                    width=1.0 / n_bins * 0.9, color="0.6")
            axh.set_ylabel(f"images\n({name})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy" if not multilabel else "fraction positive")
    ax.set_title(title or "Reliability diagram")
    ax.legend(loc="upper left", fontsize=8)
    ax.tick_params(labelbottom=False)
    axh.set_xlabel("confidence (top-label probability)" if not multilabel else "predicted probability")
    axh.yaxis.get_major_locator().set_params(integer=True)
    return _save(fig, path)


def calibration_summary(y_val, p_val, y_test, p_test, multilabel: bool = False, n_bins: int = 15,
                        n_boot: int = 1000, seed: int = 0) -> dict:
    """Fit T on validation, report test ECE (with CIs) before and after, and the test NLL.

    Returns ``{"method": "temperature", "temperature", "fit_on": "val", "n_bins",
    "ece_before": {...}, "ece_after": {...}, "nll_before", "nll_after"}``.
    """
    t = fit_temperature(y_val, p_val, multilabel)
    p_cal = apply_temperature(p_test, t, multilabel)
    y = np.asarray(y_test, dtype=np.float64) if multilabel else as_class_indices(
        y_test, np.asarray(p_test).shape[1])
    return {
        "method": "temperature",
        "temperature": t,
        "fit_on": "val",
        "n_bins": n_bins,
        "ece_before": ece_with_ci(y_test, p_test, n_bins, multilabel, n_boot, seed=seed),
        "ece_after": ece_with_ci(y_test, p_cal, n_bins, multilabel, n_boot, seed=seed),
        "nll_before": _nll(probs_to_logits(p_test, multilabel), y, multilabel),
        "nll_after": _nll(probs_to_logits(p_cal, multilabel), y, multilabel),
    }


# ----------------------------------------------------------------- operating points
OPERATING_RULES = ("youden", "sensitivity", "specificity")


def parse_rule(rule: str) -> tuple[str, float | None]:
    """``"youden"`` | ``"sensitivity:0.95"`` | ``"specificity:0.9"`` -> (method, target)."""
    name, _, target = str(rule).partition(":")
    if name not in OPERATING_RULES:
        raise CXRInputError(None, f"unknown operating-point rule {rule!r}; use youden, sensitivity:T or specificity:T")
    if name == "youden":
        return name, None
    try:
        t = float(target)
    except ValueError:
        raise CXRInputError(None, f"rule {rule!r} needs a target in (0, 1], e.g. {name}:0.95") from None
    if not 0.0 < t <= 1.0:
        raise CXRInputError(None, f"rule {rule!r}: the target must be in (0, 1]")
    return name, t


def operating_points(y_val, p_val, class_names: Sequence[str], rule: str = "youden",
                     multilabel: bool = False) -> dict:
    """One threshold per class (one-vs-rest) or per label, chosen on VALIDATION data.

    Returns ``{"rule": rule, "thresholds": {name: t or None}}`` (None where the
    validation data lack positives or negatives for that class).
    """
    from .thresholds import choose_threshold

    method, target = parse_rule(rule)
    prob = np.asarray(p_val, dtype=np.float64)
    names = list(class_names)
    if multilabel:
        y = np.asarray(y_val, dtype=np.float64)
    else:
        idx = as_class_indices(y_val, len(names))
        y = np.eye(len(names))[idx]
    out = {}
    for j, name in enumerate(names):
        known = ~np.isnan(y[:, j])
        yj, sj = y[known, j] == 1, prob[known, j]
        if yj.all() or not yj.any():
            out[name] = None
            continue
        out[name] = choose_threshold(yj, sj, method=method, target=target)
    return {"rule": rule, "thresholds": out}


def decide(y_prob, thresholds: Sequence[float | None], multilabel: bool = False) -> np.ndarray:
    """Decisions under per-class thresholds, the rule the exported graph applies
    (:func:`cxr_tf.export.savedmodel.decision_rule`).

    Multi-label: (N, L) 0/1 flags, ``p >= t`` per label (0.5 where a label has none).
    Single-label: (N,) class indices: the most probable class among those at or above
    their threshold, the arg-max when none is (a class without a threshold never passes).
    Two classes with thresholds ``[None, t]``: ``p1 >= t`` (the binary rule).
    """
    prob = np.asarray(y_prob, dtype=np.float64)
    if multilabel:
        t = np.array([0.5 if v is None else float(v) for v in thresholds])
        return (prob >= t).astype(np.int64)
    if len(thresholds) == 2 and thresholds[0] is None and thresholds[1] is not None:
        return (prob[:, 1] >= float(thresholds[1])).astype(np.int64)  # binary: the report's rule
    t = np.array([np.inf if v is None else float(v) for v in thresholds])
    passed = prob >= t
    masked = np.where(passed, prob, -1.0)
    return np.where(passed.any(axis=1), masked.argmax(axis=1), prob.argmax(axis=1))
