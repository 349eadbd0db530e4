"""Uncertainty policies for text-mined CXR labels (CheXpert: 1 / 0 / -1 / blank).

Turns a raw label matrix (``1``, ``0``, ``-1`` uncertain, ``NaN`` blank) into
``(targets, weights)`` for a masked loss (:class:`cxr_tf.noisy.losses.MaskedBinaryCrossentropy`):
a weight of 0 removes an entry from the loss.

Policies for ``-1`` (Irvin et al. 2019, CheXpert, Sec. 4; LSR as in Pham et al. 2021):

* ``ignore`` (U-Ignore): weight 0;
* ``zeros`` (U-Zeros): target 0;
* ``ones`` (U-Ones): target 1;
* ``lsr`` (label smoothing, U-LSR): a soft target. The default ``lsr_range=(0.5, 0.5)``
  is the constant 0.5 of the seed (SPEC S1); a range such as ``(0.55, 0.85)`` (Pham et
  al.'s U-Ones+LSR) draws the target uniformly per entry, once (seeded).

Blank (not mentioned): ``blank="mask"`` (weight 0) or ``blank="zero"`` (target 0 with
weight ``blank_weight``, per label if a dict/list: the radiology report did not mention
it, which usually means absent, but less surely than an explicit negative).

Every option takes one value or a per-label choice ``{label: value}`` (labels not named take
``"default"``). On the command line the same choices are strings, parsed by
:func:`parse_policy`, :func:`parse_blank` and :func:`parse_blank_weight`:
``"lsr"`` / ``"default=ignore,Edema=ones"``, ``"mask"`` / ``"default=mask,Edema=zero"``,
``"1.0"`` / ``"default=1.0,No Finding=0.2"``.
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


def _parse_per_label(spec, what: str, allowed=None, convert=None):
    """``"v"`` -> ``v``; ``"default=v,Label=w"`` -> ``{"default": v, "Label": w}`` (values
    checked against ``allowed`` / converted with ``convert``; a ``CXRConfigError`` otherwise)."""
    if not isinstance(spec, str):
        return spec  # already a value or a mapping (library use)

    def value(v: str, label: str | None):
        where = f" for {label!r}" if label else ""
        if allowed is not None and v not in allowed:
            raise CXRConfigError(f"{what}: {v!r}{where} is not one of {list(allowed)}")
        if convert is not None:
            try:
                return convert(v)
            except ValueError:
                raise CXRConfigError(f"{what}: {v!r}{where} is not a number") from None
        return v

    spec = spec.strip()
    if "=" not in spec:
        if "," in spec:
            raise CXRConfigError(f"{what}: {spec!r}: give one value or 'label=value,...' (e.g. 'default=...')")
        return value(spec, None)
    out = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        k, eq, v = part.partition("=")
        k, v = k.strip(), v.strip()
        if not eq or not k or not v:
            raise CXRConfigError(f"{what}: {part.strip()!r} in {spec!r} is not 'label=value'")
        if k in out:
            raise CXRConfigError(f"{what}: label {k!r} given twice in {spec!r}")
        out[k] = value(v, k)
    return out


def parse_policy(spec: str) -> str | dict[str, str]:
    """CLI form: ``"lsr"`` or ``"default=ignore,Atelectasis=ones,Edema=ones"``."""
    return _parse_per_label(spec, "uncertain policy", POLICIES)


def parse_blank(spec: str) -> str | dict[str, str]:
    """CLI form: ``"mask"``, ``"zero"`` or ``"default=mask,Edema=zero"``."""
    return _parse_per_label(spec, "blank", BLANK)


def parse_blank_weight(spec) -> float | dict[str, float]:
    """CLI form: ``"1.0"`` or ``"default=1.0,No Finding=0.2"`` (weights >= 0)."""
    if isinstance(spec, (int, float)):
        spec = str(spec)
    out = _parse_per_label(spec, "blank_weight", convert=float)
    for k, v in (out.items() if isinstance(out, Mapping) else [(None, out)]):
        if not np.isfinite(v) or v < 0:
            raise CXRConfigError(f"blank_weight{f' for {k!r}' if k else ''} must be a number >= 0; got {v}")
    return out


@dataclasses.dataclass
class UncertaintyPolicy:
    """How raw 1 / 0 / -1 / NaN labels become ``(targets, weights)``.

    Args:
        uncertain: ``ignore`` | ``zeros`` | ``ones`` | ``lsr``, or ``{label: policy, "default": ...}``.
        lsr_range: ``(low, high)`` for ``lsr``: per-entry uniform draw; ``low == high`` (the
            default ``(0.5, 0.5)``) is that constant.
        blank: ``mask`` | ``zero`` (or per label).
        blank_weight: weight of a blank treated as 0 (one number or per label).
        seed: for the LSR draws (fixed, so the same labels give the same targets).
    """

    uncertain: str | dict = "ignore"
    lsr_range: tuple[float, float] = (0.5, 0.5)
    blank: str | dict = "mask"
    blank_weight: float | dict | list = 1.0
    seed: int = 0

    def __post_init__(self):
        lo, hi = self.lsr_range
        if not 0.0 <= lo <= hi <= 1.0:
            raise CXRConfigError(f"lsr_range must satisfy 0 <= low <= high <= 1; got {self.lsr_range}")

    def resolve(self, names: Sequence[str]) -> tuple[list[str], list[str], np.ndarray]:
        """Per-label ``(uncertain policies, blank choices, blank weights)`` for ``names``;
        raises ``CXRConfigError`` on unknown labels, missing defaults or bad values."""
        unc = _per_label(self.uncertain, names, "uncertain policy", POLICIES)
        blank = _per_label(self.blank, names, "blank", BLANK)
        bw = np.asarray(_per_label(self.blank_weight, names, "blank_weight"), np.float32)
        if not (bw >= 0).all():
            raise CXRConfigError(f"blank_weight must be >= 0; got {bw.tolist()}")
        return unc, blank, bw

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
        unc, blank, bw = self.resolve(names)
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
