"""CBAM layers: attention maths, serialization, flat graphs."""
from __future__ import annotations

import keras
import numpy as np

from cxr_tf.layers import ChannelAttention, SpatialAttention, cbam_block


def _model():
    inp = keras.Input((8, 8, 16))
    out = cbam_block(inp, "att", ratio=4)
    return keras.Model(inp, out)


def test_cbam_matches_reference_maths():
    m = _model()
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 16)).astype(np.float32)
    ca, sa = m.get_layer("att_channel"), m.get_layer("att_spatial")
    (w1, b1), (w2, b2) = ca.mlp_hidden.get_weights(), ca.mlp_out.get_weights()
    mlp = lambda v: np.maximum(v @ w1 + b1, 0) @ w2 + b2  # noqa: E731
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    xc = x * sig(mlp(x.mean((1, 2))) + mlp(x.max((1, 2))))[:, None, None, :]
    desc = np.concatenate([xc.mean(-1, keepdims=True), xc.max(-1, keepdims=True)], -1)
    k, kb = sa.conv.get_weights()
    conv = keras.ops.convert_to_numpy(keras.ops.conv(desc, k, padding="same")) + kb
    ref = xc * sig(conv)
    np.testing.assert_allclose(m.predict(x, verbose=0), ref, rtol=1e-4, atol=1e-5)
    assert w1.shape == (16, 4) and k.shape == (7, 7, 2, 1)


def test_cbam_graph_is_flat_and_round_trips(tmp_path):
    m = _model()
    assert not any(isinstance(l, keras.Model) for l in m.layers)
    assert [l.name for l in m.layers[1:]] == ["att_channel", "att_spatial"]
    x = np.random.default_rng(1).random((1, 8, 8, 16)).astype(np.float32)
    p = tmp_path / "cbam.keras"
    m.save(p)
    m2 = keras.saving.load_model(p)
    np.testing.assert_allclose(m2.predict(x, verbose=0), m.predict(x, verbose=0), atol=1e-6)
    assert ChannelAttention.from_config(m.get_layer("att_channel").get_config()).ratio == 4
    assert SpatialAttention(5).get_config()["kernel_size"] == 5
