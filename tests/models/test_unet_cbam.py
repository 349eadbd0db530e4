"""The UNet+CBAM restorer and its encoder as a classifier backbone."""
from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from cxr_tf.errors import CXRConfigError, CXRWeightsError
from cxr_tf.models import build_model, get_backbone
from cxr_tf.models.unet_cbam import UNetCBAM


@pytest.fixture(scope="module")
def unet():
    return UNetCBAM(image_size=32, depth=2, width=4)


def test_shapes_names_and_cbam_flag(unet):
    x = np.random.default_rng(0).random((2, 32, 32, 1)).astype(np.float32)
    y = unet.predict(x, verbose=0)
    assert y.shape == (2, 32, 32, 1) and y.min() >= 0 and y.max() <= 1
    names = [l.name for l in unet.layers]
    assert {"enc1_conv1", "enc2_pool", "bottleneck_relu2", "up2", "cbam_skip1_channel", "cbam_dec1_spatial",
            "restored"} <= set(names)
    assert not any(isinstance(l, keras.Model) for l in unet.layers)
    plain = UNetCBAM(image_size=32, depth=2, width=4, use_cbam=False)
    assert not any("cbam" in l.name for l in plain.layers)
    assert plain.encoder_layer_names == unet.encoder_layer_names
    # same build -> same names (freeze indices and CAM layers do not drift)
    assert [l.name for l in UNetCBAM(image_size=32, depth=2, width=4).layers] == names
    with pytest.raises(CXRConfigError, match="divisible"):
        UNetCBAM(image_size=30, depth=2)


def test_get_config_and_save_load_round_trip(unet, tmp_path):
    cfg = unet.get_config()
    assert cfg == {"image_size": 32, "channels": 1, "depth": 2, "width": 4, "use_cbam": True, "cbam_ratio": 8,
                   "name": "unet_cbam_d2w4"}
    x = np.random.default_rng(1).random((2, 32, 32, 1)).astype(np.float32)
    p = tmp_path / "unet.keras"
    unet.save(p)
    back = keras.saving.load_model(p)
    assert isinstance(back, UNetCBAM) and back.get_config() == cfg
    np.testing.assert_allclose(back.predict(x, verbose=0), unet.predict(x, verbose=0), atol=1e-6)


def test_encoder_backbone_loads_ssl_weights(unet, tmp_path):
    # make the encoder weights recognisable
    for l in unet.layers:
        if l.name.startswith(("enc", "bottleneck")) and l.weights:
            l.set_weights([w + 0.5 for w in l.get_weights()])
    folder = unet.save_encoder(tmp_path / "ssl", {"normalisation": "per-image min-max to [0, 1]"})
    meta = json.loads((folder / "ssl_encoder.json").read_text())
    assert meta["depth"] == 2 and meta["backbone"] == "unet_cbam_encoder_d2w4"
    clf = build_model("unet_cbam_encoder", weights=f"ssl:{folder}", num_classes=2, image_size=32, head="gap",
                      freeze_until=0)
    assert clf.backbone == "unet_cbam_encoder_d2w4"
    assert clf.backbone_layer_names == unet.encoder_layer_names
    for name in unet.encoder_layer_names:
        for a, b in zip(unet.get_layer(name).get_weights(), clf.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    # the classifier's encoder computes exactly the restorer's encoder features
    x = np.random.default_rng(2).random((2, 32, 32, 1)).astype(np.float32)
    feat = keras.Model(clf.input, clf.get_layer("bottleneck_relu2").output).predict(x, verbose=0)
    np.testing.assert_allclose(feat, unet.encoder().predict(x, verbose=0), atol=1e-5)
    clf.set_freeze(-1)
    assert clf.parameter_counts()["trainable"] == 16 * 2 + 2  # only the head: GAP(16 = 4 * 2**2) -> 2
    # scratch build of the same architecture differs
    scratch = build_model("unet_cbam_encoder_d2w4", num_classes=2, image_size=32, head="gap", freeze_until=0)
    assert not np.allclose(scratch.get_layer("enc1_conv1").get_weights()[0], clf.get_layer("enc1_conv1").get_weights()[0])
    # a mismatched backbone is a clear error
    with pytest.raises(CXRWeightsError, match="depth 2 width 4"):
        build_model("unet_cbam_encoder_d3w4", weights=f"ssl:{folder}", num_classes=2, image_size=32)
    with pytest.raises(CXRWeightsError, match="metadata not found"):
        build_model("unet_cbam_encoder_d2w4", weights=f"ssl:{tmp_path}/nothing", num_classes=2, image_size=32)


def test_registry_family():
    spec = get_backbone("unet_cbam_encoder_d3w16")
    assert spec.channels == 1 and spec.input_mode == "unit"
    assert get_backbone("unet_cbam_encoder").name == "unet_cbam_encoder"


def _ssl_classifier(**kw):
    return build_model("unet_cbam_encoder_d2w4", num_classes=2, image_size=32, head="fc8", freeze_until=0,
                       class_names=["normal", "covid"], **kw)


def test_ssl_encoder_classifier_parameter_count_by_hand():
    # unet_cbam_encoder_d2w4 on 1-channel input: widths 4, 8 and bottleneck 16; every
    # 3x3 conv is bias-free, every BN has gamma, beta (trainable) + mean, var (not).
    #   enc1:       3*3*1*4 = 36     + 3*3*4*4 = 144       BN 2 * 4*4  = 32
    #   enc2:       3*3*4*8 = 288    + 3*3*8*8 = 576       BN 2 * 4*8  = 64
    #   bottleneck: 3*3*8*16 = 1152  + 3*3*16*16 = 2304    BN 2 * 4*16 = 128
    #   convs: 36+144+288+576+1152+2304 = 4500; BN: 32+64+128 = 224 (112 trainable, 112 not)
    #   head fc8: GAP(16) -> Dense 8: 16*8+8 = 136 -> Dense 2: 8*2+2 = 18; head = 154
    #   trainable = 4500 + 112 + 154 = 4766; non-trainable = 112; total = 4878
    m = _ssl_classifier()
    assert m.parameter_counts() == {"trainable": 4766, "non_trainable": 112, "total": 4878}
    assert m.count_params() == 4878
    m.set_freeze(-1)  # frozen encoder: only the head trains
    assert m.parameter_counts() == {"trainable": 154, "non_trainable": 4724, "total": 4878}


def test_ssl_encoder_classifier_keras_round_trip(unet, tmp_path):
    from cxr_tf.models import CXRClassifier

    folder = unet.save_encoder(tmp_path / "ssl")
    keras.utils.set_random_seed(3)
    m = build_model("unet_cbam_encoder", weights=f"ssl:{folder}", num_classes=2, image_size=32, head="fc8",
                    freeze_until=0, class_names=["normal", "covid"], bn_momentum=0.5)
    rng = np.random.default_rng(4)
    x = rng.random((8, 32, 32, 1)).astype(np.float32)
    m.compile(keras.optimizers.SGD(0.1), "categorical_crossentropy")
    m.fit(x, np.eye(2)[np.arange(8) % 2], epochs=1, batch_size=4, verbose=0)  # non-initial BN statistics
    assert not np.allclose(m.get_layer("enc1_bn1").moving_mean.numpy(), 0.0)
    p = m.predict(x, verbose=0)
    m.save(tmp_path / "clf.keras")
    import shutil

    shutil.rmtree(folder)  # the .keras file is self-contained: loading never re-reads the SSL artifact
    back = keras.saving.load_model(tmp_path / "clf.keras")
    assert isinstance(back, CXRClassifier)
    assert back.backbone == "unet_cbam_encoder_d2w4" and back.cam_layer == "bottleneck_relu2"
    # from_config drops the weights source (weights come from the file, never a reload)
    assert m.weights_source == f"ssl:{folder}" and m.get_config()["weights"] is None
    assert back.get_config() == {**m.get_config(), "weights": None}
    assert back.class_names == ["normal", "covid"] and back.bn_momentum == 0.5
    assert back.parameter_counts() == m.parameter_counts()
    np.testing.assert_allclose(back.predict(x, verbose=0), p, atol=1e-6)
    for a, b in zip(m.get_weights(), back.get_weights()):
        np.testing.assert_array_equal(a, b)
