"""keras.applications backbones (ResNet50, DenseNet121, MobileNet, MobileNetV2).

Built on the classifier's own input tensor (``input_tensor=``) so the result is
one flat functional graph that tf-keras-vis can see into. Pretrained weights go
through Keras' own loader: ``weights="imagenet"`` (downloads to ``~/.keras/models``
once; fails offline with a clear :class:`~cxr_tf.errors.CXRWeightsError`) or a local
weights file in any format Keras' ``load_weights`` accepts.
"""
from __future__ import annotations

import os
import re

import keras

from cxr_tf.errors import CXRWeightsError
from cxr_tf.models.registry import BackboneSpec, register_backbone

_APPS = {
    # name: (constructor, input mode, CAM layer, reference)
    "resnet50": ("ResNet50", "caffe", "conv5_block3_out", "He et al. 2016, Deep Residual Learning"),
    "densenet121": ("DenseNet121", "torch", "relu", "Huang et al. 2017, Densely Connected CNNs"),
    "mobilenet": ("MobileNet", "tf", "conv_pw_13_relu", "Howard et al. 2017, MobileNets"),
    "mobilenet_v2": ("MobileNetV2", "tf", "out_relu", "Sandler et al. 2018, MobileNetV2"),
}


def _load_reference_weights(ctor, weights: str, input_shape) -> keras.Model:
    """Build a stand-alone application model with Keras' own weight loading."""
    if weights != "imagenet" and not os.path.isfile(weights):
        raise CXRWeightsError(f"{weights}: weights file not found (use --weights none | imagenet | PATH)")
    try:
        return ctor(include_top=False, weights=weights, input_shape=input_shape)
    except Exception as e:  # Keras raises a plain Exception on URL fetch failure
        if weights == "imagenet":
            raise CXRWeightsError(
                f"could not obtain ImageNet weights for {ctor.__name__} ({type(e).__name__}: {e}). "
                "This machine may be offline: download the '..._notop.h5' file elsewhere and pass "
                "--weights /path/to/it, put it in ~/.keras/models/, or use --weights none / SSL weights."
            ) from None
        raise CXRWeightsError(f"{weights}: cannot load as {ctor.__name__} weights: {e}") from None


def _ancestors(x) -> list:
    """Layers that produced ``x`` (the classifier's input adapter), to exclude them."""
    out, stack = [], [x]
    while stack:
        t = stack.pop()
        hist = getattr(t, "_keras_history", None)
        if hist is None:
            continue
        op = hist[0]
        out.append(op)
        for node in op._inbound_nodes:
            stack.extend(node.input_tensors)
    return out


_AUTO_NAME = re.compile(r"^zero_padding2d(_\d+)?$")


def _stable_names(layers, prefix: str) -> None:
    """Rename the layers keras.applications leaves auto-named (DenseNet's two
    ``zero_padding2d_N``): their suffix counts every such layer built before in the
    process, so names (and CAM / freezing lookups) would drift between builds."""
    k = 0
    for layer in layers:
        if _AUTO_NAME.match(layer.name):
            k += 1
            layer.name = f"{prefix}_zero_padding{k}"


def _make_builder(ctor_name: str):
    def build(x, weights=None):
        """Returns ``(features, layers)``: layers in keras.applications order, no input."""
        ctor = getattr(keras.applications, ctor_name)
        before = {id(t) for t in _ancestors(x)}
        base = ctor(include_top=False, weights=None, input_tensor=x)
        layers = [l for l in base.layers if id(l) not in before and not isinstance(l, keras.layers.InputLayer)]
        _stable_names(layers, ctor_name.lower())
        if weights not in (None, "none", ""):
            ref = _load_reference_weights(ctor, str(weights), tuple(x.shape[1:]))
            ref_layers = {l.name: l for l in ref.layers}
            for layer in base.layers:
                if layer.weights and layer.name in ref_layers:
                    layer.set_weights(ref_layers[layer.name].get_weights())
        return base.output, layers

    return build


for _name, (_ctor, _mode, _cam, _ref) in _APPS.items():
    register_backbone(
        BackboneSpec(name=_name, build=_make_builder(_ctor), input_mode=_mode, channels=3, cam_layer=_cam, reference=_ref)
    )
