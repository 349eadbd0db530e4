"""Layers for Vision Transformers: patch/token embedding with learned positions.

The encoder blocks themselves are plain keras.layers (LayerNormalization,
MultiHeadAttention, Dense) wired in the model builders, so every sub-layer keeps a
stable name that freezing and explainers can address.
"""
from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="cxr_tf")
class PatchEmbedding(keras.layers.Layer):
    """Image or feature map ``(N, H, W, C)`` -> tokens ``(N, (H/p)*(W/p), dim)`` + position embedding.

    A stride-``p`` convolution is the ViT patch projection (Dosovitskiy et al. 2021,
    Sec. 3.1: a linear map of each flattened ``p x p`` patch); with ``patch_size=1`` on a
    CNN feature map it is the hybrid's 1x1 projection of each cell into a token.

    Args:
        patch_size: patch side in input pixels / cells.
        dim: token width.
        grid: ``(H/p, W/p)``, the token grid (fixes the number of positions).
    """

    def __init__(self, patch_size: int, dim: int, grid: tuple[int, int], **kwargs):
        super().__init__(**kwargs)
        if patch_size < 1 or dim < 1:
            raise ValueError(f"patch_size and dim must be >= 1; received patch_size={patch_size}, dim={dim}")
        self.patch_size = int(patch_size)
        self.dim = int(dim)
        self.grid = (int(grid[0]), int(grid[1]))
        self.proj = keras.layers.Conv2D(self.dim, self.patch_size, strides=self.patch_size, padding="valid",
                                        name="proj")

    def build(self, input_shape):
        self.proj.build(input_shape)
        self.position = self.add_weight(
            name="position", shape=(1, self.grid[0] * self.grid[1], self.dim),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
        )

    def call(self, x):
        x = self.proj(x)
        x = ops.reshape(x, (-1, self.grid[0] * self.grid[1], self.dim))
        return x + ops.cast(self.position, x.dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.grid[0] * self.grid[1], self.dim)

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size, "dim": self.dim, "grid": list(self.grid)}


@keras.saving.register_keras_serializable(package="cxr_tf")
class TokensToGrid(keras.layers.Layer):
    """Tokens ``(N, h*w, D)`` -> ``(N, h, w, D)``, so pooling heads and CAM explainers
    treat a Transformer's output like a CNN feature map."""

    def __init__(self, grid: tuple[int, int], **kwargs):
        super().__init__(**kwargs)
        self.grid = (int(grid[0]), int(grid[1]))

    def call(self, x):
        return ops.reshape(x, (-1, self.grid[0], self.grid[1], x.shape[-1]))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.grid[0], self.grid[1], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "grid": list(self.grid)}
