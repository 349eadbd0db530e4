"""Score-CAM scores the logits once (issue 18): equal to tf-keras-vis on the logit model,
and on a lesion + border-marker toy model the marker gets less weight than the old
double-softmax version gave it."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cxr_tf.explain import Explainer, border_mass  # noqa: E402

S = 32


def _toy(activation="softmax", n_out=2, dense=None, bias=None):
    """Input channel 0 holds a lesion, channel 1 a border marker; ``feat`` copies them (1x1 identity)."""
    inp = keras.Input((S, S, 2))
    feat = keras.layers.Conv2D(2, 1, activation="relu", name="feat")(inp)
    gap = keras.layers.GlobalAveragePooling2D()(feat)
    out = keras.layers.Dense(n_out, activation=activation, name="out")(gap)
    m = keras.Model(inp, out)
    m.get_layer("feat").set_weights([np.eye(2, dtype="float32")[None, None], np.zeros(2, "float32")])
    # class 1 = lesion (strong) + marker (weak), against a prior for class 0
    w = np.array([[0.0, 60.0], [0.0, 10.0]], "float32") if dense is None else np.asarray(dense, "float32")
    b = np.array([0.0, -3.0], "float32") if bias is None else np.asarray(bias, "float32")
    m.get_layer("out").set_weights([w, b])
    return m


def _images(n=3):
    x = np.zeros((n, S, S, 2), "float32")
    for i in range(n):
        x[i, 11 + i:19 + i, 12:20, 0] = 1.0  # the lesion, away from the border
        x[i, 0:3, 0:16, 1] = 1.0  # a text marker along the top edge (inside the 10% band)
    return x


def _reference(model, x, idx, linear=True, layer="feat"):
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    cam = Scorecam(model, model_modifier=ReplaceToLinear() if linear else None, clone=linear)
    return np.asarray(cam(CategoricalScore(idx), x, penultimate_layer=layer, seek_penultimate_conv_layer=False,
                          max_N=None))


def test_scorecam_equals_tf_keras_vis_on_logits_and_lowers_the_marker(capfd):
    m = _toy()
    x = _images()
    idx = [1] * len(x)
    ours = Explainer(m, "scorecam", layer="feat", max_n=None)(x, idx)
    assert "\x1b[" not in capfd.readouterr().out  # no progress-bar escape codes from our Score-CAM
    logit_ref = _reference(m, x, idx, linear=True)
    np.testing.assert_allclose(ours, np.clip(logit_ref, 0, 1), atol=1e-5)
    old = np.clip(_reference(m, x, idx, linear=False), 0, 1)  # the softmax model: scores softmaxed twice
    assert np.abs(ours - old).max() > 0.1
    new_border, old_border = border_mass(ours).mean(), border_mass(old).mean()
    assert new_border < old_border - 0.05, (new_border, old_border)
    marker = (slice(None), slice(0, 3), slice(0, 16))
    assert ours[marker].max() < 0.5 * old[marker].max()
    # the caller's model keeps its softmax
    np.testing.assert_allclose(m.predict(x, verbose=0).sum(1), 1.0, atol=1e-5)


def test_scorecam_multilabel_scores_each_label_by_its_sigmoid():
    # label 0 reads the lesion, label 1 the marker: each label's map sits on its own evidence
    m = _toy("sigmoid", 2, dense=[[30.0, -30.0], [-30.0, 30.0]], bias=[0.0, 0.0])
    x = _images(2)
    ex = Explainer(m, "scorecam", layer="feat", max_n=None)
    assert ex.multilabel
    lesion, marker = ex(x, [0, 0]), ex(x, [1, 1])
    assert border_mass(lesion).mean() < 0.2 and border_mass(marker).mean() > 0.6
    mixed = ex(x, [0, 1])  # one call, two labels: each image gets its own label's map
    np.testing.assert_allclose(mixed[0], lesion[0], atol=1e-6)
    np.testing.assert_allclose(mixed[1], marker[1], atol=1e-6)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_gradient_methods_use_the_linear_twin_for_any_functional_model(method):
    m = _toy()
    x = _images(2)
    cams = Explainer(m, method, layer="feat")(x, [1, 1])
    assert border_mass(cams).mean() < 0.3  # the lesion dominates the logit
