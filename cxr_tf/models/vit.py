"""Vision Transformer and the hybrid CNN-ViT backbones (SPEC S1, seed 001).

* ``vit_*``: ViT (Dosovitskiy et al. 2021): patch embedding -> pre-norm Transformer
  encoder (``keras.layers.MultiHeadAttention``) -> final LayerNorm. No class token: the
  tokens are reshaped back to their grid (``encoder_grid``), so the classifier's GAP head
  averages tokens and CAM explainers can target the grid like a CNN feature map.
* ``hybrid_*``: the hybrid of the same paper (Sec. 3.1, "Hybrid Architecture"): a ResNet
  stem and stages give a feature map whose cells, projected by a 1x1 patch embedding,
  are the tokens of the Transformer encoder.
  ``hybrid_resnet50`` uses keras.applications ResNet50 through stage 4
  (``conv4_block6_out``, stride 16, as ViT-R50; ImageNet weights load for those layers,
  freeze indices follow keras.applications numbering); ``hybrid_tiny`` uses a small
  ResNet (basic blocks) that trains on a CPU.

Sizes are presets registered by name; :func:`register_vit` / :func:`register_hybrid`
add more (a saved model needs its preset registered again before loading).
"""
from __future__ import annotations

import keras

from cxr_tf.errors import CXRConfigError, CXRWeightsError
from cxr_tf.layers import PatchEmbedding, TokensToGrid
from cxr_tf.models.registry import BackboneSpec, register_backbone

VIT_REFERENCE = "Dosovitskiy et al. 2021, An Image is Worth 16x16 Words (ViT and hybrid)"


def transformer_encoder(x, depth: int, heads: int, mlp_dim: int, dropout: float = 0.0, prefix: str = "encoder"):
    """Pre-norm Transformer encoder blocks on tokens ``(N, T, D)``; returns ``(tokens, layers)``.

    Block ``i``: ``x + MHA(LN(x))`` then ``x + MLP(LN(x))`` (GELU MLP), names
    ``{prefix}_block{i}_{ln1,mha,drop1,add1,ln2,mlp1,mlp2,drop2,add2}``.
    """
    dim = x.shape[-1]
    if dim % heads:
        raise CXRConfigError(f"token width {dim} is not divisible by heads={heads}")
    layers = []

    def use(layer, *args):
        layers.append(layer)
        return layer(*args)

    for i in range(1, depth + 1):
        p = f"{prefix}_block{i}"
        h = use(keras.layers.LayerNormalization(epsilon=1e-6, name=f"{p}_ln1"), x)
        h = use(keras.layers.MultiHeadAttention(heads, dim // heads, dropout=dropout, name=f"{p}_mha"), h, h)
        h = use(keras.layers.Dropout(dropout, name=f"{p}_drop1"), h)
        x = use(keras.layers.Add(name=f"{p}_add1"), [x, h])
        h = use(keras.layers.LayerNormalization(epsilon=1e-6, name=f"{p}_ln2"), x)
        h = use(keras.layers.Dense(mlp_dim, activation="gelu", name=f"{p}_mlp1"), h)
        h = use(keras.layers.Dense(dim, name=f"{p}_mlp2"), h)
        h = use(keras.layers.Dropout(dropout, name=f"{p}_drop2"), h)
        x = use(keras.layers.Add(name=f"{p}_add2"), [x, h])
    x = use(keras.layers.LayerNormalization(epsilon=1e-6, name=f"{prefix}_ln"), x)
    return x, layers


def _tokens_to_features(x, grid, layers):
    layer = TokensToGrid(grid, name="encoder_grid")
    layers.append(layer)
    return layer(x), layers


def make_vit_builder(patch_size: int, dim: int, depth: int, heads: int, mlp_dim: int, dropout: float = 0.0):
    def build(x, weights=None):
        if weights not in (None, "none", ""):
            # No ViT weights ship with Keras; a local file goes through the classifier's load_weights.
            raise CXRWeightsError(f"ViT backbones have no built-in pretrained weights (got weights={weights!r}); "
                                  "train from scratch or load a saved model's weights")
        h, w = int(x.shape[1]), int(x.shape[2])
        if h % patch_size or w % patch_size:
            raise CXRConfigError(f"image size {h}x{w} is not divisible by patch_size={patch_size}")
        grid = (h // patch_size, w // patch_size)
        embed = PatchEmbedding(patch_size, dim, grid, name="patch_embedding")
        t = embed(x)
        t, layers = transformer_encoder(t, depth, heads, mlp_dim, dropout)
        return _tokens_to_features(t, grid, [embed] + layers)

    return build


def _tiny_resnet(x, widths, blocks):
    """Stem (3x3 stride-2 conv) + stages of basic residual blocks (He et al. 2016);
    stage ``s > 1`` halves the resolution. Returns ``(feature map, layers)``."""
    layers = []

    def use(layer, *args):
        layers.append(layer)
        return layer(*args)

    x = use(keras.layers.Conv2D(widths[0], 3, strides=2, padding="same", use_bias=False, name="stem_conv"), x)
    x = use(keras.layers.BatchNormalization(name="stem_bn"), x)
    x = use(keras.layers.Activation("relu", name="stem_relu"), x)
    for s, (width, n) in enumerate(zip(widths, blocks), start=1):
        for b in range(1, n + 1):
            p = f"stage{s}_block{b}"
            stride = 2 if (s > 1 and b == 1) else 1
            h = use(keras.layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False, name=f"{p}_conv1"), x)
            h = use(keras.layers.BatchNormalization(name=f"{p}_bn1"), h)
            h = use(keras.layers.Activation("relu", name=f"{p}_relu1"), h)
            h = use(keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"{p}_conv2"), h)
            h = use(keras.layers.BatchNormalization(name=f"{p}_bn2"), h)
            if stride != 1 or x.shape[-1] != width:
                x = use(keras.layers.Conv2D(width, 1, strides=stride, use_bias=False, name=f"{p}_short_conv"), x)
                x = use(keras.layers.BatchNormalization(name=f"{p}_short_bn"), x)
            x = use(keras.layers.Add(name=f"{p}_add"), [x, h])
            x = use(keras.layers.Activation("relu", name=f"{p}_out"), x)
    return x, layers


def _resnet50_stages(x, weights, stop_at: str):
    """keras.applications ResNet50 on ``x`` up to ``stop_at`` (flat, same layer names)."""
    from cxr_tf.models.applications import _ancestors, _load_reference_weights

    before = {id(t) for t in _ancestors(x)}
    base = keras.applications.ResNet50(include_top=False, weights=None, input_tensor=x)
    names = [l.name for l in base.layers]
    if stop_at not in names:
        raise CXRConfigError(f"ResNet50 has no layer {stop_at!r}")
    keep = base.layers[: names.index(stop_at) + 1]
    layers = [l for l in keep if id(l) not in before and not isinstance(l, keras.layers.InputLayer)]
    if weights not in (None, "none", ""):
        ref = _load_reference_weights(keras.applications.ResNet50, str(weights), tuple(x.shape[1:]))
        ref_layers = {l.name: l for l in ref.layers}
        for layer in layers:
            if layer.weights and layer.name in ref_layers:
                layer.set_weights(ref_layers[layer.name].get_weights())
    return base.get_layer(stop_at).output, layers


def make_hybrid_builder(cnn: str, dim: int, depth: int, heads: int, mlp_dim: int, dropout: float = 0.0,
                        widths=(32, 64, 128), blocks=(1, 1, 1), stop_at: str = "conv4_block6_out"):
    def build(x, weights=None):
        if cnn == "tiny":
            if weights not in (None, "none", ""):
                raise CXRWeightsError(f"hybrid_tiny has no built-in pretrained weights (got weights={weights!r})")
            fmap, layers = _tiny_resnet(x, widths, blocks)
        elif cnn == "resnet50":
            fmap, layers = _resnet50_stages(x, weights, stop_at)
        else:
            raise CXRConfigError(f"hybrid cnn must be 'tiny' or 'resnet50'; got {cnn!r}")
        grid = (int(fmap.shape[1]), int(fmap.shape[2]))
        embed = PatchEmbedding(1, dim, grid, name="token_embedding")
        t = embed(fmap)
        t, enc = transformer_encoder(t, depth, heads, mlp_dim, dropout)
        return _tokens_to_features(t, grid, layers + [embed] + enc)

    return build


def register_vit(name: str, patch_size: int, dim: int, depth: int, heads: int, mlp_dim: int, dropout: float = 0.0):
    """Register a ViT size under ``name`` (gray input in [0, 1], 1 channel)."""
    return register_backbone(BackboneSpec(
        name=name, build=make_vit_builder(patch_size, dim, depth, heads, mlp_dim, dropout), input_mode="unit",
        channels=1, cam_layer="encoder_grid", reference=VIT_REFERENCE))


def register_hybrid(name: str, cnn: str, dim: int, depth: int, heads: int, mlp_dim: int, dropout: float = 0.0,
                    **cnn_kwargs):
    """Register a hybrid CNN-ViT size under ``name`` (``cnn``: ``tiny`` or ``resnet50``)."""
    mode, channels = ("caffe", 3) if cnn == "resnet50" else ("unit", 1)
    return register_backbone(BackboneSpec(
        name=name, build=make_hybrid_builder(cnn, dim, depth, heads, mlp_dim, dropout, **cnn_kwargs),
        input_mode=mode, channels=channels, cam_layer="encoder_grid", reference=VIT_REFERENCE))


# Presets. vit_b16 is ViT-Base/16 (86M); vit_small is ViT-S/16; the tiny ones train on a CPU
# at 64 px (vit_tiny: 8x8 patches -> 64 tokens; hybrid_tiny: stride-8 feature map -> 64 tokens).
register_vit("vit_tiny", patch_size=8, dim=64, depth=2, heads=4, mlp_dim=128)
register_vit("vit_small", patch_size=16, dim=384, depth=12, heads=6, mlp_dim=1536)
register_vit("vit_b16", patch_size=16, dim=768, depth=12, heads=12, mlp_dim=3072)
register_hybrid("hybrid_tiny", "tiny", dim=64, depth=2, heads=4, mlp_dim=128, widths=(32, 64, 64), blocks=(1, 1, 1))
register_hybrid("hybrid_resnet50", "resnet50", dim=384, depth=6, heads=6, mlp_dim=1536)
