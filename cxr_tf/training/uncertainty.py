"""Uncertainty policies for text-mined CXR labels (CheXpert: 1 / 0 / -1 / blank).

Turns a raw label matrix (``1``, ``0``, ``-1`` uncertain, ``NaN`` blank) into
``(targets, weights)`` for a masked loss (:class:`cxr_tf.training.losses.MaskedBinaryCrossentropy`):
a weight of 0 removes an entry from the loss.

Policies for ``-1`` (Irvin et al. 2019, CheXpert, Sec. 4; LSR as in Pham et al. 2021):

* ``ignore`` (U-Ignore): weight 0;
* ``zeros`` (U-Zeros): target 0;
* ``ones`` (U-Ones): target 1;
* ``lsr`` (label smoothing): a soft target; ``lsr_range=(0.55, 0.85)`` draws it
  uniformly per entry once (the range of Pham et al. for U-Ones+LSR), ``(0.5, 0.5)``
  is the constant 0.5 of the seed.

Blank (not mentioned): ``blank="mask"`` (weight 0) or ``blank="zero"`` (target 0 with
weight ``blank_weight``, per label if a dict/list: the radiology report did not mention
it, which usually means absent, but less surely than an explicit negative).

Every option takes one value or a per-label choice ``{label: value}``.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from cxr_tf.errors import CXRConfigError

POLICIES = ("ignore", "zeros", "ones", "lsr")
BLANK = ("mask", "zero")


def _per_label(value, names: Sequence[str], what: str, allowed=None):
    """One value or ``{label: value}`` (labels not named take ``default``) -> list per label."""
    if isinstance(value, Mapping):
        unknown = [k for k in value if k not in names and k != "default"]
        if unknown:
            raise CXRConfigError(f"{what}: unknown labels {unknown}; labels are {list(names)}")
        if "default" not in value and len([n for n in names if n not in value]):
            raise CXRConfigError(f"{what}: no value for {[n for n in names if n not in value]} and no 'default'")
        out = [value.get(n, value.get("default")) for n in names]
    elif isinstance(value, (list, tuple)) and not isinstance(value, str) and what != "lsr_range":
        if len(value) != len(names):
            raise CXRConfigError(f"{what}: {len(value)} values for {len(names)} labels")
        out = list(value)
    else:
        out = [value] * len(names)
    if allowed is not None:
        bad = [v for v in out if v not in allowed]
        if bad:
            raise CXRConfigError(f"{what} must be one of {allowed}; got {bad[0]!r}")
    return out


def parse_policy(spec: str) -> str | dict[str, str]:
    """CLI form: ``"lsr"`` or ``"default=ignore,Atelectasis=ones,Edema=ones"``."""
    if "=" not in spec:
        return spec
    out = {}
    for part in spec.split(","):
        k, _, v = part.partition("=")
        out[k.strip()] = v.strip()
    return out


@dataclasses.dataclass
class UncertaintyPolicy:
    """How raw 1 / 0 / -1 / NaN labels become ``(targets, weights)``.

    Args:
        uncertain: ``ignore`` | ``zeros`` | ``ones`` | ``lsr``, or ``{label: policy, "default": ...}``.
        lsr_range: ``(low, high)`` for ``lsr``: per-entry uniform draw (``low == high``: constant).
        blank: ``mask`` | ``zero`` (or per label).
        blank_weight: weight of a blank treated as 0 (one number or per label).
        seed: for the LSR draws (fixed, so the same labels give the same targets).
    """

    uncertain: str | dict = "ignore"
    lsr_range: tuple[float, float] = (0.55, 0.85)
    blank: str | dict = "mask"
    blank_weight: float | dict | list = 1.0
    seed: int = 0

    def __post_init__(self):
        lo, hi = self.lsr_range
        if not 0.0 <= lo <= hi <= 1.0:
            raise CXRConfigError(f"lsr_range must satisfy 0 <= low <= high <= 1; got {self.lsr_range}")

    def apply(self, labels: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``labels`` (N, L) in {1, 0, -1, NaN} -> ``(targets, weights)``, both float32 (N, L).

        Masked entries get target 0 and weight 0 (the loss never sees the target).
        """
        y = np.asarray(labels, np.float32)
        if y.ndim != 2 or y.shape[1] != len(names):
            raise CXRConfigError(f"labels {y.shape} do not match {len(names)} label names")
        known = ~np.isnan(y)
        if not np.isin(y[known], (-1.0, 0.0, 1.0)).all():
            raise CXRConfigError("raw labels must be 1, 0, -1 or NaN")
        unc = _per_label(self.uncertain, names, "uncertain policy", POLICIES)
        blank = _per_label(self.blank, names, "blank", BLANK)
        bw = np.asarray(_per_label(self.blank_weight, names, "blank_weight"), np.float32)
        if (bw < 0).any():
            raise CXRConfigError(f"blank_weight must be >= 0; got {bw.tolist()}")
        t = np.where(known & (y == 1), 1.0, 0.0).astype(np.float32)
        w = np.where(known & (y >= 0), 1.0, 0.0).astype(np.float32)
        rng = np.random.default_rng(self.seed)
        lo, hi = self.lsr_range
        draws = rng.uniform(lo, hi, size=y.shape).astype(np.float32) if hi > lo else np.full(y.shape, lo, np.float32)
        for j, (p, b) in enumerate(zip(unc, blank)):
            u = y[:, j] == -1
            if p != "ignore":
                w[u, j] = 1.0
                t[u, j] = {"zeros": 0.0, "ones": 1.0}.get(p, 0.0)
                if p == "lsr":
                    t[u, j] = draws[u, j]
            nb = ~known[:, j]
            if b == "zero":
                t[nb, j] = 0.0
                w[nb, j] = bw[j]
        return t, w

    def describe(self) -> str:
        u = self.uncertain if isinstance(self.uncertain, str) else ",".join(f"{k}={v}" for k, v in self.uncertain.items())
        extra = f" lsr{tuple(self.lsr_range)}" if "lsr" in str(self.uncertain) else ""
        return f"U-{u}{extra}, blank={self.blank}"


def pack(targets: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``(N, L), (N, L) -> (N, 2L)``: what the masked losses take as ``y_true``.

    Keras losses get one ``y_true`` tensor; per-entry weights of shape (N, L) do not fit
    ``sample_weight`` (per sample), so targets and weights travel side by side.
    """
    return np.concatenate([np.asarray(targets, np.float32), np.asarray(weights, np.float32)], axis=1)


def unpack(y):
    """Inverse of :func:`pack` (numpy or a tensor): ``(targets, weights)``."""
    n = y.shape[-1] // 2
    return y[..., :n], y[..., n:]
