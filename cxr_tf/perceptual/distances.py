"""Image distances for perceptual agreement: L2, SSIM, MS-SSIM and deep features.

Every distance takes two batches ``(N, H, W)`` or ``(N, H, W, 1)`` of gray images
in [0, 1] and returns ``(N,)`` float distances (larger = more different).

The deep-feature distance follows LPIPS (Zhang et al. 2018, Eq. 1): features of
chosen layers are unit-normalised along channels, squared differences are
(optionally) weighted per channel, averaged over space and summed over layers.
With all weights 1 it is the "baseline" variant; :meth:`DeepFeatureDistance.fit_linear`
learns non-negative per-channel weights from 2AFC judgments as LPIPS "lin" does
(here by logistic regression of the judgment on ``d0 - d1``, solved with
scipy's L-BFGS-B with a non-negativity bound, instead of LPIPS' small ranking
network, because the distance is linear in the weights).
"""
from __future__ import annotations

import os

import numpy as np

from cxr_tf.errors import CXRInputError, CXRModelError

# Wang et al. 2003 MS-SSIM exponents (the default of tf.image.ssim_multiscale).
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _batch(x, name="images") -> np.ndarray:
    a = np.asarray(x, np.float32)
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4 or a.shape[-1] != 1:
        raise CXRInputError(None, f"{name} must be (N, H, W) or (N, H, W, 1) gray images; received {a.shape}")
    return a


def _pair(x0, x1):
    a, b = _batch(x0, "x0"), _batch(x1, "x1")
    if a.shape != b.shape:
        raise CXRInputError(None, f"image batches differ in shape: {a.shape} vs {b.shape}")
    return a, b


def l2(x0, x1) -> np.ndarray:
    """Mean squared difference per image."""
    a, b = _pair(x0, x1)
    return np.mean((a.astype(np.float64) - b) ** 2, axis=(1, 2, 3))


def ssim_distance(x0, x1, filter_size: int = 11) -> np.ndarray:
    """``1 - SSIM`` (``tf.image.ssim``, Gaussian window sigma 1.5, data range 1)."""
    import tensorflow as tf

    a, b = _pair(x0, x1)
    fs = min(filter_size, a.shape[1], a.shape[2])
    return 1.0 - tf.image.ssim(a, b, max_val=1.0, filter_size=fs).numpy().astype(np.float64)


def ms_ssim_scales(size: int, filter_size: int) -> int:
    """How many MS-SSIM scales fit: the coarsest must still hold the window."""
    k = 1
    while k < len(MS_SSIM_WEIGHTS) and size // (2**k) >= filter_size:
        k += 1
    return k


def ms_ssim_distance(x0, x1, filter_size: int = 7) -> np.ndarray:
    """``1 - MS-SSIM`` (``tf.image.ssim_multiscale``) with as many of the five standard
    scales as the image size allows (the exponents renormalised to sum to 1):
    64 px with a 7 px window gives 4 scales (64, 32, 16, 8)."""
    import tensorflow as tf

    a, b = _pair(x0, x1)
    k = ms_ssim_scales(min(a.shape[1:3]), filter_size)
    w = np.array(MS_SSIM_WEIGHTS[:k]) / sum(MS_SSIM_WEIGHTS[:k])
    v = tf.image.ssim_multiscale(a, b, max_val=1.0, power_factors=w.tolist(), filter_size=filter_size)
    return 1.0 - v.numpy().astype(np.float64)


# ------------------------------------------------------------- deep features
_SKIP_LAYER_TYPES = ("InputLayer", "BackboneInput", "ZeroPadding2D")


def default_feature_layers(model) -> list[str]:
    """The last layer at each spatial resolution of the backbone (4-D outputs only),
    e.g. ``block{1,2,3}_relu`` for tiny_cnn, ``conv{2..5}_block*_out`` for ResNet50."""
    by_size: dict[tuple, str] = {}
    order = []
    for layer in model.layers:
        if type(layer).__name__ in _SKIP_LAYER_TYPES:
            continue
        shape = getattr(layer, "output", None)
        shape = getattr(shape, "shape", None)
        if shape is None or len(shape) != 4:
            continue
        key = tuple(shape[1:3])
        if key not in by_size:
            order.append(key)
        by_size[key] = layer.name
    return [by_size[k] for k in order]


def load_classifier(spec: str, image_size: int = 64, seed: int = 0):
    """A registry classifier for features.

    ``spec``: ``random:BACKBONE`` (random initialisation, e.g. ``random:resnet50``),
    a ``.keras`` file, or a run folder of ``cxr_tf.experiments.pneumonia_freeze``
    (``model.json`` + ``checkpoints/best.weights.h5``).
    """
    import json

    import keras

    from cxr_tf.models import CXRClassifier, build_model

    if spec.startswith("random:"):
        keras.utils.set_random_seed(seed)
        return build_model(spec.split(":", 1)[1], num_classes=2, image_size=image_size, freeze_until=0,
                           head="gap")
    if spec.endswith(".keras"):
        if not os.path.isfile(spec):
            raise CXRModelError(f"{spec}: no such model file")
        return keras.models.load_model(spec)
    mj, w = os.path.join(spec, "model.json"), os.path.join(spec, "checkpoints", "best.weights.h5")
    if not (os.path.isfile(mj) and os.path.isfile(w)):
        raise CXRModelError(f"{spec}: not a .keras file, random:BACKBONE or a run folder with model.json and "
                            "checkpoints/best.weights.h5")
    cfg = json.load(open(mj))["config"]
    cfg.pop("name", None)
    m = CXRClassifier(**{**cfg, "weights": None})
    m.load_weights(w)
    return m


class DeepFeatureDistance:
    """LPIPS-style distance on a classifier's features.

    Args:
        model: a Keras model taking ``(N, S, S, 1)`` images in [0, 1] (any
            :class:`~cxr_tf.models.CXRClassifier`); inputs of another size are resized.
        layers: layer names (default :func:`default_feature_layers`).
        weights: per-channel non-negative weights, one array per layer (default ones).
        batch_size: images per forward pass.
        name: label in tables.
    """

    def __init__(self, model, layers=None, weights=None, batch_size: int = 64, name: str | None = None):
        import keras

        self.layers = list(layers or default_feature_layers(model))
        try:
            outs = [model.get_layer(n).output for n in self.layers]
        except ValueError as e:
            raise CXRModelError(f"{model.name}: {e}; layers with 4-D outputs: {default_feature_layers(model)}") from None
        if any(len(o.shape) != 4 for o in outs):
            raise CXRModelError(f"feature layers must have 4-D (N, H, W, C) outputs; got {[o.shape for o in outs]}")
        self.extractor = keras.Model(model.inputs[0] if len(model.inputs) == 1 else model.inputs, outs)
        self.channels = [int(o.shape[-1]) for o in outs]
        self.input_size = tuple(model.input_shape[1:3])
        self.batch_size = batch_size
        self.name = name or f"deep[{model.name}]"
        self.w = np.ones(sum(self.channels)) if weights is None else np.concatenate([np.ravel(w) for w in weights])
        if self.w.shape != (sum(self.channels),) or (self.w < 0).any():
            raise CXRModelError(f"weights: {sum(self.channels)} non-negative values needed")

    def features(self, x) -> list[np.ndarray]:
        """Channel-unit-normalised features per layer."""
        import tensorflow as tf

        a = _batch(x)
        if a.shape[1:3] != self.input_size:
            a = tf.image.resize(a, self.input_size, method="area").numpy()
        outs = [[] for _ in self.layers]
        for i in range(0, len(a), self.batch_size):
            f = self.extractor(a[i:i + self.batch_size], training=False)
            f = f if isinstance(f, (list, tuple)) else [f]
            for k, t in enumerate(f):
                t = np.asarray(t, np.float64)
                outs[k].append(t / (np.sqrt((t**2).sum(-1, keepdims=True)) + 1e-10))
        return [np.concatenate(o) for o in outs]

    def channel_distances(self, x0, x1) -> np.ndarray:
        """``(N, C_total)``: per channel, the spatial mean of the squared difference of
        unit-normalised features (LPIPS Eq. 1 before the weights)."""
        a, b = _pair(x0, x1)
        f0, f1 = self.features(a), self.features(b)
        return np.concatenate([((u - v) ** 2).mean(axis=(1, 2)) for u, v in zip(f0, f1)], axis=1)

    def __call__(self, x0, x1) -> np.ndarray:
        return self.channel_distances(x0, x1) @ self.w

    def fit_linear(self, v0: np.ndarray, v1: np.ndarray, judge: np.ndarray, l2_reg: float = 1e-3) -> "DeepFeatureDistance":
        """Learn the per-channel weights from 2AFC judgments (LPIPS "lin").

        Args:
            v0, v1: :meth:`channel_distances` of (ref, p0) and (ref, p1), ``(N, C)``.
            judge: ``(N,)`` fraction of raters who chose p1.
            l2_reg: ridge penalty on the weights (relative to the data term).
        Returns:
            a new DeepFeatureDistance sharing the extractor, with learned weights;
            ``P(p1 chosen) = sigmoid(w . (v0 - v1))``, ``w >= 0``.
        """
        from scipy.optimize import minimize

        x = np.asarray(v0, np.float64) - np.asarray(v1, np.float64)
        y = np.asarray(judge, np.float64)
        scale = 1.0 / (np.abs(x).mean() + 1e-12)  # conditioning: weights of order 1
        xs = x * scale

        def loss(w):
            z = xs @ w
            # BCE with soft targets, numerically stable: log(1+e^z) - y z
            ll = np.logaddexp(0, z) - y * z
            p = 1 / (1 + np.exp(-z))
            g = xs.T @ (p - y) / len(y) + 2 * l2_reg * w
            return ll.mean() + l2_reg * (w @ w), g

        w0 = np.full(x.shape[1], 1.0 / x.shape[1])
        res = minimize(loss, w0, jac=True, method="L-BFGS-B", bounds=[(0, None)] * x.shape[1])
        new = object.__new__(DeepFeatureDistance)
        new.__dict__.update(self.__dict__)
        new.w = res.x * scale
        new.name = self.name + "+lin"
        new.fit_result = {"loss": float(res.fun), "converged": bool(res.success), "nonzero": int((res.x > 0).sum())}
        return new
