import numpy as np
import keras
import pytest

from cxr_tf.errors import CXRConfigError, CXRModelError, CXRWeightsError
from cxr_tf.models import CXRClassifier, build_model, list_backbones


@pytest.fixture(scope="module")
def resnet():
    return build_model("resnet50", num_classes=3, image_size=64, freeze_until=144)


def test_registry():
    assert {"resnet50", "densenet121", "mobilenet", "mobilenet_v2", "tiny_cnn"} <= set(list_backbones())
    with pytest.raises(CXRModelError, match="unknown backbone 'vgg99'"):
        build_model("vgg99")


def test_resnet50_layer_numbering_matches_keras_applications(resnet):
    # SPEC S4 / FACTS: keras.applications numbering with the input as index 0
    assert len(resnet.backbone_layer_names) == 174
    assert resnet.backbone_layer(143).name == "conv5_block1_1_conv"
    assert resnet.backbone_layer(144).name == "conv5_block1_1_bn"
    assert resnet.backbone_layer(114).name == "conv4_block4_1_bn"
    ref = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(64, 64, 3))
    assert [l.name for l in ref.layers[1:]] == resnet.backbone_layer_names


def test_freeze_counts(resnet):
    assert resnet.parameter_counts()["trainable"] == 15_009_027
    assert not resnet.backbone_layer(143).trainable and resnet.backbone_layer(144).trainable
    resnet.set_freeze(114)
    assert resnet.parameter_counts()["trainable"] - 15_009_027 == 3_618_560  # layers[114:144]
    resnet.set_freeze(143)
    # conv5 (layers[143:]) + the GAP-256-128-3 head: the seed's 15,556,355 counting BN statistics
    start = resnet.layers.index(resnet.backbone_layer(143))
    assert sum(int(np.prod(w.shape)) for l in resnet.layers[start:] for w in l.weights) == 15_556_355
    resnet.set_freeze(144)
    with pytest.raises(CXRConfigError, match="freeze_until"):
        resnet.set_freeze(500)


def test_freeze_until_accepts_a_layer_name(resnet):
    # a name freezes every layer before it: conv5_block1_1_conv is reference index 143
    resnet.set_freeze("conv5_block1_1_conv")
    assert resnet.freeze_until == 143 and resnet.backbone_layer(143).trainable
    assert not resnet.backbone_layer(142).trainable
    assert resnet.get_config()["freeze_until"] == 143
    resnet.set_freeze("144")  # a digit string from a CLI flag
    assert resnet.freeze_until == 144 and not resnet.backbone_layer(143).trainable
    with pytest.raises(CXRConfigError, match="'conv9_block1' is not a layer of resnet50"):
        resnet.set_freeze("conv9_block1")
    m = build_model("tiny_cnn", num_classes=2, image_size=32, freeze_until="block2_conv")
    names = m.backbone_layer_names
    assert all(not m.get_layer(n).trainable for n in names[: names.index("block2_conv")])
    assert m.get_layer("block2_conv").trainable


def test_frozen_batchnorm_runs_in_inference_mode():
    m = build_model("tiny_cnn", num_classes=2, image_size=32, freeze_until=3)  # block1 conv+bn frozen
    bn = m.get_layer("block1_bn")
    before = [w.numpy().copy() for w in bn.non_trainable_weights]
    m.compile("adam", "categorical_crossentropy")
    x = np.random.default_rng(0).random((8, 32, 32, 1)).astype("float32")
    m.fit(x, np.eye(2)[[0, 1] * 4], epochs=1, verbose=0)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, bn.non_trainable_weights))
    moving = m.get_layer("block2_bn").non_trainable_weights[0].numpy()
    assert not np.allclose(moving, 0)  # a trainable BN did update its statistics


def test_flat_graph_and_head():
    m = build_model("tiny_cnn", num_classes=4, image_size=32, head="fc32-16", dropout=0.2, freeze_until=0)
    assert not any(isinstance(l, keras.Model) for l in m.layers)  # nothing nested (tf-keras-vis)
    names = [l.name for l in m.layers]
    assert names[:2] == ["image", "backbone_input"]
    assert names[-6:] == ["head_gap", "head_dropout1", "head_fc1", "head_dropout2", "head_fc2", "head_dropout_out"][:0] + names[-6:]
    assert "head_fc1" in names and "head_fc2" in names and names[-1] == "predictions"
    assert m.get_layer("head_fc1").units == 32 and m.output.shape[-1] == 4
    p = m.predict(np.zeros((2, 32, 32, 1)), verbose=0)
    assert np.allclose(p.sum(1), 1.0, atol=1e-5)
    with pytest.raises(CXRConfigError, match="head"):
        build_model("tiny_cnn", num_classes=2, image_size=32, head="mlp")


@pytest.mark.parametrize("backbone,size", [("tiny_cnn", 32), ("resnet50", 32)])
def test_save_load_roundtrip(tmp_path, backbone, size):
    m = build_model(backbone, num_classes=3, image_size=size, freeze_until=10, class_names=["a", "b", "c"])
    x = np.random.default_rng(0).random((2, size, size, 1)).astype("float32")
    p = m.predict(x, verbose=0)
    cfg = m.get_config()
    assert cfg["freeze_until"] == 10 and cfg["class_names"] == ["a", "b", "c"] and cfg["backbone"] == backbone
    m.save(tmp_path / "m.keras")
    r = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(r, CXRClassifier) and r.get_config() == cfg
    assert np.abs(r.predict(x, verbose=0) - p).max() < 1e-6
    assert r.parameter_counts() == m.parameter_counts()


def test_local_weights_file_goes_through_keras_loader(tmp_path):
    ref = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "resnet50_notop.weights.h5"
    ref.save_weights(path)
    m = build_model("resnet50", num_classes=2, image_size=32, weights=str(path))
    np.testing.assert_array_equal(m.get_layer("conv1_conv").get_weights()[0], ref.get_layer("conv1_conv").get_weights()[0])
    np.testing.assert_array_equal(m.get_layer("conv5_block3_3_bn").get_weights()[2],
                                  ref.get_layer("conv5_block3_3_bn").get_weights()[2])
    with pytest.raises(CXRWeightsError, match="not found"):
        build_model("resnet50", num_classes=2, image_size=32, weights=str(tmp_path / "missing.h5"))
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(CXRWeightsError, match="junk.h5"):
        build_model("resnet50", num_classes=2, image_size=32, weights=str(tmp_path / "junk.h5"))


def test_imagenet_offline_is_a_clear_error(monkeypatch):
    from keras.src.utils import file_utils

    def offline(*a, **k):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -2] Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(CXRWeightsError, match="offline.*--weights"):
        build_model("resnet50", num_classes=2, image_size=32, weights="imagenet")
