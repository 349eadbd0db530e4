"""UNet (Ronneberger et al. 2015) with CBAM attention (Woo et al. 2018): the SPEC S0 restorer.

The encoder is ``depth`` conv blocks ``enc{i}`` (two 3x3 Conv-BN-ReLU, widths
``width * 2**(i-1)``) each followed by a 2x2 max-pool, then a ``bottleneck`` block
(``width * 2**depth``). The decoder mirrors it: ``up{i}`` (2x2 transposed conv),
concatenation with skip ``i``, a ``dec{i}`` conv block; with ``use_cbam`` every skip
passes through CBAM (``cbam_skip{i}``) before the concatenation and every decoder block
ends with CBAM (``cbam_dec{i}``), so "with" and "without" CBAM differ only there and the
encoder is the same plain CNN either way. Output: ``restored`` (1x1 conv, sigmoid).

The encoder is a registered backbone: ``unet_cbam_encoder`` (depth 4, width 32) and
``unet_cbam_encoder_d{depth}w{width}`` (any size), built by the same function as the
restorer's encoder, so the layer names match and SSL-pretrained weights load by name
(``weights="ssl:<path>"``: a folder written by ``cxr_tf.experiments.ssl_pretrain``, or its
``ssl_encoder.json`` / ``encoder.weights.h5``).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import keras

from cxr_tf.errors import CXRConfigError, CXRWeightsError
from cxr_tf.layers.cbam import cbam_block
from cxr_tf.models.registry import BackboneSpec, register_backbone, register_backbone_family

ENCODER_WEIGHTS = "encoder.weights.h5"
ENCODER_META = "ssl_encoder.json"
_FAMILY_RE = re.compile(r"^unet_cbam_encoder(?:_d(\d+)w(\d+))?$")


def _check(depth: int, width: int) -> None:
    if depth < 1:
        raise CXRConfigError(f"UNet depth must be >= 1; received depth={depth}")
    if width < 1:
        raise CXRConfigError(f"UNet width must be >= 1; received width={width}")


def _conv_block(x, filters: int, name: str, layers: list):
    for j in (1, 2):
        for layer in (
            keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{j}"),
            keras.layers.BatchNormalization(name=f"{name}_bn{j}"),
            keras.layers.Activation("relu", name=f"{name}_relu{j}"),
        ):
            x = layer(x)
            layers.append(layer)
    return x


def unet_encoder(x, depth: int = 4, width: int = 32):
    """Apply the encoder to ``x``.

    Returns:
        ``(features, skips, layers)``: the bottleneck output, the ``depth`` skip tensors
        (before each pool) and the encoder's layers in order.
    """
    _check(depth, width)
    layers, skips = [], []
    for i in range(1, depth + 1):
        x = _conv_block(x, width * 2 ** (i - 1), f"enc{i}", layers)
        skips.append(x)
        pool = keras.layers.MaxPooling2D(2, name=f"enc{i}_pool")
        x = pool(x)
        layers.append(pool)
    x = _conv_block(x, width * 2**depth, "bottleneck", layers)
    return x, skips, layers


def build_unet_encoder(x, weights=None, depth: int = 4, width: int = 32):
    """Backbone builder (registry contract): ``(features, layers)``; ``weights`` may be
    ``None`` or an SSL encoder (``ssl:<path>`` or a path)."""
    if x.shape[1] is not None and x.shape[1] % 2**depth:
        raise CXRConfigError(f"image size {x.shape[1]} is not divisible by 2**depth = {2 ** depth} (UNet depth {depth})")
    features, _, layers = unet_encoder(x, depth, width)
    if weights not in (None, "none", ""):
        load_ssl_encoder(layers, weights, depth, width, channels=int(x.shape[-1]))
    return features, layers


# ----------------------------------------------------------------------------- SSL weights
def resolve_ssl_path(spec: str) -> tuple[Path, dict]:
    """``ssl:<path>`` / a folder / the JSON / the weights file -> (weights file, metadata)."""
    s = str(spec)
    s = s[4:] if s.startswith("ssl:") else s
    p = Path(s)
    if p.is_dir():
        meta_path, weights_path = p / ENCODER_META, p / ENCODER_WEIGHTS
    elif p.suffix == ".json":
        meta_path = p
        weights_path = p.parent / ENCODER_WEIGHTS
    else:
        weights_path, meta_path = p, p.parent / ENCODER_META
    if not meta_path.is_file():
        raise CXRWeightsError(f"{meta_path}: SSL encoder metadata not found (expected the folder written by "
                              "cxr_tf.experiments.ssl_pretrain: ssl_encoder.json + encoder.weights.h5)")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as e:
        raise CXRWeightsError(f"{meta_path}: not valid JSON ({e})") from None
    if not weights_path.is_file():
        raise CXRWeightsError(f"{weights_path}: SSL encoder weights file not found")
    for key in ("depth", "width", "channels"):
        if key not in meta:
            raise CXRWeightsError(f"{meta_path}: metadata lacks {key!r}")
    return weights_path, meta


def ssl_backbone_name(spec: str) -> str:
    """The registry name of the encoder an SSL artifact holds (``unet_cbam_encoder_d3w16``)."""
    _, meta = resolve_ssl_path(spec)
    return f"unet_cbam_encoder_d{int(meta['depth'])}w{int(meta['width'])}"


def encoder_model(depth: int, width: int, channels: int = 1, image_size: int | None = None) -> keras.Model:
    """A stand-alone encoder (input -> bottleneck) with the restorer's layer names."""
    inp = keras.Input((image_size, image_size, channels), name="image")
    features, _, _ = unet_encoder(inp, depth, width)
    return keras.Model(inp, features, name=f"unet_encoder_d{depth}w{width}")


def load_ssl_encoder(layers, spec: str, depth: int, width: int, channels: int = 1) -> dict:
    """Copy SSL encoder weights into ``layers`` (matched by name); returns the metadata."""
    weights_path, meta = resolve_ssl_path(spec)
    if (int(meta["depth"]), int(meta["width"]), int(meta["channels"])) != (depth, width, channels):
        raise CXRWeightsError(
            f"{weights_path}: SSL encoder is depth {meta['depth']} width {meta['width']} channels {meta['channels']}, "
            f"the backbone is depth {depth} width {width} channels {channels} "
            f"(use backbone 'unet_cbam_encoder_d{meta['depth']}w{meta['width']}')")
    ref = encoder_model(depth, width, channels)
    try:
        ref.load_weights(str(weights_path))
    except Exception as e:  # h5py / Keras raise assorted errors on a wrong file
        raise CXRWeightsError(f"{weights_path}: cannot load as a UNet encoder: {type(e).__name__}: {e}") from None
    by_name = {l.name: l for l in ref.layers}
    n = 0
    for layer in layers:
        if layer.weights:
            if layer.name not in by_name:
                raise CXRWeightsError(f"{weights_path}: no weights for layer {layer.name!r}")
            layer.set_weights(by_name[layer.name].get_weights())
            n += 1
    return meta


# ----------------------------------------------------------------------------- restorer
@keras.saving.register_keras_serializable(package="cxr_tf")
class UNetCBAM(keras.Model):
    """The Models Genesis restorer: corrupted image -> restored image, both in ``[0, 1]``.

    Args:
        image_size: input side (divisible by ``2**depth``).
        channels: image channels (1 for gray CXRs).
        depth: number of down-sampling levels.
        width: filters of the first level (doubling per level).
        use_cbam: CBAM on every skip connection and decoder block.
        cbam_ratio: CBAM channel-MLP reduction.
    """

    def __init__(self, image_size: int = 64, channels: int = 1, depth: int = 4, width: int = 32,
                 use_cbam: bool = True, cbam_ratio: int = 8, **kwargs):
        _check(depth, width)
        if image_size % 2**depth:
            raise CXRConfigError(f"image_size {image_size} must be divisible by 2**depth = {2 ** depth}")
        # === Functional graph ===
        inputs = keras.Input((image_size, image_size, channels), name="image")
        x, skips, enc_layers = unet_encoder(inputs, depth, width)
        for i in range(depth, 0, -1):
            f = width * 2 ** (i - 1)
            x = keras.layers.Conv2DTranspose(f, 2, strides=2, name=f"up{i}")(x)
            skip = cbam_block(skips[i - 1], f"cbam_skip{i}", cbam_ratio) if use_cbam else skips[i - 1]
            x = keras.layers.Concatenate(name=f"concat{i}")([x, skip])
            x = _conv_block(x, f, f"dec{i}", [])
            if use_cbam:
                x = cbam_block(x, f"cbam_dec{i}", cbam_ratio)
        # float32 under a --precision mixed_* policy: the restoration losses (SSIM, MSE) read it
        outputs = keras.layers.Conv2D(channels, 1, activation="sigmoid", name="restored", dtype="float32")(x)
        super().__init__(inputs=inputs, outputs=outputs, **{"name": f"unet_cbam_d{depth}w{width}", **kwargs})
        # === Config ===
        self.image_size = image_size
        self.channels = channels
        self.depth = depth
        self.width = width
        self.use_cbam = use_cbam
        self.cbam_ratio = cbam_ratio
        self.encoder_layer_names = [l.name for l in enc_layers]

    @property
    def backbone_name(self) -> str:
        return f"unet_cbam_encoder_d{self.depth}w{self.width}"

    def encoder(self) -> keras.Model:
        """A view of the encoder (input -> bottleneck), sharing this model's layers."""
        return keras.Model(self.input, self.get_layer("bottleneck_relu2").output, name=self.backbone_name)

    def save_encoder(self, folder, metadata: dict | None = None) -> Path:
        """Write ``encoder.weights.h5`` and ``ssl_encoder.json`` (loadable by ``ssl:<folder>``)."""
        from cxr_tf.io.atomic import save_weights_atomic, write_json_atomic

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_weights_atomic(self.encoder(), folder / ENCODER_WEIGHTS)
        meta = {"depth": self.depth, "width": self.width, "channels": self.channels, "image_size": self.image_size,
                "backbone": self.backbone_name, "use_cbam": self.use_cbam, "encoder_layers": self.encoder_layer_names,
                **(metadata or {})}
        write_json_atomic(folder / ENCODER_META, meta)
        return folder

    def get_config(self):
        return {"image_size": self.image_size, "channels": self.channels, "depth": self.depth, "width": self.width,
                "use_cbam": self.use_cbam, "cbam_ratio": self.cbam_ratio, "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


# ----------------------------------------------------------------------------- registry
def _family(name: str) -> BackboneSpec | None:
    m = _FAMILY_RE.match(name)
    if not m:
        return None
    depth, width = (int(m.group(1)), int(m.group(2))) if m.group(1) else (4, 32)

    def build(x, weights=None):
        return build_unet_encoder(x, weights, depth, width)

    return BackboneSpec(name=name, build=build, input_mode="unit", channels=1, cam_layer="bottleneck_relu2",
                        reference="Ronneberger et al. 2015 (UNet); Zhou et al. 2021 (Models Genesis)")


register_backbone_family(_FAMILY_RE.pattern, _family)
register_backbone(_family("unet_cbam_encoder"))
