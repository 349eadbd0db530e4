"""Training methods for noisy multi-label CXR labels (SPEC S1, seed 001).

* the disease hierarchy: conditional training on parent-positive samples and
  consistent inference ``P(child) = P(child | parent) P(parent)`` (Pham et al. 2021,
  "Interpreting chest X-rays via CNNs that exploit hierarchical disease dependencies
  and uncertainty labels");
* MixUp for masked multi-label targets (on top of ``keras.layers.MixUp``);
* relabelling with the best model, then retraining only the final layer.

MentorNet-style weighting is a loss: :class:`cxr_tf.noisy.losses.MentorNetBinaryCrossentropy`.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from cxr_tf.errors import CXRConfigError

#: child -> parent (SPEC S1; CheXpert names). Pneumonia -> Consolidation -> Lung Opacity.
CHEXPERT_HIERARCHY = {
    "Cardiomegaly": "Enlarged Cardiomediastinum",
    "Pneumonia": "Consolidation",
    "Lung Lesion": "Lung Opacity",
    "Edema": "Lung Opacity",
    "Consolidation": "Lung Opacity",
    "Atelectasis": "Lung Opacity",
}


def restrict_hierarchy(names: Sequence[str], hierarchy: Mapping[str, str] = CHEXPERT_HIERARCHY) -> dict[str, str]:
    """The hierarchy on the labels present: a child whose parent is absent links to the
    nearest present ancestor, or becomes a root."""
    out = {}
    for child in hierarchy:
        if child not in names:
            continue
        p, seen = hierarchy.get(child), {child}
        while p is not None and p not in names:
            if p in seen:
                raise CXRConfigError(f"the hierarchy has a cycle through {p!r}")
            seen.add(p)
            p = hierarchy.get(p)
        if p is not None:
            out[child] = p
    _topological(names, out)  # validates: no cycles
    return out


def _topological(names: Sequence[str], hierarchy: Mapping[str, str]) -> list[int]:
    """Label indices, parents before children."""
    order, state = [], {}

    def visit(n, path=()):
        if state.get(n) == 2:
            return
        if n in path:
            raise CXRConfigError(f"the hierarchy has a cycle: {' -> '.join(path + (n,))}")
        p = hierarchy.get(n)
        if p is not None:
            visit(p, path + (n,))
        state[n] = 2
        order.append(list(names).index(n))

    for n in names:
        visit(n)
    return order


def derive_parent_labels(labels: np.ndarray, names: Sequence[str], hierarchy: Mapping[str, str]) -> np.ndarray:
    """Make raw labels consistent with "a child implies its parent": a positive child
    makes an unknown/negative/uncertain parent positive (applied down the whole tree)."""
    y = np.array(labels, np.float32, copy=True)
    names = list(names)
    for j in reversed(_topological(names, hierarchy)):  # children before parents
        child = names[j]
        if child in hierarchy:
            pj = names.index(hierarchy[child])
            y[y[:, j] == 1, pj] = 1.0
    return y


def conditional_weights(targets: np.ndarray, weights: np.ndarray, names: Sequence[str],
                        hierarchy: Mapping[str, str]) -> np.ndarray:
    """Conditional training: a child's entry counts only where its parent's target is positive
    (>= 0.5 and known), so the child's output learns ``P(child | parent)``."""
    w = np.array(weights, np.float32, copy=True)
    names = list(names)
    for child, parent in hierarchy.items():
        j, pj = names.index(child), names.index(parent)
        parent_pos = (targets[:, pj] >= 0.5) & (weights[:, pj] > 0)
        w[~parent_pos, j] = 0.0
    return w


def hierarchical_probabilities(probs: np.ndarray, names: Sequence[str], hierarchy: Mapping[str, str]) -> np.ndarray:
    """Conditional outputs -> marginals: ``P(child) = P(child | parent) * P(parent)``, recursively
    (parents first), so no child ever exceeds its parent."""
    p = np.array(probs, np.float64, copy=True)
    names = list(names)
    for j in _topological(names, hierarchy):
        parent = hierarchy.get(names[j])
        if parent is not None:
            p[:, j] = p[:, j] * p[:, names.index(parent)]
    return p.astype(np.float32)


# ------------------------------------------------------------------------ MixUp
def make_masked_mixup(alpha: float = 0.2, seed: int | None = None):
    """MixUp (Zhang et al. 2018) for images with packed ``[targets, weights]`` labels.

    Uses ``keras.layers.MixUp`` (same permutation and Beta(alpha, alpha) weight for images
    and labels). It mixes labels linearly, which is right for known 0/1 targets but not for
    masked entries (their target means nothing), so it is fed ``[t * w, w]``: the mixed
    target is ``(lam t1 w1 + (1 - lam) t2 w2) / (lam w1 + (1 - lam) w2)``, the weighted mean
    of the *known* targets only, and the mixed weight is the known share ``lam w1 + (1 - lam) w2``.

    Returns:
        ``fn(images, packed) -> (images, packed)`` for ``tf.data.Dataset.map`` on batches.
    """
    import keras
    import tensorflow as tf

    layer = keras.layers.MixUp(alpha=alpha, seed=seed)

    def fn(images, packed):
        n = packed.shape[-1] // 2
        t, w = packed[:, :n], packed[:, n:]
        out = layer({"images": images, "labels": tf.concat([t * w, w], -1)}, training=True)
        tw, wm = out["labels"][:, :n], out["labels"][:, n:]
        tm = tf.math.divide_no_nan(tw, wm)
        return out["images"], tf.concat([tm, wm], -1)

    return fn


# ------------------------------------------------------------------- relabelling
def relabel(raw_labels: np.ndarray, targets: np.ndarray, weights: np.ndarray, probs: np.ndarray,
            confident: float = 0.9, *, hierarchy: Mapping[str, str] | None = None,
            names: Sequence[str] | None = None,
            conditional_probs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Regenerate training labels with the best model (seed 001's relabelling).

    * uncertain (``-1``) entries take the model's probability as a soft target, weight 1;
    * known 0/1 entries the model contradicts with confidence (``p > confident`` for a 0,
      ``p < 1 - confident`` for a 1) are flipped;
    * blank entries keep what the policy gave them.

    With the disease hierarchy (conditional training), a child's target is ``P(child | parent)``,
    not its marginal: pass ``hierarchy`` (child -> parent), ``names`` and ``conditional_probs``,
    the model's raw outputs before consistent inference. Child columns are then soft-filled and
    checked for flips with ``conditional_probs``; parents and labels outside the hierarchy use
    ``probs`` (their marginals). Re-apply :func:`conditional_weights` to the result.

    Returns:
        ``(targets, weights, counts)`` with counts of soft-filled and flipped entries.
    """
    if not 0.5 < confident < 1.0:
        raise CXRConfigError(f"confident must be in (0.5, 1); received {confident}")
    y = np.asarray(raw_labels, np.float32)
    p = np.array(probs, np.float32, copy=True)
    if p.shape != y.shape:
        raise CXRConfigError(f"probs {p.shape} do not match labels {y.shape}")
    if hierarchy:
        if names is None or conditional_probs is None:
            raise CXRConfigError("relabel with a hierarchy needs names= and conditional_probs= (the raw "
                                 "P(child | parent) outputs)")
        pc = np.asarray(conditional_probs, np.float32)
        if pc.shape != y.shape or len(names) != y.shape[1]:
            raise CXRConfigError(f"conditional_probs {pc.shape} / {len(names)} names do not match labels {y.shape}")
        names = list(names)
        unknown = [c for c in hierarchy if c not in names or hierarchy[c] not in names]
        if unknown:
            raise CXRConfigError(f"hierarchy entries {unknown} are not among the labels {names}")
        children = [names.index(c) for c in hierarchy]
        p[:, children] = pc[:, children]
    t, w = np.array(targets, np.float32, copy=True), np.array(weights, np.float32, copy=True)
    unc = y == -1
    t[unc], w[unc] = p[unc], 1.0
    flip_up = (y == 0) & (p > confident)
    flip_down = (y == 1) & (p < 1.0 - confident)
    t[flip_up], t[flip_down] = 1.0, 0.0
    return t, w, {"soft_filled": int(unc.sum()), "flipped_to_1": int(flip_up.sum()),
                  "flipped_to_0": int(flip_down.sum())}


def freeze_all_but(model, trainable: Sequence[str] = ("predictions",)) -> int:
    """Freeze every layer except ``trainable`` (the final FC layer by default); returns the
    number of trainable parameters left. Frozen BatchNorm then runs in inference mode."""
    names = {l.name for l in model.layers}
    missing = [n for n in trainable if n not in names]
    if missing:
        raise CXRConfigError(f"model has no layers {missing}")
    for layer in model.layers:
        layer.trainable = layer.name in trainable
    return int(sum(np.prod(v.shape) for v in model.trainable_weights))
