"""ResNet18 as a flat functional backbone (He et al. 2016, Deep Residual Learning, Table 1).

keras.applications has no ResNet18. This follows the paper's 18-layer column and
torchvision's reference layout (the weights Deep-COVID fine-tuned, seed 003):
7x7/2 conv, 3x3/2 max-pool, four stages of two basic blocks (3x3-3x3) with
64, 128, 256, 512 filters, stride 2 at the first block of stages 3-5, 1x1/2
projection shortcuts, convolutions without bias followed by BatchNorm. With a
1000-class head it has 11,689,512 trainable parameters, the paper's "11.7M".

Layer names follow keras.applications.ResNet50 (``conv1_conv``, ``conv2_block1_1_conv``,
``conv5_block2_out``) so freezing indices and CAM layers read the same way. Explicit
``ZeroPadding2D`` + ``valid`` convolutions reproduce PyTorch's symmetric padding
(TF's ``same`` pads stride-2 layers asymmetrically), so converted torchvision weights
give the same activations.
"""
from __future__ import annotations

import keras

from cxr_tf.models.registry import BackboneSpec, register_backbone

#: (stage name, filters, first-block stride) for conv2_x .. conv5_x, two blocks each.
STAGES = (("conv2", 64, 1), ("conv3", 128, 2), ("conv4", 256, 2), ("conv5", 512, 2))
BN_EPSILON = 1e-5  # PyTorch's default (Keras' is 1e-3)


def _bn(name):
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=name)


def _apply(layers: list, layer, x):
    layers.append(layer)
    return layer(x)


def _basic_block(x, layers, filters, stride, name):
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _apply(layers, keras.layers.Conv2D(filters, 1, strides=stride, use_bias=False,
                                                      name=f"{name}_0_conv"), x)
        shortcut = _apply(layers, _bn(f"{name}_0_bn"), shortcut)
    y = _apply(layers, keras.layers.ZeroPadding2D(1, name=f"{name}_1_pad"), x)
    y = _apply(layers, keras.layers.Conv2D(filters, 3, strides=stride, use_bias=False, name=f"{name}_1_conv"), y)
    y = _apply(layers, _bn(f"{name}_1_bn"), y)
    y = _apply(layers, keras.layers.Activation("relu", name=f"{name}_1_relu"), y)
    y = _apply(layers, keras.layers.ZeroPadding2D(1, name=f"{name}_2_pad"), y)
    y = _apply(layers, keras.layers.Conv2D(filters, 3, use_bias=False, name=f"{name}_2_conv"), y)
    y = _apply(layers, _bn(f"{name}_2_bn"), y)
    y = _apply(layers, keras.layers.Add(name=f"{name}_add"), [shortcut, y])
    return _apply(layers, keras.layers.Activation("relu", name=f"{name}_out"), y)


def resnet18_trunk(x):
    """Apply ResNet18 (no top) to ``x``; returns ``(features, layers)`` in graph order."""
    layers: list = []
    x = _apply(layers, keras.layers.ZeroPadding2D(3, name="conv1_pad"), x)
    x = _apply(layers, keras.layers.Conv2D(64, 7, strides=2, use_bias=False, name="conv1_conv"), x)
    x = _apply(layers, _bn("conv1_bn"), x)
    x = _apply(layers, keras.layers.Activation("relu", name="conv1_relu"), x)
    x = _apply(layers, keras.layers.ZeroPadding2D(1, name="pool1_pad"), x)
    x = _apply(layers, keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool"), x)
    for stage, filters, stride in STAGES:
        for b in (1, 2):
            x = _basic_block(x, layers, filters, stride if b == 1 else 1, f"{stage}_block{b}")
    return x, layers


def build_resnet18(x, weights=None):
    """Registry builder: ``weights`` None, ``"imagenet"`` (clear error: Keras hosts none) or a local file."""
    features, layers = resnet18_trunk(x)
    if weights not in (None, "none", ""):
        from cxr_tf.models.weights import load_local_weights

        def standalone():
            inp = keras.Input(tuple(x.shape[1:]))
            return keras.Model(inp, resnet18_trunk(inp)[0])

        load_local_weights("resnet18", str(weights), layers, standalone)
    return features, layers


register_backbone(BackboneSpec(
    name="resnet18", build=build_resnet18, input_mode="torch", channels=3, cam_layer="conv5_block2_out",
    reference="He et al. 2016, Deep Residual Learning for Image Recognition (18-layer, Table 1)",
))
