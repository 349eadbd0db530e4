"""Input checks and JSON conversion shared by the evaluation modules.

Kept free of TensorFlow/Keras so evaluation runs on exported predictions alone.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

from cxr_tf.errors import CXRInputError


def check_class_names(class_names) -> list[str]:
    """Return class names as a list of unique strings (at least two)."""
    if isinstance(class_names, (str, bytes)) or not isinstance(class_names, Sequence):
        raise CXRInputError(None, f"class_names must be a list of names, got {class_names!r}")
    names = [str(c) for c in class_names]
    if len(names) < 2:
        raise CXRInputError(None, f"need at least 2 class names, got {names}")
    if len(set(names)) != len(names):
        raise CXRInputError(None, f"class names must be unique, got {names}")
    return names


def as_prob_matrix(y_prob, n_classes: int) -> np.ndarray:
    """Return scores as a float (N, C) array.

    A 1-D (or (N, 1)) array is accepted for binary tasks as P(class 1) and expanded
    to [1 - p, p], so the same code path serves sigmoid and softmax heads.
    """
    p = np.asarray(y_prob, dtype=np.float64)
    if n_classes == 2 and (p.ndim == 1 or (p.ndim == 2 and p.shape[1] == 1)):
        p = p.reshape(-1)
        if p.size and (p.min() < 0 or p.max() > 1):
            raise CXRInputError(None, "a 1-D y_prob is read as P(class 1) and must lie in [0, 1]")
        p = np.stack([1.0 - p, p], axis=1)
    if p.ndim != 2 or p.shape[1] != n_classes:
        raise CXRInputError(
            None, f"y_prob must have shape (N, {n_classes}) to match class_names, got {p.shape}"
        )
    if not np.all(np.isfinite(p)):
        raise CXRInputError(None, "y_prob contains NaN or infinite values")
    return p


def as_class_indices(y_true, n_classes: int, class_names: Sequence[str] | None = None) -> np.ndarray:
    """Return single-label targets as int64 class indices of shape (N,).

    Accepts integer indices, one-hot rows, or class-name strings (mapped through
    ``class_names``).
    """
    y = np.asarray(y_true)
    if y.ndim == 2:
        if y.shape[1] != n_classes:
            raise CXRInputError(None, f"one-hot y_true must have {n_classes} columns, got {y.shape}")
        yf = y.astype(np.float64)
        if not (np.isin(yf, (0.0, 1.0)).all() and np.all(yf.sum(axis=1) == 1)):
            raise CXRInputError(
                None,
                "2-D y_true must be one-hot (exactly one 1 per row); "
                "for multi-label targets use multilabel_metrics",
            )
        return yf.argmax(axis=1).astype(np.int64)
    if y.ndim != 1:
        raise CXRInputError(None, f"y_true must be 1-D indices or 2-D one-hot, got shape {y.shape}")
    if y.dtype.kind in "US" or (y.dtype.kind == "O" and all(isinstance(v, str) for v in y)):
        if class_names is None:
            raise CXRInputError(None, "string labels in y_true need class_names to map them")
        lookup = {str(n): i for i, n in enumerate(class_names)}
        unknown = sorted({str(v) for v in y} - set(lookup))
        if unknown:
            raise CXRInputError(None, f"y_true has labels not in class_names: {unknown}")
        return np.array([lookup[str(v)] for v in y], dtype=np.int64)
    if y.dtype.kind == "O":
        y = np.asarray(y.tolist())
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise CXRInputError(None, "y_true must hold whole-number class indices")
    elif y.dtype.kind not in "biu":
        raise CXRInputError(None, f"cannot read y_true of dtype {y.dtype} as class indices")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise CXRInputError(
            None, f"y_true class indices must be in [0, {n_classes - 1}], got [{y.min()}, {y.max()}]"
        )
    return y


def as_binary(y_true, score) -> tuple[np.ndarray, np.ndarray]:
    """Return (labels as bool (N,), scores as float (N,)) for a binary task.

    ``score`` may be (N,) or an (N, 2) probability matrix (column 1 is used);
    ``y_true`` may be 0/1, bool, or (N, 2) one-hot.
    """
    y = np.asarray(y_true)
    if y.ndim == 2 and y.shape[1] == 2:
        y = as_class_indices(y, 2)
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    s = np.asarray(score, dtype=np.float64)
    if s.ndim == 2 and s.shape[1] == 2:
        s = s[:, 1]
    elif s.ndim == 2 and s.shape[1] == 1:
        s = s.reshape(-1)
    if y.ndim != 1 or s.ndim != 1:
        raise CXRInputError(None, f"binary y_true/score must be 1-D, got {y.shape} and {s.shape}")
    if len(y) != len(s):
        raise CXRInputError(None, f"y_true has {len(y)} rows but score has {len(s)}")
    yf = y.astype(np.float64)
    if not np.isin(yf, (0.0, 1.0)).all():
        raise CXRInputError(None, "binary y_true must contain only 0/1 (or True/False)")
    if not np.all(np.isfinite(s)):
        raise CXRInputError(None, "score contains NaN or infinite values")
    return yf.astype(bool), s


def finite_or_none(x) -> float | None:
    """Float value, with NaN/inf/None mapped to None (JSON null)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def to_jsonable(obj):
    """Recursively convert numpy/pandas values to JSON-safe Python; NaN/inf -> None."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (bool, np.bool_)):
        return None if obj is None else bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return finite_or_none(obj)
    if isinstance(obj, str):
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item") and callable(obj.item):  # other numpy/pandas scalars
        try:
            return to_jsonable(obj.item())
        except (TypeError, ValueError):
            pass
    # Configs may carry arbitrary objects (callables, classes); their repr is the
    # most useful thing a report can show.
    return str(obj)


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Render a GitHub-flavoured markdown table (no third-party dependency)."""

    def cell(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)
