"""Experiments name weights through the one resolver: preset:NAME reaches the model."""
from types import SimpleNamespace

import numpy as np
import pytest

from cxr_tf.errors import CXRArchitectureError, CXRConfigError
from cxr_tf.experiments import covid_ssl_compare as cmp
from cxr_tf.training import sweep
from cxr_tf.models import build_model
from cxr_tf.models import presets as P


@pytest.fixture
def preset(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_TF_HOME", str(tmp_path))
    m = build_model("tiny_cnn", num_classes=2, image_size=32, head="gap", freeze_until=0, class_names=["a", "b"])
    for w in m.weights:
        w.assign(w.numpy() + 0.5)
    P.save_preset(m, tmp_path / "presets" / "tp", weights_dtype="float32")
    return m


def test_sweep_classifier_takes_preset_and_run_weights(preset, tmp_path):
    cfg = SimpleNamespace(backbone="tiny_cnn", image_size=32, head="gap", dropout=0.0, freeze_until=0,
                          weights="preset:tp", bn_momentum=None)
    ds = SimpleNamespace(num_classes=3, class_names=["x", "y", "z"])
    model = sweep.build_classifier(cfg, ds)
    assert model.weights_loaded == "trunk"
    np.testing.assert_array_equal(model.get_layer("block2_conv").get_weights()[0],
                                  preset.get_layer("block2_conv").get_weights()[0])
    cfg.backbone = "resnet18"
    with pytest.raises(CXRArchitectureError):
        sweep.build_classifier(cfg, ds)
    cfg.backbone, cfg.weights = "tiny_cnn", "none"
    assert sweep.build_classifier(cfg, ds).weights_loaded is None


def test_covid_compare_init_passes_resolver_forms():
    assert cmp.parse_init("resnet18=preset:tp,squeezenet=run:runs/x") == {"resnet18": "preset:tp",
                                                                         "squeezenet": "run:runs/x"}
    with pytest.raises(CXRConfigError, match="NAME=preset:tp"):
        cmp.parse_init("preset:tp")


def test_chexpert_noisy_init_names_weights_per_model(preset):
    from cxr_tf.experiments import chexpert_noisy

    cfg = chexpert_noisy.parse(["--smoke", "--init", "tiny_cnn=preset:tp, resnet50=run:runs/x"])
    assert cfg.init_map() == {"tiny_cnn": "preset:tp", "resnet50": "run:runs/x"}
    with pytest.raises(CXRConfigError, match="MODEL=WEIGHTS"):
        chexpert_noisy.parse(["--smoke", "--init", "preset:tp"])
    m = build_model("tiny_cnn", num_classes=5, image_size=32, head="gap", freeze_until=0, multilabel=True,
                    weights=cfg.init_map()["tiny_cnn"])
    assert m.weights_loaded == "trunk"
