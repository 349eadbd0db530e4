"""Test-time augmentation: the same image seen through a few mild, seeded transforms.

View 0 is always the unchanged image; the others use an augmentation policy (default
``light``: rotation 10 degrees, shifts and crop/pad 5%; no flips, since the heart's side is
not symmetric) with the project's own stateless transform, so a TTA prediction is
reproducible from its seed.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from cxr_tf.data.augment import apply_policy, get_policy


def tta_views(images, n_views: int = 8, policy: str = "light", seed: int = 0) -> np.ndarray:
    """``(V, B, H, W, C)`` views of a batch ``(B, H, W, C)`` of [0, 1] images; view 0 = original."""
    x = tf.convert_to_tensor(np.asarray(images, np.float32))
    pol = get_policy(policy)
    views = [x] + [apply_policy(x, pol, tf.constant([seed, k], tf.int64)) for k in range(1, max(1, n_views))]
    return np.stack([v.numpy() for v in views])


def predict_tta(predict, images, n_views: int = 8, policy: str = "light", seed: int = 0) -> np.ndarray:
    """Member predictions ``(V, B, C)`` of ``predict`` (a function of a float image batch)."""
    return np.stack([np.asarray(predict(v)) for v in tta_views(images, n_views, policy, seed)])
