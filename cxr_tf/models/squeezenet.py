"""SqueezeNet 1.1 as a flat functional backbone (Iandola et al. 2016, SqueezeNet).

keras.applications has no SqueezeNet. Version 1.1 (the variant in torchvision and in
Deep-COVID, seed 003) moves the max-pools earlier than v1.0 and starts with a 3x3/2
conv of 64 filters: conv1 -> pool -> fire2, fire3 -> pool -> fire4, fire5 -> pool ->
fire6..fire9. A fire module is a 1x1 "squeeze" conv followed by parallel 1x1 and 3x3
"expand" convs whose ReLU outputs are concatenated. All convs have biases, no BatchNorm.

The paper's classifier is dropout -> 1x1 conv (num_classes) -> ReLU -> global average
pooling. With cxr_tf's common head (GAP -> Dense) the parameter count is the same
(512 x 1000 + 1000): 1,235,496 with 1000 classes, the paper's "1.24M"; the head only
lacks the ReLU before pooling, which made the logits non-negative.

Max-pools use floor rounding; torchvision uses ``ceil_mode=True``. The two agree on
every pool for 224 px and 64 px inputs (111->55->27->13 and 31->15->7->3).
"""
from __future__ import annotations

import keras

from cxr_tf.models.registry import BackboneSpec, register_backbone

#: fire modules of v1.1: (index, squeeze, expand 1x1, expand 3x3); a max-pool precedes 4 and 6.
FIRES = ((2, 16, 64, 64), (3, 16, 64, 64), (4, 32, 128, 128), (5, 32, 128, 128),
         (6, 48, 192, 192), (7, 48, 192, 192), (8, 64, 256, 256), (9, 64, 256, 256))


def _apply(layers, layer, x):
    layers.append(layer)
    return layer(x)


def _fire(x, layers, i, squeeze, e1, e3):
    s = _apply(layers, keras.layers.Conv2D(squeeze, 1, name=f"fire{i}_squeeze1x1"), x)
    s = _apply(layers, keras.layers.Activation("relu", name=f"fire{i}_squeeze1x1_relu"), s)
    a = _apply(layers, keras.layers.Conv2D(e1, 1, name=f"fire{i}_expand1x1"), s)
    a = _apply(layers, keras.layers.Activation("relu", name=f"fire{i}_expand1x1_relu"), a)
    b = _apply(layers, keras.layers.Conv2D(e3, 3, padding="same", name=f"fire{i}_expand3x3"), s)
    b = _apply(layers, keras.layers.Activation("relu", name=f"fire{i}_expand3x3_relu"), b)
    return _apply(layers, keras.layers.Concatenate(name=f"fire{i}_concat"), [a, b])


def squeezenet_trunk(x):
    """Apply SqueezeNet 1.1 (no classifier) to ``x``; returns ``(features, layers)``."""
    layers: list = []
    x = _apply(layers, keras.layers.Conv2D(64, 3, strides=2, name="conv1"), x)
    x = _apply(layers, keras.layers.Activation("relu", name="conv1_relu"), x)
    for i, sq, e1, e3 in FIRES:
        if i in (2, 4, 6):
            x = _apply(layers, keras.layers.MaxPooling2D(3, strides=2, name=f"pool{i - 1}"), x)
        x = _fire(x, layers, i, sq, e1, e3)
    return x, layers


def build_squeezenet(x, weights=None):
    """Registry builder: ``weights`` None, ``"imagenet"`` (clear error: Keras hosts none) or a local file."""
    features, layers = squeezenet_trunk(x)
    if weights not in (None, "none", ""):
        from cxr_tf.models.weights import load_local_weights

        def standalone():
            inp = keras.Input(tuple(x.shape[1:]))
            return keras.Model(inp, squeezenet_trunk(inp)[0])

        load_local_weights("squeezenet", str(weights), layers, standalone)
    return features, layers


register_backbone(BackboneSpec(
    name="squeezenet", build=build_squeezenet, input_mode="torch", channels=3, cam_layer="fire9_concat",
    reference="Iandola et al. 2016, SqueezeNet (v1.1)",
))
