"""The LPIPS scores (Zhang et al. 2018, Sec. 3; ``score_2afc_dataset`` and
``score_jnd_dataset`` of richzhang/PerceptualSimilarity)."""
from __future__ import annotations

import numpy as np

from cxr_tf.errors import CXRInputError


def _same_len(*arrays):
    n = {len(a) for a in arrays}
    if len(n) != 1:
        raise CXRInputError(None, f"arrays differ in length: {[len(a) for a in arrays]}")


def score_2afc(d0, d1, judge) -> tuple[float, np.ndarray]:
    """2AFC agreement: per triplet, the fraction of raters the distance agrees with.

    ``judge`` is the fraction who chose p1 as closer to the reference. A distance
    that calls p0 closer (``d0 < d1``) agrees with ``1 - judge`` of the raters, p1
    closer with ``judge``, a tie with half. Returns (mean, per-triplet scores).
    """
    d0, d1, j = (np.asarray(v, np.float64).ravel() for v in (d0, d1, judge))
    _same_len(d0, d1, j)
    s = (d0 < d1) * (1.0 - j) + (d1 < d0) * j + (d0 == d1) * 0.5
    return float(s.mean()) if len(s) else float("nan"), s


def voc_ap(rec, prec) -> float:
    """Area under the precision-recall curve, PASCAL VOC 2010+ style: precision made
    monotonically non-increasing from the right, summed where recall changes."""
    mrec = np.concatenate(([0.0], np.asarray(rec, np.float64), [1.0]))
    mpre = np.concatenate(([0.0], np.asarray(prec, np.float64), [0.0]))
    for i in range(len(mpre) - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def score_jnd(d, same) -> float:
    """JND mAP: rank pairs by distance (closest first) and take the average precision
    of retrieving "same" pairs, each pair counting by the fraction who said "same".
    Ties are ordered stably (by position)."""
    d, s = np.asarray(d, np.float64).ravel(), np.asarray(same, np.float64).ravel()
    _same_len(d, s)
    if s.sum() == 0:
        return float("nan")
    s = s[np.argsort(d, kind="stable")]
    tp = np.cumsum(s)
    fp = np.cumsum(1.0 - s)
    fn = s.sum() - tp
    return voc_ap(tp / (tp + fn), tp / (tp + fp))
