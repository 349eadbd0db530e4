"""Class activation maps behind one interface: Grad-CAM, Grad-CAM++ and Score-CAM.

All three come from tf-keras-vis (Kubota): Grad-CAM (Selvaraju et al. 2017),
Grad-CAM++ (Chattopadhay et al. 2018) and Score-CAM (Wang et al. 2020; with
``max_n`` it is "Faster Score-CAM": only the ``max_n`` channels of highest variance
are used as masks, instead of every channel of the target layer).

The target layer is chosen by the map it gives at the model's input size
(:func:`choose_target_layer`): the registered ``cam_layer`` (for a :class:`CXRClassifier`,
its backbone's ``BackboneSpec.cam_layer``; else the last 4D layer) when its map is at
least ``MIN_GRID`` x ``MIN_GRID``, otherwise the deepest stage output that reaches it.
A ResNet at 64 px has a 2x2 last map: every cell touches the border, Grad-CAM on it is
often all zero and the same corner gradient for every image, so an explanation there
shows nothing. ``layer=`` overrides the choice (a wrong name is a
:class:`~cxr_tf.errors.CXRModelError` listing valid candidates).

Score-CAM (Wang et al.) weighs each mask by the softmax of the masked input's logits;
tf-keras-vis applies that softmax itself, so it is given the linear-output twin of the
model (as Grad-CAM is): on the softmax model the scores would be squeezed twice
(2 classes: into [0.27, 0.73]), flattening the weights and inflating irrelevant
regions. For a multi-label (sigmoid) model the twin outputs ``[z_k, 0]`` for the
explained label ``k``, whose softmax is exactly ``sigmoid(z_k)``.

tf-keras-vis pitfalls (FACTS.md): a model nested as a layer breaks it (cxr_tf models
are flat by construction), and its ``ReplaceToLinear`` modifier needs a clone of the
model; CXRClassifier is cloned through its own config (same weights) so the caller's
model keeps its softmax.
"""
from __future__ import annotations

import numpy as np

from cxr_tf.errors import CXRConfigError, CXRModelError

METHODS = ("gradcam", "gradcam++", "scorecam")
#: Smallest CAM grid side chosen automatically: at 7x7 (ResNet50 at 224 px, the usual
#: setting) interior cells exist and the border-band check can resolve the border.
MIN_GRID = 7


def _require_tf_keras_vis():
    from cxr_tf.errors import require_optional

    require_optional("tf_keras_vis", "explain", "explanations", "tf-keras-vis")


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


def layer_grid(model, name: str) -> tuple[int, int] | None:
    """The spatial size ``(H, W)`` of a layer's map at the model's input size (None if unknown)."""
    shape = model.get_layer(name).output.shape
    if len(shape) != 4 or not shape[1] or not shape[2]:
        return None
    return int(shape[1]), int(shape[2])


def _stage_outputs(model) -> list[str]:
    """The last layer at each spatial size, in graph order (padding excluded): stage outputs.

    Padding layers are never a stage output: their map is larger than the features and
    its border is zeros. Within a stage, the deepest layer has seen the most context.
    """
    import keras

    out, prev = [], None
    for name in feature_map_layers(model):
        if isinstance(model.get_layer(name), keras.layers.ZeroPadding2D):
            continue
        g = layer_grid(model, name)
        if g is None:
            continue
        if prev is not None and g != prev[1]:
            out.append(prev[0])
        prev = (name, g)
    if prev is not None:
        out.append(prev[0])
    return out


def choose_target_layer(model, min_grid: int = MIN_GRID) -> tuple[str, str]:
    """The CAM layer for ``model`` at its input size, and a sentence saying why.

    The registered (or last 4D) layer when its map is at least ``min_grid`` on a side;
    else the deepest stage output that is; else (a tiny input) the largest map, with
    the sentence saying the map is small.
    """
    default = target_layer(model)
    g = layer_grid(model, default)
    size = model.input.shape[1]
    if g is None or min(g) >= min_grid:
        return default, f"CAM layer {default}" + (f" ({g[0]}x{g[1]} at {size} px)" if g else "")
    stages = [n for n in _stage_outputs(model) if min(layer_grid(model, n) or (0,)) >= min_grid]
    if stages:
        pick = stages[-1]
        pg = layer_grid(model, pick)
        return pick, (f"CAM layer {pick} ({pg[0]}x{pg[1]} at {size} px; the registered {default} would give "
                      f"{g[0]}x{g[1]}, too coarse to locate anything; --layer overrides)")
    biggest = max(_stage_outputs(model) or [default], key=lambda n: min(layer_grid(model, n) or (0, 0)))
    bg = layer_grid(model, biggest)
    return biggest, (f"CAM layer {biggest}: its {bg[0]}x{bg[1]} map at {size} px is the largest this model has, "
                     f"under {min_grid}x{min_grid}: the maps can only be coarse; use a larger image size")


def map_warnings(cams, names=None) -> list[str]:
    """Warnings for maps that carry no information: all zero, constant, or the same for every image.

    Args:
        cams: ``(N, H, W)`` maps in [0, 1].
        names: one label per map for the messages (default ``image i``).
    """
    c = np.asarray(cams, np.float32)
    names = list(names) if names is not None else [f"image {i}" for i in range(len(c))]
    out = []
    for name, m in zip(names, c):
        if not np.any(m > 1e-6):
            out.append(f"{name}: the map is all zero (no positive evidence on this layer for this class); "
                       "try another --layer or --method")
        elif float(m.max() - m.min()) < 0.05:
            out.append(f"{name}: the map is nearly constant (range {float(m.max() - m.min()):.3f}); it locates nothing")
    informative = [m for m in c if np.any(m > 1e-6)]
    if len(informative) > 1:
        ref = informative[0]
        if all(float(np.abs(m - ref).max()) < 0.02 for m in informative[1:]):
            out.append(f"the maps of all {len(c)} images are identical: they reflect the layer/upsampling, "
                       "not the images; try a layer with a larger map (--layer)")
    return out


def _linear_twin(model):
    """A copy of ``model`` with the same weights and a linear output layer (for gradients and Score-CAM)."""
    import keras

    from cxr_tf.models import CXRClassifier

    if isinstance(model, CXRClassifier):
        twin = CXRClassifier.from_config(model.get_config())
        out_layer = twin.get_layer("predictions")
    else:  # any flat functional model: its last layer carries the softmax/sigmoid
        twin = keras.models.clone_model(model)
        out_layer = twin.layers[-1]
    twin.set_weights(model.get_weights())
    out_layer.activation = keras.activations.linear
    return twin


def _label_twin(twin, k: int):
    """``twin`` (logits) with output ``[z_k, 0]``: tf-keras-vis' softmax of it is ``sigmoid(z_k)``."""
    import keras

    z = twin.output
    out = keras.layers.Lambda(lambda t: keras.ops.stack([t[:, k], keras.ops.zeros_like(t[:, k])], axis=-1),
                              name=f"label_{k}_vs_zero")(z)
    return _quiet(keras.Model(twin.input, out, name=f"{twin.name}_label{k}"))


def _quiet(model):
    """``model`` whose ``predict`` prints no progress bar.

    tf-keras-vis' Score-CAM calls ``model.predict`` with Keras' default verbosity, whose
    progress-bar escape codes then land in the user's terminal and logs.
    """
    import functools

    object.__setattr__(model, "predict", functools.partial(type(model).predict, model, verbose=0))
    return model


class Explainer:
    """CAMs for one model; build once, call on batches.

    Args:
        model: a flat Keras model taking images ``(N, H, W, C)`` (a CXRClassifier or any
            functional model whose last layer carries the softmax/sigmoid; it is left
            unchanged: CAMs are computed on a linear-output twin with the same weights).
        method: ``gradcam``, ``gradcam++`` or ``scorecam``.
        layer: target layer name (default: :func:`choose_target_layer`, a map of at least
            ``MIN_GRID`` x ``MIN_GRID``; ``layer_reason`` says what was chosen and why).
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
        if layer is None:
            self.layer, self.layer_reason = choose_target_layer(model)
        else:
            self.layer = target_layer(model, layer)
            g = layer_grid(model, self.layer)
            self.layer_reason = f"CAM layer {self.layer} (given" + (f"; {g[0]}x{g[1]})" if g else ")")
        self.grid = layer_grid(model, self.layer)
        self.multilabel = bool(getattr(model, "multilabel", False)) or _ends_in_sigmoid(model)
        from tf_keras_vis.gradcam import Gradcam
        from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
        from tf_keras_vis.scorecam import Scorecam

        twin = _quiet(_linear_twin(model))
        if method == "scorecam":
            # tf-keras-vis softmaxes the scores itself: hence logits (see the module docstring)
            self._twin = twin
            self._label_cams = {}
            self._cam = None if self.multilabel else Scorecam(twin, clone=False)
        else:
            cls = Gradcam if method == "gradcam" else GradcamPlusPlus
            self._cam = cls(twin, clone=False)

    def __call__(self, images, class_index=None) -> np.ndarray:
        """CAMs ``(N, H, W)`` in ``[0, 1]`` at the input resolution.

        Args:
            images: ``(N, H, W, C)`` float, as the model takes them.
            class_index: int or ``(N,)`` ints; default: each image's predicted class.
        """
        import warnings

        x = np.asarray(images, np.float32)
        if x.ndim != 4:
            raise CXRModelError(f"images must be (N, H, W, C); got shape {x.shape}")
        if class_index is None:
            class_index = np.asarray(self.model.predict(x, verbose=0)).argmax(1)
        idx = np.broadcast_to(np.asarray(class_index, int), (len(x),)).tolist()
        with warnings.catch_warnings():
            # tf-keras-vis feeds single-input models a list: Keras' structure warning is noise here
            warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match")
            cam = self._maps(x, idx)
        cam = np.nan_to_num(np.asarray(cam, np.float32).reshape(len(x), *x.shape[1:3]))
        return np.clip(cam, 0.0, 1.0)

    def _maps(self, x, idx):
        from tf_keras_vis.utils.scores import CategoricalScore

        kw = dict(penultimate_layer=self.layer, seek_penultimate_conv_layer=False)
        if self.method == "scorecam" and self.multilabel:
            cam = np.zeros(x.shape[:3], np.float32)
            for k in sorted(set(idx)):  # one [z_k, 0] twin per explained label
                rows = [i for i, j in enumerate(idx) if j == k]
                cam[rows] = self._scorecam_for_label(k)(CategoricalScore([0] * len(rows)), x[rows], max_N=self.max_n,
                                                        batch_size=self.batch_size, **kw)
        elif self.method == "scorecam":
            cam = self._cam(CategoricalScore(idx), x, max_N=self.max_n, batch_size=self.batch_size, **kw)
        else:
            cam = self._cam(CategoricalScore(idx), x, **kw)
        return cam

    def _scorecam_for_label(self, k: int):
        from tf_keras_vis.scorecam import Scorecam

        if k not in self._label_cams:
            self._label_cams[k] = Scorecam(_label_twin(self._twin, k), clone=False)
        return self._label_cams[k]


def _ends_in_sigmoid(model) -> bool:
    import keras

    return getattr(model.layers[-1], "activation", None) is keras.activations.sigmoid


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
