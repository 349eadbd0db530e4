"""The layer that adapts cxr_tf's image convention to a backbone's expected input."""
from __future__ import annotations

import keras
from keras import ops

# keras.applications conventions. "caffe": RGB->BGR on 0-255 minus ImageNet means
# (ResNet50); "torch": 0-1 minus mean / std (DenseNet); "tf": -1..1 (MobileNet).
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
MODES = ("caffe", "torch", "tf", "unit")


@keras.saving.register_keras_serializable(package="cxr_tf")
class BackboneInput(keras.layers.Layer):
    """Gray ``[0, 1]`` images ``(N, H, W, 1)`` -> what a backbone was trained on.

    Keeping this inside the model (rather than in the data pipeline) means the
    exported SavedModel, the explainers and offline evaluation all see the same
    input convention: gray images in [0, 1]. The input-range confusion that
    torchxrayvision users report most cannot happen.

    Args:
        mode: ``caffe``, ``torch``, ``tf`` (keras.applications conventions) or
            ``unit`` (leave values in [0, 1]).
        channels: channels the backbone expects (gray is repeated).
    """

    def __init__(self, mode: str = "caffe", channels: int = 3, **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; received mode={mode!r}")
        self.mode = mode
        self.channels = int(channels)

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        if self.channels != 1:
            x = ops.repeat(x, self.channels, axis=-1)
        if self.mode == "caffe":
            # gray has R = G = B, so the RGB->BGR swap is a no-op; subtract BGR means.
            return x * 255.0 - ops.convert_to_tensor(_CAFFE_MEAN_BGR[: self.channels], self.compute_dtype)
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_TORCH_MEAN[: self.channels], self.compute_dtype)
            std = ops.convert_to_tensor(_TORCH_STD[: self.channels], self.compute_dtype)
            return (x - mean) / std
        if self.mode == "tf":
            return x * 2.0 - 1.0
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.channels,)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "channels": self.channels}
