"""``--precision`` and ``--jit-compile``: float32 outputs, loss scaling, a float32 export.

Tolerance between a mixed_float16 model and its float32 export (``MIXED_TOL``): float16
keeps 11 significant bits, unit roundoff u = 2^-11 ~ 4.9e-4. The tiny CNN rounds its
activations to float16 about a dozen times (input adapter, 3 conv blocks of conv / BN /
ReLU, pooling), so its logits carry a relative error of roughly 12 u ~ 6e-3; the softmax
Jacobian's entries are at most 1/2 in size, so a probability moves by at most about
half the logits' absolute error. Logits of these small models stay within a few units
(measured on the smoke run and random tiny CNNs, whose probabilities sit near 1/3: 1e-5 to
2e-5; confident trained logits move more), so 2e-2 is an analytic bound with a
margin of ~10x that still catches a wrong weight (which moves probabilities by ~0.1+).
The float32 export against the float32 copy of the same weights is held to the
float32 path's own 1e-5.
"""
import json

import keras
import numpy as np
import pytest

from cxr_tf.export.savedmodel import float32_model
from cxr_tf.models import CXRClassifier, build_model
from cxr_tf.training.config import OptimizerConfig
from cxr_tf.training.loop import compile_classifier
from cxr_tf.training.precision import set_precision

MIXED_TOL = 2e-2


@pytest.fixture
def policy():
    yield set_precision
    keras.config.set_dtype_policy("float32")


def _tiny(**kw):
    return build_model("tiny_cnn", num_classes=3, image_size=32, head="fc16", freeze_until=0, weights=None, **kw)


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_output_layer_and_loss_float32_under_mixed_policy(policy, precision):
    keras.utils.set_random_seed(0)  # random ops need a seed once another test enabled op determinism
    policy(precision)
    model = _tiny()
    assert model.get_layer("predictions").compute_dtype == "float32"
    assert model.get_layer("head_fc1").compute_dtype == precision.split("_")[1]
    assert model.outputs[0].dtype == "float32"
    assert all(v.dtype == "float32" for v in model.weights)  # variables stay float32
    compile_classifier(model, OptimizerConfig(jit_compile=True), steps_per_epoch=2, epochs=1)
    # Keras refuses XLA once TF op determinism is on (a --deterministic run earlier in this process)
    from tensorflow.python.framework.config import is_op_determinism_enabled

    assert model.jit_compile is (not is_op_determinism_enabled())
    assert model.loss.dtype == "float32"
    # Keras 3 wraps the optimizer for float16 (range: loss scaling); bfloat16 has float32's exponent.
    scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (precision == "mixed_float16")
    x = np.random.default_rng(0).random((8, 32, 32, 1), np.float32)
    y = keras.utils.to_categorical(np.arange(8) % 3, 3)
    hist = model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
    assert model.predict(x, verbose=0).dtype == np.float32


def test_restoration_output_float32_under_mixed_policy(policy):
    from cxr_tf.models.unet_cbam import UNetCBAM

    policy("mixed_float16")
    model = UNetCBAM(32, 1, depth=2, width=8)
    assert model.get_layer("restored").compute_dtype == "float32" and model.outputs[0].dtype == "float32"
    assert model.get_layer("enc1_conv1").compute_dtype == "float16"


def test_set_precision_rejects_unknown(policy):
    from cxr_tf.errors import CXRConfigError

    with pytest.raises(CXRConfigError, match="--precision"):
        policy("float16")


def test_float32_copy_has_the_weights_and_close_predictions(policy):
    policy("mixed_float16")
    mixed = _tiny(class_names=["a", "b", "c"])
    x = np.random.default_rng(1).random((6, 32, 32, 1), np.float32)
    f32 = float32_model(mixed)
    assert f32 is not mixed and keras.config.dtype_policy().name == "mixed_float16"  # policy restored
    assert all(l.compute_dtype == "float32" for l in f32._flatten_layers(include_self=False))
    assert f32.class_names == ["a", "b", "c"]
    for a, b in zip(mixed.get_weights(), f32.get_weights()):
        np.testing.assert_array_equal(a, b)
    diff = np.abs(mixed.predict(x, verbose=0) - f32.predict(x, verbose=0)).max()
    assert 0 < diff <= MIXED_TOL, diff
    # a plain functional model takes the clone_model path
    keras.config.set_dtype_policy("mixed_float16")
    inp = keras.Input((4,))
    out = keras.layers.Dense(2, activation="softmax", dtype="float32")(keras.layers.Dense(8)(inp))
    plain = keras.Model(inp, out)
    plain32 = float32_model(plain)
    assert all(l.compute_dtype == "float32" for l in plain32._flatten_layers(include_self=False))
    keras.config.set_dtype_policy("float32")
    assert float32_model(_tiny()) is not None


def test_smoke_mixed_float16_jit_trains_and_exports_float32(tmp_path, policy):
    """`--precision mixed_float16 --jit-compile` trains, exports a float32 graph, and the
    served probabilities match the trained (mixed) Keras model within MIXED_TOL and its
    float32 copy within 1e-5."""
    from cxr_tf.data.preprocess import prepare_float_batch
    from cxr_tf.experiments import pneumonia_freeze
    from cxr_tf.export import load_exported

    argv = ["--smoke", "--backbone", "tiny_cnn", "--freeze-until", "0", "--precision", "mixed_float16",
            "--jit-compile", "--lr", "1e-3", "--runs-dir", str(tmp_path / "runs"),
            "--saved-models-dir", str(tmp_path / "sm")]
    assert pneumonia_freeze.main(argv) == 0
    run = sorted((tmp_path / "runs" / "pneumonia_freeze").iterdir())[-1]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["precision"] == "mixed_float16" and cfg["jit_compile"] is True
    m = json.loads((run / "metrics.json").read_text())
    assert m["export"]["max_abs_diff_vs_keras"]["predict_images"] <= MIXED_TOL
    exported = load_exported(m["export"]["path"])
    assert exported.keras_model().get_layer("head_fc1").compute_dtype == "float32"

    # the trained mixed model, rebuilt from the run's own files
    model_cfg = json.loads((run / "model.json").read_text())["config"]
    keras.config.set_dtype_policy("mixed_float16")
    mixed = CXRClassifier.from_config(model_cfg)
    mixed.load_weights(run / "checkpoints" / "best.weights.h5")
    assert mixed.get_layer("head_fc1").compute_dtype == "float16"
    raw = np.random.default_rng(2).random((8, 80, 80, 1), np.float32) * 255
    served = exported.predict_images(raw)
    x = prepare_float_batch(raw, cfg["image_size"]).numpy()  # the graph's own preprocessing
    assert np.abs(served - mixed.predict(x, verbose=0)).max() <= MIXED_TOL
    np.testing.assert_allclose(served, float32_model(mixed).predict(x, verbose=0), atol=1e-5)
