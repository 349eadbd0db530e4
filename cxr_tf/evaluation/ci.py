"""Confidence intervals: Wilson score, normal approximation and percentile bootstrap.

``wilson_ci`` and ``normal_approx_ci`` broadcast over numpy arrays (used by the
threshold sweep); with scalar inputs they return a pair of floats.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
from scipy import stats

from cxr_tf.errors import CXRInputError


def _z(alpha: float) -> float:
    if not 0.0 < float(alpha) < 1.0:
        raise CXRInputError(None, f"alpha must be in (0, 1), got {alpha}")
    return float(stats.norm.ppf(1.0 - float(alpha) / 2.0))


def _pair(lo, hi, scalar: bool):
    if scalar:
        return float(lo), float(hi)
    return lo, hi


def wilson_ci(successes, n, alpha: float = 0.05):
    """Wilson score interval for a binomial proportion (no continuity correction).

    Matches ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``; the
    endpoints are exactly 0 at k=0 and 1 at k=n.

    Args:
        successes: number of successes k (scalar or array).
        n: number of trials (scalar or array); n == 0 gives (nan, nan).
        alpha: 1 - confidence level.

    Returns:
        (low, high) floats, or arrays when any input is an array.
    """
    scalar = np.ndim(successes) == 0 and np.ndim(n) == 0
    k = np.asarray(successes, dtype=np.float64)
    nn = np.asarray(n, dtype=np.float64)
    if np.any(k < 0) or np.any(nn < 0) or np.any(k > nn):
        raise CXRInputError(None, f"need 0 <= successes <= n, got successes={successes}, n={n}")
    z2 = _z(alpha) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k / nn
        denom = 1.0 + z2 / nn
        centre = (p + z2 / (2.0 * nn)) / denom
        half = math.sqrt(z2) * np.sqrt(p * (1.0 - p) / nn + z2 / (4.0 * nn * nn)) / denom
    lo = np.clip(centre - half, 0.0, 1.0)
    hi = np.clip(centre + half, 0.0, 1.0)
    # Pin the exact endpoints that round-off would otherwise turn into ~1e-17.
    lo = np.where(k == 0, 0.0, lo)
    hi = np.where(k == nn, 1.0, hi)
    lo = np.where(nn > 0, lo, np.nan)
    hi = np.where(nn > 0, hi, np.nan)
    return _pair(lo, hi, scalar)


def normal_approx_ci(p, n, alpha: float = 0.05):
    """Normal-approximation (Wald) interval p +- z*sqrt(p(1-p)/n), clipped to [0, 1].

    This is the interval reported by the Deep-COVID paper (z = 1.96 for 95%);
    e.g. p=0.98, n=100 gives 0.98 +- 0.0274.

    Args:
        p: observed proportion (scalar or array).
        n: sample size (scalar or array); n == 0 gives (nan, nan).
        alpha: 1 - confidence level.

    Returns:
        (low, high) floats, or arrays when any input is an array.
    """
    scalar = np.ndim(p) == 0 and np.ndim(n) == 0
    pp = np.asarray(p, dtype=np.float64)
    nn = np.asarray(n, dtype=np.float64)
    if np.any((pp < 0) | (pp > 1)) or np.any(nn < 0):
        raise CXRInputError(None, f"need 0 <= p <= 1 and n >= 0, got p={p}, n={n}")
    with np.errstate(divide="ignore", invalid="ignore"):
        half = _z(alpha) * np.sqrt(pp * (1.0 - pp) / nn)
    lo = np.where(nn > 0, np.clip(pp - half, 0.0, 1.0), np.nan)
    hi = np.where(nn > 0, np.clip(pp + half, 0.0, 1.0), np.nan)
    return _pair(lo, hi, scalar)


# --------------------------------------------------------------------------- bootstrap


def _strata_of(y_true: np.ndarray) -> np.ndarray | None:
    """Class label per row used for stratification; None when not single-label."""
    y = np.asarray(y_true)
    if y.ndim == 1:
        if y.dtype.kind == "f" and not np.all(y == np.round(y)):
            return None  # continuous targets have no classes
        return y
    if y.ndim == 2 and np.isin(y, (0, 1)).all() and np.all(y.sum(axis=1) == 1):
        return y.argmax(axis=1)  # one-hot
    return None  # multi-label / soft targets: no single class to stratify on


def _chunk_rows(n: int, n_boot: int) -> int:
    # Bound the (rows, n) index matrices to ~2M entries so large test sets
    # (e.g. CheXpert-sized) do not need GBs of memory.
    return max(1, min(n_boot, 2_000_000 // max(n, 1)))


def _bootstrap_index_chunks(
    strata: np.ndarray | None, n: int, n_boot: int, seed: int, stratified: bool
) -> Iterator[np.ndarray]:
    """Yield (rows, n) int arrays of resample indices, n_boot rows in total.

    Deterministic for a given (strata, n, n_boot, seed, stratified), so the generic
    :func:`bootstrap_ci` and the vectorised AUC path see the same resamples.
    """
    rng = np.random.default_rng(seed)
    groups = None
    if stratified and strata is not None:
        groups = [np.flatnonzero(strata == c) for c in np.unique(strata)]
    step = _chunk_rows(n, n_boot)
    done = 0
    while done < n_boot:
        b = min(step, n_boot - done)
        if groups is None:
            yield rng.integers(0, n, size=(b, n))
        else:
            # Resample within each class so every resample keeps the class counts.
            yield np.concatenate([g[rng.integers(0, len(g), size=(b, len(g)))] for g in groups], axis=1)
        done += b


def _has_all_classes(strata: np.ndarray | None, idx: np.ndarray) -> np.ndarray:
    """Bool (rows,) mask: resample contains every class present in the full data."""
    if strata is None:
        return np.ones(len(idx), dtype=bool)
    s = strata[idx]
    ok = np.ones(len(idx), dtype=bool)
    for c in np.unique(strata):
        ok &= (s == c).any(axis=1)
    return ok


def _percentile_ci(values: np.ndarray, alpha: float) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (float("nan"), float("nan"))
    lo, hi = np.percentile(values, [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)])
    return float(lo), float(hi)


def bootstrap_ci(
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    y_true,
    y_score,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    stratified: bool = True,
) -> tuple[float, float]:
    """Percentile bootstrap interval for ``metric_fn(y_true, y_score)``.

    Resamples rows with replacement. With ``stratified`` (and single-label
    ``y_true``) rows are resampled within each class so every resample has the
    original class counts; otherwise resamples missing a class are skipped, as
    are resamples where ``metric_fn`` raises ``ValueError`` or returns NaN.

    Args:
        metric_fn: callable (y_true, y_score) -> float, e.g. sklearn's roc_auc_score.
        y_true: targets, (N,) labels or (N, C) one-hot / multi-label.
        y_score: scores with N rows.
        n_boot: number of resamples.
        alpha: 1 - confidence level.
        seed: random seed (results are reproducible).
        stratified: resample within classes.

    Returns:
        (low, high); (nan, nan) if no resample gave a finite value.
    """
    _z(alpha)  # validate
    yt = np.asarray(y_true)
    ys = np.asarray(y_score)
    if len(yt) != len(ys):
        raise CXRInputError(None, f"y_true has {len(yt)} rows but y_score has {len(ys)}")
    if n_boot < 1 or len(yt) == 0:
        return (float("nan"), float("nan"))
    strata = _strata_of(yt)
    values = []
    for idx in _bootstrap_index_chunks(strata, len(yt), int(n_boot), seed, stratified):
        ok = _has_all_classes(strata, idx)
        for row, keep in zip(idx, ok):
            if not keep:
                continue
            try:
                v = float(metric_fn(yt[row], ys[row]))
            except ValueError:  # e.g. sklearn "Only one class present in y_true"
                continue
            values.append(v)
    return _percentile_ci(np.array(values), alpha)


def _rank_auc(pos: np.ndarray, score: np.ndarray) -> np.ndarray:
    """ROC AUC along the last axis via the Mann-Whitney rank statistic (ties = 1/2).

    Vectorised over leading axes; NaN where a row has no positives or negatives.
    Equal to sklearn's roc_auc_score but ~100x cheaper per resample.
    """
    ranks = stats.rankdata(score, axis=-1)
    n_pos = pos.sum(axis=-1).astype(np.float64)
    n_neg = pos.shape[-1] - n_pos
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = ((ranks * pos).sum(axis=-1) - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def _bootstrap_ovr_auc_samples(
    labels: np.ndarray,
    scores: np.ndarray,
    classes: list[int],
    n_boot: int,
    seed: int,
    stratified: bool = True,
) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Bootstrap distributions of one-vs-rest AUCs and their mean (macro AUC).

    Uses the same resamples as ``bootstrap_ci(..., stratified)`` on ``labels``.

    Args:
        labels: (N,) int class indices.
        scores: (N, C) scores.
        classes: class indices to evaluate (those with both positives and negatives).
        n_boot, seed, stratified: as in :func:`bootstrap_ci`.

    Returns:
        ({class: AUC per valid resample}, macro AUC per valid resample).
    """
    per_class: dict[int, list[np.ndarray]] = {c: [] for c in classes}
    macro: list[np.ndarray] = []
    if not classes or n_boot < 1:
        return {c: np.array([]) for c in classes}, np.array([])
    for idx in _bootstrap_index_chunks(labels, len(labels), n_boot, seed, stratified):
        idx = idx[_has_all_classes(labels, idx)]
        if len(idx) == 0:
            continue
        lab = labels[idx]
        aucs = np.stack([_rank_auc(lab == c, scores[idx, c]) for c in classes], axis=0)
        for c, a in zip(classes, aucs):
            per_class[c].append(a)
        macro.append(aucs.mean(axis=0))
    cat = lambda parts: np.concatenate(parts) if parts else np.array([])  # noqa: E731
    return {c: cat(v) for c, v in per_class.items()}, cat(macro)
