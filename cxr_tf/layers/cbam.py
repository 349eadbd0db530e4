"""CBAM: Convolutional Block Attention Module (Woo et al., ECCV 2018).

Channel attention (average- and max-pooled descriptors through one shared MLP,
summed, sigmoid) followed by spatial attention (a 7x7 convolution over the
channel-average and channel-max maps, sigmoid). Keras has no CBAM layer; these are
two plain layers (their weights live in Dense / Conv2D sublayers, not in a nested
Model), so a graph using them stays flat and tf-keras-vis can see every layer.
"""
from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="cxr_tf")
class ChannelAttention(keras.layers.Layer):
    """``x * sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))`` with a shared 2-layer MLP.

    Args:
        ratio: channel reduction of the MLP's hidden layer (CBAM paper: 16).
        min_hidden: floor on the hidden width (small UNets have 16 channels).
    """

    def __init__(self, ratio: int = 16, min_hidden: int = 4, **kwargs):
        super().__init__(**kwargs)
        if ratio < 1:
            raise ValueError(f"ratio must be >= 1; received ratio={ratio}")
        self.ratio = int(ratio)
        self.min_hidden = int(min_hidden)

    def build(self, input_shape):
        c = int(input_shape[-1])
        hidden = max(self.min_hidden, c // self.ratio)
        self.mlp_hidden = keras.layers.Dense(hidden, activation="relu", name="mlp_hidden")
        self.mlp_out = keras.layers.Dense(c, name="mlp_out")
        self.mlp_hidden.build((None, c))
        self.mlp_out.build((None, hidden))

    def attention(self, x):
        """The ``(N, 1, 1, C)`` channel weights."""
        avg = ops.mean(x, axis=(1, 2))
        mx = ops.max(x, axis=(1, 2))
        a = self.mlp_out(self.mlp_hidden(avg)) + self.mlp_out(self.mlp_hidden(mx))
        return ops.sigmoid(a)[:, None, None, :]

    def call(self, x):
        return x * self.attention(x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "ratio": self.ratio, "min_hidden": self.min_hidden}


@keras.saving.register_keras_serializable(package="cxr_tf")
class SpatialAttention(keras.layers.Layer):
    """``x * sigmoid(conv_k([mean_c(x), max_c(x)]))``.

    Args:
        kernel_size: side of the convolution (CBAM paper: 7).
    """

    def __init__(self, kernel_size: int = 7, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = int(kernel_size)

    def build(self, input_shape):
        self.conv = keras.layers.Conv2D(1, self.kernel_size, padding="same", name="conv")
        self.conv.build(tuple(input_shape[:-1]) + (2,))

    def attention(self, x):
        """The ``(N, H, W, 1)`` spatial weights."""
        desc = ops.concatenate([ops.mean(x, axis=-1, keepdims=True), ops.max(x, axis=-1, keepdims=True)], axis=-1)
        return ops.sigmoid(self.conv(desc))

    def call(self, x):
        return x * self.attention(x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size}


def cbam_block(x, name: str, ratio: int = 16, kernel_size: int = 7):
    """Apply CBAM inside a functional graph: layers ``{name}_channel``, ``{name}_spatial``."""
    x = ChannelAttention(ratio, name=f"{name}_channel")(x)
    return SpatialAttention(kernel_size, name=f"{name}_spatial")(x)
