"""Classification metrics with confidence intervals, as JSON-serialisable dicts.

Undefined values (0/0 proportions, AUC of a class absent from y_true) are
``None`` rather than NaN, so the dicts go straight into ``json.dump``.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix as _sk_confusion_matrix
from sklearn.metrics import roc_auc_score

from cxr_tf.errors import CXRInputError

from ._utils import as_class_indices, as_prob_matrix, check_class_names, finite_or_none
from .ci import (
    _bootstrap_ovr_auc_samples,
    _percentile_ci,
    normal_approx_ci,
    wilson_ci,
)
from .thresholds import choose_threshold, threshold_sweep  # noqa: F401  (re-export)


def _ci_list(lo, hi) -> list[float] | None:
    lo, hi = finite_or_none(lo), finite_or_none(hi)
    return None if lo is None or hi is None else [lo, hi]


def proportion_stat(count: int, n: int, alpha: float = 0.05) -> dict:
    """A proportion count/n with its Wilson and normal-approximation CIs.

    Returns:
        {"value", "count", "n", "wilson_ci": [lo, hi], "normal_ci": [lo, hi]};
        value and CIs are None when n == 0.
    """
    count, n = int(count), int(n)
    if n == 0:
        return {"value": None, "count": count, "n": n, "wilson_ci": None, "normal_ci": None}
    p = count / n
    return {
        "value": p,
        "count": count,
        "n": n,
        "wilson_ci": _ci_list(*wilson_ci(count, n, alpha)),
        "normal_ci": _ci_list(*normal_approx_ci(p, n, alpha)),
    }


def _auc_stat(value, samples: np.ndarray | None, alpha: float) -> dict:
    ci = None if samples is None or value is None else _ci_list(*_percentile_ci(samples, alpha))
    return {"value": finite_or_none(value), "bootstrap_ci": ci}


def classification_metrics(
    y_true,
    y_prob,
    class_names,
    *,
    threshold: float | None = None,
    class_thresholds=None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    """Metrics of a single-label multi-class (or binary) classifier.

    Args:
        y_true: (N,) int class indices, (N, C) one-hot, or class-name strings.
        y_prob: (N, C) class probabilities; for C == 2 also (N,) P(class 1).
        class_names: C names, in column order of ``y_prob``.
        threshold: binary tasks only; predict class 1 when P(class 1) >= threshold.
            Default: argmax (ties go to the lower class index).
        class_thresholds: one operating threshold per class (None: that class never
            passes); decisions then follow the exported graph's rule
            (:func:`cxr_tf.evaluation.calibration.decide`): the most probable class at or
            above its threshold, argmax when none is. Excludes ``threshold``.
        n_boot: bootstrap resamples for AUC CIs (0 disables them).
        seed: bootstrap seed.
        alpha: 1 - confidence level of all CIs.

    Returns:
        JSON-serialisable dict with keys:
        n, n_classes, class_names, alpha, n_boot, seed, decision_rule, threshold,
        accuracy (proportion stat), macro_auc ({value, bootstrap_ci, n_classes}),
        averaged_accuracy, balanced_accuracy, macro_f1, confusion_matrix (rows =
        true, columns = predicted) and per_class[name] with support, tp, fp, tn,
        fn, accuracy/sensitivity/specificity/precision (proportion stats), f1 and
        auc ({value, bootstrap_ci}).
    """
    names = check_class_names(class_names)
    c = len(names)
    prob = as_prob_matrix(y_prob, c)
    y = as_class_indices(y_true, c, names)
    if len(y) != len(prob):
        raise CXRInputError(None, f"y_true has {len(y)} rows but y_prob has {len(prob)}")
    if len(y) == 0:
        raise CXRInputError(None, "cannot compute metrics on zero examples")
    n = len(y)

    if class_thresholds is not None:
        from .calibration import decide

        if threshold is not None:
            raise CXRInputError(None, "give threshold (binary) or class_thresholds (one per class), not both")
        ct = [None if v is None else float(v) for v in class_thresholds]
        if len(ct) != c:
            raise CXRInputError(None, f"class_thresholds needs one value per class ({c}); got {ct}")
        pred = decide(prob, ct)
        rule = ("most probable class at or above its threshold, argmax when none is ("
                + ", ".join(f"{nm} >= {'never' if v is None else f'{v:g}'}" for nm, v in zip(names, ct)) + ")")
        class_thresholds = dict(zip(names, ct))
    elif threshold is not None:
        if c != 2:
            raise CXRInputError(None, f"threshold only applies to binary tasks, got {c} classes")
        threshold = float(threshold)
        pred = (prob[:, 1] >= threshold).astype(np.int64)
        rule = f"P({names[1]}) >= {threshold:g}"
    else:
        pred = prob.argmax(axis=1)
        rule = "argmax"

    cm = _sk_confusion_matrix(y, pred, labels=list(range(c)))
    support = cm.sum(axis=1)
    # One-vs-rest AUC is only defined when the class has both positives and negatives.
    auc_classes = [k for k in range(c) if 0 < support[k] < n]
    auc_point = {k: float(roc_auc_score(y == k, prob[:, k])) for k in auc_classes}
    samples, macro_samples = (None, None)
    if n_boot > 0:
        samples, macro_samples = _bootstrap_ovr_auc_samples(y, prob, auc_classes, n_boot, seed)

    per_class = {}
    for k, name in enumerate(names):
        tp = int(cm[k, k])
        fn = int(support[k]) - tp
        fp = int(cm[:, k].sum()) - tp
        tn = n - tp - fn - fp
        f1_den = 2 * tp + fp + fn
        per_class[name] = {
            "support": int(support[k]),
            "tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "accuracy": proportion_stat(tp + tn, n, alpha),
            "sensitivity": proportion_stat(tp, tp + fn, alpha),
            "specificity": proportion_stat(tn, tn + fp, alpha),
            "precision": proportion_stat(tp, tp + fp, alpha),
            "f1": (2 * tp / f1_den) if f1_den > 0 else None,
            "auc": _auc_stat(auc_point.get(k), None if samples is None else samples.get(k), alpha),
        }

    def mean_of(key):
        vals = [pc[key] if key == "f1" else pc[key]["value"] for pc in per_class.values()]
        vals = [v for v in vals if v is not None]
        return float(np.mean(vals)) if vals else None

    macro_auc = float(np.mean(list(auc_point.values()))) if auc_point else None
    return {
        "n": n,
        "n_classes": c,
        "class_names": names,
        "alpha": float(alpha),
        "n_boot": int(n_boot),
        "seed": int(seed),
        "decision_rule": rule,
        "threshold": threshold,
        **({"class_thresholds": class_thresholds} if class_thresholds is not None else {}),
        "accuracy": proportion_stat(int(np.trace(cm)), n, alpha),
        "macro_auc": {**_auc_stat(macro_auc, macro_samples, alpha), "n_classes": len(auc_point)},
        # The seed-000 paper's "averaged accuracy": mean of one-vs-rest accuracies.
        "averaged_accuracy": mean_of("accuracy"),
        "balanced_accuracy": mean_of("sensitivity"),  # mean recall over present classes
        "macro_f1": mean_of("f1"),
        "confusion_matrix": cm.astype(int).tolist(),
        "per_class": per_class,
    }


def multilabel_metrics(
    y_true_with_nan,
    y_prob,
    names,
    *,
    n_boot: int = 0,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    """Per-label AUC for multi-label tasks (e.g. CheXpert), masking NaN targets.

    Args:
        y_true_with_nan: (N, L) array of 0/1 with NaN for missing labels. Map
            CheXpert's uncertain (-1) labels (U-Ones/U-Zeros/NaN) before calling.
        y_prob: (N, L) per-label probabilities (sigmoid outputs).
        names: L label names.
        n_boot: bootstrap resamples per label for AUC CIs (0 = none).
        seed: bootstrap seed.
        alpha: 1 - confidence level.

    Returns:
        {"n", "label_names", "alpha", "n_boot", "per_label": {name: {"n", "n_positive",
        "n_masked", "auc": {"value", "bootstrap_ci"}}}, "mean_auc": {"value",
        "n_labels"}}; a label whose unmasked rows lack a class gets AUC None and is
        left out of the mean.
    """
    if isinstance(names, (str, bytes)):
        raise CXRInputError(None, "names must be a list of label names")
    names = [str(x) for x in names]
    y = np.asarray(y_true_with_nan, dtype=np.float64)
    p = np.asarray(y_prob, dtype=np.float64)
    if y.ndim == 1 and len(names) == 1:
        y, p = y[:, None], p.reshape(-1, 1)
    if y.ndim != 2 or y.shape != p.shape or y.shape[1] != len(names):
        raise CXRInputError(
            None, f"y_true {y.shape} and y_prob {p.shape} must both be (N, {len(names)})"
        )
    known = ~np.isnan(y)
    if not np.isin(y[known], (0.0, 1.0)).all():
        raise CXRInputError(
            None, "multi-label y_true must be 0, 1 or NaN (map uncertain -1 labels first)"
        )
    if not np.all(np.isfinite(p)):
        raise CXRInputError(None, "y_prob contains NaN or infinite values")

    per_label, aucs = {}, []
    for j, name in enumerate(names):
        m = known[:, j]
        yt, ps = y[m, j], p[m, j]
        n_pos = int(yt.sum())
        auc, ci = None, None
        if 0 < n_pos < len(yt):
            auc = float(roc_auc_score(yt, ps))
            aucs.append(auc)
            if n_boot > 0:
                # Vectorised path; same resamples as bootstrap_ci(roc_auc_score, ...).
                lab = yt.astype(np.int64)
                boot, _ = _bootstrap_ovr_auc_samples(lab, np.stack([1 - ps, ps], 1), [1], n_boot, seed)
                ci = _ci_list(*_percentile_ci(boot[1], alpha))
        per_label[name] = {
            "n": int(m.sum()),
            "n_positive": n_pos,
            "n_masked": int((~m).sum()),
            "auc": {"value": auc, "bootstrap_ci": ci},
        }
    return {
        "n": int(y.shape[0]),
        "label_names": names,
        "alpha": float(alpha),
        "n_boot": int(n_boot),
        "per_label": per_label,
        "mean_auc": {"value": float(np.mean(aucs)) if aucs else None, "n_labels": len(aucs)},
    }
