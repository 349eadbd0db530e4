"""A tiny CNN backbone: for unit tests and quick smoke runs, not for results."""
from __future__ import annotations

import keras

from cxr_tf.errors import CXRWeightsError
from cxr_tf.models.registry import BackboneSpec, register_backbone


def build_tiny_cnn(x, weights=None, filters=(16, 32, 64)):
    """Conv-BN-ReLU-MaxPool blocks with stable names ``block{i}_{conv,bn,relu,pool}``.

    Returns:
        ``(features, layers)``: the feature tensor and the backbone's layers in order.
    """
    if weights == "imagenet":
        raise CXRWeightsError(f"tiny_cnn has no pretrained weights (got weights={weights!r})")
    x_in = x
    layers = []
    for i, f in enumerate(filters, start=1):
        block = [
            keras.layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"block{i}_conv"),
            keras.layers.BatchNormalization(name=f"block{i}_bn"),
            keras.layers.Activation("relu", name=f"block{i}_relu"),
        ]
        if i < len(filters):
            block.append(keras.layers.MaxPooling2D(2, name=f"block{i}_pool"))
        for layer in block:
            x = layer(x)
        layers += block
    if weights not in (None, "none", ""):  # a local file (e.g. a trunk saved by save_backbone_weights)
        from cxr_tf.models.weights import load_local_weights

        def standalone():
            inp = keras.Input(tuple(x_in.shape[1:]))
            return keras.Model(inp, build_tiny_cnn(inp, None, filters)[0])

        load_local_weights("tiny_cnn", str(weights), layers, standalone)
    return x, layers


register_backbone(BackboneSpec(name="tiny_cnn", build=build_tiny_cnn, input_mode="unit", channels=1, cam_layer="block3_relu"))
