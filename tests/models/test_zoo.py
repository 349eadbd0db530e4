"""The COVID model zoo: one registry, one head API, paper parameter counts, save/load."""
import keras
import numpy as np
import pytest

from cxr_tf.errors import CXRWeightsError
from cxr_tf.models import CXRClassifier, build_model, list_backbones
from cxr_tf.models.weights import save_backbone_weights

ZOO = ["resnet18", "squeezenet", "mobilenet", "mobilenet_v2", "resnet50", "densenet121"]

# Parameters with a 1000-class ImageNet head: (the paper's figure, the exact reference count of
# torchvision / Keras include_top). ResNet18 11.7M, SqueezeNet 1.1 1.24M, MobileNet 4.2M (Howard
# Table 1; Keras' model has 4,253,864), MobileNetV2 3.4M (Sandler Table 3; Keras 3,538,984),
# ResNet50 25.6M, DenseNet121 8.0M. The papers round, so 5% is the tolerance.
PAPER = {"resnet18": (11.7e6, 11_689_512), "squeezenet": (1.24e6, 1_235_496), "mobilenet": (4.2e6, 4_253_864),
         "mobilenet_v2": (3.4e6, 3_538_984), "resnet50": (25.6e6, 25_636_712), "densenet121": (8.0e6, 8_062_504)}


def test_zoo_registered():
    assert set(ZOO) <= set(list_backbones())


@pytest.mark.parametrize("name", ZOO)
def test_parameter_count_matches_paper(name):
    paper, exact = PAPER[name]
    m = build_model(name, num_classes=1000, image_size=64, head="gap", freeze_until=0)
    total = m.parameter_counts()["total"]
    assert abs(total - paper) / paper < 0.05, (name, total)
    if name in ("resnet18", "squeezenet"):
        # torchvision counts BN moving statistics as buffers, not parameters
        assert m.parameter_counts()["trainable"] == exact
    else:
        assert total == exact


@pytest.mark.parametrize("name", ["resnet18", "squeezenet", "mobilenet", "mobilenet_v2", "densenet121"])
def test_save_load_roundtrip_and_freezing(tmp_path, name):
    m = build_model(name, num_classes=3, image_size=32, head="fc16", freeze_until=-1, class_names=["c", "p", "n"])
    assert not any(isinstance(l, keras.Model) for l in m.layers)  # flat: tf-keras-vis sees every layer
    assert len(m.get_layer(m.cam_layer).output.shape) == 4
    head_only = m.parameter_counts()["trainable"]
    assert head_only == m.get_layer("head_fc1").count_params() + m.get_layer("predictions").count_params()
    x = np.random.default_rng(0).random((2, 32, 32, 1)).astype("float32")
    p = m.predict(x, verbose=0)
    m.save(tmp_path / "m.keras")
    r = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(r, CXRClassifier) and r.get_config() == m.get_config()
    assert r.backbone_layer_names == m.backbone_layer_names  # stable names across builds
    assert np.abs(r.predict(x, verbose=0) - p).max() < 1e-5
    assert r.parameter_counts() == m.parameter_counts()


def test_resnet18_layout():
    m = build_model("resnet18", num_classes=2, image_size=224, head="gap", freeze_until=0)
    assert m.get_layer("conv1_conv").output.shape[1:] == (112, 112, 64)
    assert m.get_layer("pool1_pool").output.shape[1:] == (56, 56, 64)
    assert m.get_layer("conv3_block1_out").output.shape[1:] == (28, 28, 128)
    assert m.get_layer("conv5_block2_out").output.shape[1:] == (7, 7, 512)
    convs = [l for l in m.layers if isinstance(l, keras.layers.Conv2D) and not l.name.endswith("_0_conv")]
    assert len(convs) + 1 == 18  # 17 weighted convs + the output layer: ResNet-"18"


def test_squeezenet_layout():
    m = build_model("squeezenet", num_classes=2, image_size=224, head="gap", freeze_until=0)
    assert [m.get_layer(f"pool{i}").output.shape[1] for i in (1, 3, 5)] == [55, 27, 13]
    assert m.get_layer("fire9_concat").output.shape[1:] == (13, 13, 512)
    assert m.get_layer("fire2_squeeze1x1").filters == 16 and m.get_layer("fire9_expand3x3").filters == 256


def test_backbone_transfer_by_layer_name(tmp_path):
    """A trunk saved from a 2-class classifier loads into a 3-class one (deep_covid's in-domain pretraining)."""
    src = build_model("squeezenet", num_classes=2, image_size=32, head="gap", freeze_until=0)
    path = save_backbone_weights(src, str(tmp_path / "trunk.keras"))
    dst = build_model("squeezenet", num_classes=3, image_size=32, head="fc8", weights=path, freeze_until=-1)
    for name in ("conv1", "fire9_expand3x3"):
        np.testing.assert_array_equal(dst.get_layer(name).get_weights()[0], src.get_layer(name).get_weights()[0])
    assert dst.weights_source == path and dst.get_config()["weights"] is None  # configs name no weight file
    with pytest.raises(CXRWeightsError, match="no layer name matches"):
        build_model("resnet18", num_classes=3, image_size=32, weights=path)


def test_no_hosted_imagenet_weights_is_a_clear_error(tmp_path):
    for name in ("resnet18", "squeezenet"):
        with pytest.raises(CXRWeightsError, match="no ImageNet weights for"):
            build_model(name, num_classes=2, image_size=32, weights="imagenet")
    with pytest.raises(CXRWeightsError, match="not found"):
        build_model("resnet18", num_classes=2, image_size=32, weights=str(tmp_path / "none.h5"))
