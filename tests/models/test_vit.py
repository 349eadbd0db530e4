import keras
import numpy as np
import pytest

from cxr_tf.errors import CXRConfigError, CXRWeightsError
from cxr_tf.layers import PatchEmbedding, TokensToGrid
from cxr_tf.models import build_model, get_backbone, list_backbones


def test_patch_embedding_shapes_and_config():
    layer = PatchEmbedding(8, 16, (4, 4))
    y = layer(np.zeros((2, 32, 32, 1), np.float32))
    assert tuple(y.shape) == (2, 16, 16)
    # zero input -> tokens equal the position embeddings (conv bias starts at 0)
    np.testing.assert_allclose(np.asarray(y[0]), np.asarray(layer.position[0]), atol=1e-6)
    again = PatchEmbedding.from_config(layer.get_config())
    assert (again.patch_size, again.dim, again.grid) == (8, 16, (4, 4))
    g = TokensToGrid((4, 4))(y)
    assert tuple(g.shape) == (2, 4, 4, 16)


@pytest.mark.parametrize("name, n_tokens", [("vit_tiny", 16), ("hybrid_tiny", 16)])
def test_tiny_transformers_flat_roundtrip(name, n_tokens, tmp_path):
    assert name in list_backbones() and get_backbone(name).cam_layer == "encoder_grid"
    m = build_model(name, num_classes=4, image_size=32, head="gap", freeze_until=0, multilabel=True,
                    class_names=list("abcd"))
    assert not any(isinstance(l, keras.Model) for l in m.layers)  # flat: no nested model
    grid = m.get_layer("encoder_grid").output
    assert int(grid.shape[1]) * int(grid.shape[2]) == n_tokens
    assert isinstance(m.get_layer("encoder_block1_mha"), keras.layers.MultiHeadAttention)
    if name.startswith("hybrid"):  # CNN stages feed the token embedding
        assert m.get_layer("stage3_block1_out").output.shape[1:3] == grid.shape[1:3]
    x = np.random.default_rng(0).uniform(size=(3, 32, 32, 1)).astype(np.float32)
    p = m.predict(x, verbose=0)
    assert p.shape == (3, 4) and np.all((p > 0) & (p < 1))
    path = tmp_path / f"{name}.keras"
    m.save(path)
    m2 = keras.models.load_model(path)
    np.testing.assert_allclose(m2.predict(x, verbose=0), p, atol=1e-6)
    assert m2.get_config() == m.get_config()


@pytest.mark.slow
def test_vit_learns_a_simple_task():
    # bright left half vs bright right half: a tiny ViT must separate them after a few steps
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 0.2, size=(64, 32, 32, 1)).astype(np.float32)
    y = np.zeros((64, 1), np.float32)
    y[32:] = 1
    x[:32, :, :16] += 0.7
    x[32:, :, 16:] += 0.7
    m = build_model("vit_tiny", num_classes=1, image_size=32, head="gap", freeze_until=0, multilabel=True)
    m.compile(keras.optimizers.Adam(3e-3), "binary_crossentropy")
    m.fit(x, y, epochs=15, batch_size=16, verbose=0, shuffle=True)
    p = m.predict(x, verbose=0)[:, 0]
    assert p[32:].mean() - p[:32].mean() > 0.5


def test_bad_sizes_and_weights():
    with pytest.raises(CXRConfigError, match="not divisible by patch_size"):
        build_model("vit_tiny", num_classes=2, image_size=36, head="gap", freeze_until=0)
    with pytest.raises(CXRWeightsError):
        build_model("vit_tiny", num_classes=2, image_size=32, head="gap", freeze_until=0, weights="imagenet")


@pytest.mark.slow
def test_hybrid_resnet50_uses_keras_applications_stages():
    m = build_model("hybrid_resnet50", num_classes=3, image_size=64, head="gap", freeze_until=0)
    names = m.backbone_layer_names
    # keras.applications numbering is kept for the CNN part: index 143 would be conv5, not present
    assert "conv4_block6_out" in names and not any(n.startswith("conv5") for n in names)
    assert m.get_layer("encoder_grid").output.shape[1:3] == (4, 4)  # stride 16
    m.set_freeze(144)
    assert not m.backbone_layer(1).trainable
