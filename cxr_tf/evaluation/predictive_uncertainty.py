"""Predictive uncertainty from several predictions of one image: test-time augmentation
views and deep-ensemble members (Lakshminarayanan et al., NeurIPS 2017).

Given member predictions ``(M, N, C)`` (M views or models), the prediction is their mean;
the predictive entropy of the mean measures total uncertainty, and the mutual information
(entropy of the mean minus the mean member entropy) the part due to disagreement between
members (Depeweg et al. 2018). Per-label sigmoid outputs use the binary entropy per label.

Pure numpy: no TensorFlow import.
"""
from __future__ import annotations

import numpy as np

from cxr_tf.errors import CXRInputError

_EPS = 1e-12


def _entropy(p: np.ndarray, multilabel: bool) -> np.ndarray:
    p = np.clip(p, _EPS, 1.0)
    if multilabel:  # binary entropy per label, summed over labels
        q = np.clip(1.0 - p, _EPS, 1.0)
        return -(p * np.log(p) + q * np.log(q)).sum(-1)
    return -(p * np.log(p)).sum(-1)


def combine(members, multilabel: bool = False) -> dict:
    """Mean prediction and uncertainty of ``members`` ``(M, N, C)``.

    Returns:
        ``{"mean": (N, C), "entropy": (N,), "mutual_information": (N,), "member_std": (N, C),
        "n_members": M}`` (natural log units; the maximum entropy of C classes is log C).
    """
    p = np.asarray(members, dtype=np.float64)
    if p.ndim != 3 or p.shape[0] < 1:
        raise CXRInputError(None, f"members must be (M, N, C) with M >= 1; got shape {p.shape}")
    mean = p.mean(0)
    h = _entropy(mean, multilabel)
    return {"mean": mean, "entropy": h, "mutual_information": np.maximum(h - _entropy(p, multilabel).mean(0), 0.0),
            "member_std": p.std(0), "n_members": int(p.shape[0])}


def check_compatible(metas: list[dict]) -> None:
    """Ensemble members must predict the same classes in the same order."""
    names = [tuple(m.get("class_names") or ()) for m in metas]
    if len(set(names)) > 1:
        raise CXRInputError(None, f"ensemble members disagree on class names: {sorted(set(names))}")
