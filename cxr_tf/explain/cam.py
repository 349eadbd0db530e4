"""Class activation maps behind one interface: Grad-CAM, Grad-CAM++ and Score-CAM.

All three come from tf-keras-vis (Kubota): Grad-CAM (Selvaraju et al. 2017),
Grad-CAM++ (Chattopadhay et al. 2018) and Score-CAM (Wang et al. 2020; with
``max_n`` it is "Faster Score-CAM": only the ``max_n`` channels of highest variance
are used as masks, instead of every channel of the target layer).

The target layer is chosen per model: the model's registered ``cam_layer`` (for a
:class:`CXRClassifier`, its backbone's ``BackboneSpec.cam_layer``), else the last layer
with a 4D output (the last convolutional feature map before pooling), and can be
overridden by name. A wrong name is
a :class:`~cxr_tf.errors.CXRModelError` listing valid candidates.

tf-keras-vis pitfalls (FACTS.md): a model nested as a layer breaks it (cxr_tf models
are flat by construction), and its ``ReplaceToLinear`` modifier needs a clone of the
model; CXRClassifier is cloned through its own config (same weights) so the caller's
model keeps its softmax.
"""
from __future__ import annotations

import numpy as np

from cxr_tf.errors import CXRConfigError, CXRModelError

METHODS = ("gradcam", "gradcam++", "scorecam")


def _require_tf_keras_vis():
    try:
        import tf_keras_vis  # noqa: F401
    except ImportError:
        raise CXRConfigError("explanations need tf-keras-vis: pip install 'cxr_tf[explain]' "
                             "(or pip install tf-keras-vis)") from None


def feature_map_layers(model) -> list[str]:
    """Names of layers with a 4D (N, H, W, C) output, in graph order (input adapters excluded)."""
    import keras

    out = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer) or layer.name == "backbone_input":
            continue
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):  # shared layers have several outputs
            continue
        if len(shape) == 4:
            out.append(layer.name)
    return out


def target_layer(model, layer: str | None = None) -> str:
    """The CAM target layer: ``layer`` if given (checked), else the model's registered one.

    Without ``layer``: the model's ``cam_layer`` (a :class:`CXRClassifier` takes it from its
    backbone's :class:`~cxr_tf.models.BackboneSpec`) when the model has a 4D layer of that
    name; otherwise the last 4D layer (any other functional model).
    """
    candidates = feature_map_layers(model)
    if layer is None:
        registered = getattr(model, "cam_layer", None)
        if registered and registered in candidates:
            return registered
        if not candidates:
            raise CXRModelError(f"{model.name}: no layer with a 4D feature map to explain")
        return candidates[-1]
    names = [l.name for l in model.layers]
    if layer not in names:
        raise CXRModelError(f"{model.name} has no layer named {layer!r}; feature-map layers near the top: "
                            f"{candidates[-5:]}")
    if layer not in candidates:
        raise CXRModelError(f"layer {layer!r} of {model.name} is not a 4D feature map (N, H, W, C); "
                            f"choose a convolutional layer, e.g. {candidates[-1]!r}")
    return layer


def _linear_twin(model):
    """A copy of ``model`` with the same weights and a linear output layer (for gradients)."""
    from cxr_tf.models import CXRClassifier

    if isinstance(model, CXRClassifier):
        twin = CXRClassifier.from_config(model.get_config())
        twin.set_weights(model.get_weights())
        import keras

        twin.get_layer("predictions").activation = keras.activations.linear
        return twin, False
    return model, True


class Explainer:
    """CAMs for one model; build once, call on batches.

    Args:
        model: a flat Keras model taking images ``(N, H, W, C)`` (a CXRClassifier or any
            functional model with a softmax/sigmoid output layer).
        method: ``gradcam``, ``gradcam++`` or ``scorecam``.
        layer: target layer name (default: the registered CAM layer, see :func:`target_layer`).
        max_n: Score-CAM only: use the ``max_n`` highest-variance channels (Faster
            Score-CAM); ``None`` uses all channels (one forward pass each: slow).
        batch_size: Score-CAM's masked-input batch size.
    """

    def __init__(self, model, method: str = "gradcam", layer: str | None = None, max_n: int | None = 32,
                 batch_size: int = 32):
        if method not in METHODS:
            raise CXRConfigError(f"method must be one of {METHODS}; received method={method!r}")
        if max_n is not None and max_n < 1:
            raise CXRConfigError(f"max_n must be >= 1 or None; received max_n={max_n}")
        _require_tf_keras_vis()
        self.model, self.method, self.max_n, self.batch_size = model, method, max_n, batch_size
        self.layer = target_layer(model, layer)
        from tf_keras_vis.gradcam import Gradcam
        from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
        from tf_keras_vis.scorecam import Scorecam

        if method == "scorecam":
            # Score-CAM weighs masks by the softmax score of the masked input (Wang et al.)
            self._cam = Scorecam(model, clone=False)
        else:
            twin, clone = _linear_twin(model)
            modifier = None
            if clone:
                from tf_keras_vis.utils.model_modifiers import ReplaceToLinear

                modifier = ReplaceToLinear()
            cls = Gradcam if method == "gradcam" else GradcamPlusPlus
            self._cam = cls(twin, model_modifier=modifier, clone=clone)

    def __call__(self, images, class_index=None) -> np.ndarray:
        """CAMs ``(N, H, W)`` in ``[0, 1]`` at the input resolution.

        Args:
            images: ``(N, H, W, C)`` float, as the model takes them.
            class_index: int or ``(N,)`` ints; default: each image's predicted class.
        """
        from tf_keras_vis.utils.scores import CategoricalScore

        x = np.asarray(images, np.float32)
        if x.ndim != 4:
            raise CXRModelError(f"images must be (N, H, W, C); got shape {x.shape}")
        if class_index is None:
            class_index = np.asarray(self.model.predict(x, verbose=0)).argmax(1)
        idx = np.broadcast_to(np.asarray(class_index, int), (len(x),)).tolist()
        score = CategoricalScore(idx)
        kw = dict(penultimate_layer=self.layer, seek_penultimate_conv_layer=False)
        if self.method == "scorecam":
            cam = self._cam(score, x, max_N=self.max_n, batch_size=self.batch_size, **kw)
        else:
            cam = self._cam(score, x, **kw)
        cam = np.nan_to_num(np.asarray(cam, np.float32).reshape(len(x), *x.shape[1:3]))
        return np.clip(cam, 0.0, 1.0)


def explain(model, images, method: str = "gradcam", layer: str | None = None, class_index=None,
            max_n: int | None = 32) -> np.ndarray:
    """One-call form of :class:`Explainer`: CAMs ``(N, H, W)`` in ``[0, 1]``."""
    return Explainer(model, method, layer, max_n)(images, class_index)


def border_mass(cams, band: float = 0.1) -> np.ndarray:
    """Share of each CAM's mass in the outer border band (the shortcut check).

    Text markers, rulers and collimation edges sit at the image border; a model that
    looks there is reading the hospital, not the lungs. A uniform map puts
    ``1 - (1 - 2 * band) ** 2`` of its mass in the band (0.36 for ``band=0.1``).

    Args:
        cams: ``(N, H, W)`` non-negative maps.
        band: band width as a fraction of each side.

    Returns:
        ``(N,)`` shares in ``[0, 1]`` (NaN for an all-zero map).
    """
    c = np.asarray(cams, np.float64)
    if c.ndim == 2:
        c = c[None]
    if not 0 < band < 0.5:
        raise CXRConfigError(f"band must be in (0, 0.5); received band={band}")
    h, w = c.shape[1:]
    bh, bw = max(1, int(round(band * h))), max(1, int(round(band * w)))
    inner = c[:, bh:h - bh, bw:w - bw].sum((1, 2))
    total = c.sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 1.0 - inner / total, np.nan)


def uniform_border_share(band: float = 0.1) -> float:
    """The border share of a uniform map: the no-preference reference for :func:`border_mass`."""
    return 1.0 - (1.0 - 2.0 * band) ** 2
