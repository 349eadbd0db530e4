"""The served decision applies the exported operating point; metadata is portable and readable."""
from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from cxr_tf.errors import CXRConfigError, CXRModelError  # noqa: E402
from cxr_tf.evaluation import classification_metrics  # noqa: E402
from cxr_tf.export import decision_rule, describe_export, export_for_serving, load_exported  # noqa: E402

S = 24


def _model(n_classes, name="dec", activation="softmax"):
    keras.utils.set_random_seed(1)
    inp = keras.Input((S, S, 1), name="image")
    x = keras.layers.Conv2D(3, 3, activation="relu", name="conv")(inp)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(n_classes, activation=activation, name="probs",
                             bias_initializer=keras.initializers.RandomNormal(0, 1))(x)
    return keras.Model(inp, out, name=name)


def _probs(m, x):
    """What the served graph computes: the model on the in-graph preprocessed batch."""
    from cxr_tf.data.preprocess import prepare_float_batch

    return m.predict(prepare_float_batch(tf.constant(x), S).numpy(), verbose=0)


def _batch(n=24, seed=0):
    rng = np.random.default_rng(seed)
    # different brightness / texture per image so the probabilities spread
    return np.stack([np.clip(rng.random((S, S, 1)) * rng.uniform(0.1, 1) + rng.uniform(0, 0.5), 0, 1)
                     for _ in range(n)]).astype(np.float32)


def test_binary_served_decision_uses_threshold_not_argmax(tmp_path):
    m = _model(2)
    x = _batch()
    p = _probs(m, x)
    # a threshold between the images' P(class 1) values, above 0.5 if possible: argmax disagrees somewhere
    t = float(np.quantile(p[:, 1], 0.5))
    res = export_for_serving(m, tmp_path, "bin", class_names=["normal", "pneumonia"], image_size=S,
                             threshold=t, metadata={"data_dir": "/home/someone/data/kermany", "auc": 0.9})
    ex = load_exported(res.path)
    out = ex.serve_images(x)
    want = (p[:, 1] >= t).astype(np.int64)
    assert want.min() == 0 and want.max() == 1
    np.testing.assert_array_equal(out["class_index"], want)
    np.testing.assert_array_equal(out["decision"].astype(str), np.array(["normal", "pneumonia"])[want])
    np.testing.assert_allclose(out["probabilities"], p, atol=1e-5)
    # the same rule as the report's metrics (confusion matrix from the same threshold)
    y = want.copy()
    y[:3] = 1 - y[:3]
    cm = np.asarray(classification_metrics(y, p, ["normal", "pneumonia"], threshold=t, n_boot=0)["confusion_matrix"])
    served_cm = np.zeros((2, 2), int)
    np.add.at(served_cm, (y, out["class_index"]), 1)
    np.testing.assert_array_equal(cm, served_cm)
    # the operating point at the top level, and no machine path in the metadata
    meta = json.loads((res.path / "assets.extra" / "cxr_tf_metadata.json").read_text())
    assert meta["threshold"] == pytest.approx(t) and meta["class_names"] == ["normal", "pneumonia"]
    assert meta["image_size"] == S and meta["decision_rule"] == f"P(pneumonia) >= {t:g}"
    assert meta["metadata"]["data_dir"] == "kermany" and "/home/" not in json.dumps(meta)
    assert ex.threshold == pytest.approx(t)
    np.testing.assert_array_equal(ex.decide(p), want)


def test_threshold_from_metadata_and_older_exports(tmp_path):
    """Callers that passed the threshold inside ``metadata`` get it applied; nested (old) layouts still read."""
    m = _model(2, name="old")
    x = _batch(8)
    p = _probs(m, x)
    t = float(np.quantile(p[:, 1], 0.4))
    res = export_for_serving(m, tmp_path, "old", class_names=["a", "b"], image_size=S, metadata={"threshold": t})
    np.testing.assert_array_equal(load_exported(res.path).serve_images(x)["class_index"], (p[:, 1] >= t).astype(int))
    meta_file = res.path / "assets.extra" / "cxr_tf_metadata.json"
    meta = json.loads(meta_file.read_text())
    for key in ("threshold", "decision_rule", "class_thresholds", "keras_model"):
        meta.pop(key)
    meta["metadata"]["threshold"] = 0.25  # the layout before the threshold moved to the top level
    meta_file.write_text(json.dumps(meta))
    old = load_exported(res.path)
    assert old.threshold == 0.25 and not old.serves_decision
    with pytest.raises(CXRModelError, match="no Keras config"):
        old.keras_model()


def test_multiclass_argmax_or_per_class_thresholds(tmp_path):
    m = _model(3, name="mc")
    x = _batch(30, seed=2)
    p = _probs(m, x)
    plain = load_exported(export_for_serving(m, tmp_path, "mc", class_names=["x", "y", "z"], image_size=S).path)
    np.testing.assert_array_equal(plain.serve_images(x)["class_index"], p.argmax(1))
    ct = [0.9, 0.05, 0.9]  # class y wins whenever it reaches 0.05 and no other class passes 0.9
    ex = load_exported(export_for_serving(m, tmp_path, "mc", class_names=["x", "y", "z"], image_size=S,
                                          class_thresholds=ct).path)
    got = ex.serve_images(x)["class_index"]
    passed = p >= np.asarray(ct)
    want = np.where(passed.any(1), np.where(passed, p, -1).argmax(1), p.argmax(1))
    np.testing.assert_array_equal(got, want)
    assert (want != p.argmax(1)).any()  # the thresholds changed some decisions
    np.testing.assert_array_equal(decision_rule(p, class_thresholds=ct), want)
    assert ex.metadata["class_thresholds"] == pytest.approx(ct)
    with pytest.raises(CXRConfigError, match="binary"):
        export_for_serving(m, tmp_path, "mc", class_names=["x", "y", "z"], image_size=S, threshold=0.5)


def test_multilabel_decision_per_label(tmp_path):
    m = _model(3, name="ml", activation="sigmoid")
    x = _batch(10)
    p = _probs(m, x)
    ex = load_exported(export_for_serving(m, tmp_path, class_names=["a", "b", "c"], image_size=S, multilabel=True,
                                          class_thresholds=[0.3, 0.5, 0.7]).path)
    np.testing.assert_array_equal(ex.serve_images(x)["decision"], (p >= [0.3, 0.5, 0.7]).astype(int))


def test_keras_model_rebuilt_from_any_directory(tmp_path, monkeypatch):
    """CAMs need the Keras model: the export rebuilds it from its own config and variables."""
    from cxr_tf.explain import load_keras_model
    from cxr_tf.models import build_model

    clf = build_model("tiny_cnn", num_classes=2, image_size=32, head="gap", freeze_until=0,
                      class_names=["normal", "covid"])
    clf.set_weights([w + 0.01 for w in clf.get_weights()])  # not the initialisation
    res = export_for_serving(clf, tmp_path / "sm", "c", class_names=clf.class_names, image_size=32, threshold=0.7)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    back = load_keras_model(res.path)
    assert back.class_names == ["normal", "covid"] and back.get_config()["weights"] is None
    x = np.random.default_rng(0).random((3, 32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(back.predict(x, verbose=0), clf.predict(x, verbose=0), atol=1e-6)


def test_describe_export_is_readable(tmp_path):
    m = _model(2, name="desc")
    res = export_for_serving(m, tmp_path, "desc", class_names=["normal", "pneumonia"], image_size=S, threshold=0.968)
    text = describe_export(res.path)
    assert "classes:     normal, pneumonia" in text and f"image size:  {S} x {S}" in text
    assert "threshold:   0.968" in text and "P(pneumonia) >= 0.968" in text
    assert "serving_default: (image_bytes string [N]) -> (class_index int64 [N], decision string [N], " \
           "probabilities float32 [N, 2])" in text


@pytest.mark.slow
def test_served_decision_equals_evaluate_rule_on_real_images(kermany_subset, tmp_path):
    """Real JPEGs through serving_default: its class_index is evaluate's thresholded prediction."""
    from cxr_tf.cli.evaluate import evaluate_exported
    from cxr_tf.explain import load_images
    from cxr_tf.models import build_model

    data = kermany_subset(6, 3, 3, seed=5)
    files = sorted(str(p) for p in Path(data).rglob("*.jpeg"))
    clf = build_model("tiny_cnn", num_classes=2, image_size=32, head="gap", freeze_until=0,
                      class_names=["normal", "pneumonia"])
    p = clf.predict(load_images(files, 32), verbose=0)
    t = float(np.median(p[:, 1]))  # some images on each side
    res = export_for_serving(clf, tmp_path / "sm", "k", class_names=clf.class_names, image_size=32, threshold=t)
    ex = load_exported(res.path)
    served = ex.serve_bytes([Path(f).read_bytes() for f in files])
    assert 0 < served["class_index"].sum() < len(files)
    np.testing.assert_array_equal(served["class_index"], (served["probabilities"][:, 1] >= t).astype(int))
    metrics = evaluate_exported(str(res.path), str(data), "kermany", str(tmp_path / "eval"), batch_size=8)
    assert metrics["threshold"] == pytest.approx(t) and metrics["decision_rule"] == f"P(pneumonia) >= {t:g}"
    pred = np.load(tmp_path / "eval" / "predictions.npz", allow_pickle=True)
    order = {Path(f).name: i for i, f in enumerate(files)}
    idx = [order[Path(str(n)).name] for n in pred["items"]]
    np.testing.assert_allclose(pred["y_prob"], served["probabilities"][idx], atol=1e-5)
    cm = np.zeros((2, 2), int)
    np.add.at(cm, (pred["y_true"], served["class_index"][idx]), 1)
    assert metrics["confusion_matrix"] == cm.tolist()


@pytest.mark.parametrize("multilabel", [False, True])
def test_served_probabilities_are_temperature_calibrated_as_offline(tmp_path, multilabel):
    from cxr_tf.evaluation.calibration import apply_temperature, decide

    m = _model(3, activation="sigmoid" if multilabel else "softmax")
    x = _batch(seed=2)
    p = _probs(m, x)
    cal = {"method": "temperature", "temperature": 2.5, "fit_on": "val"}
    t = [0.3, 0.4, 0.5]
    res = export_for_serving(m, tmp_path, "cal", class_names=["a", "b", "c"], image_size=S, multilabel=multilabel,
                             class_thresholds=t, calibration=cal)
    out = load_exported(res.path).serve_images(x)
    want = apply_temperature(p, 2.5, multilabel)
    np.testing.assert_allclose(out["probabilities"], want, atol=1e-5)
    np.testing.assert_allclose(out["uncalibrated_probabilities"], p, atol=1e-5)
    # the decision acts on the calibrated probabilities, by the same rule as offline
    key = "decision" if multilabel else "class_index"
    np.testing.assert_array_equal(out[key], decide(want, t, multilabel))
    meta = json.loads((res.path / "assets.extra" / "cxr_tf_metadata.json").read_text())
    assert meta["calibration"]["temperature"] == 2.5
    with pytest.raises(CXRConfigError, match="calibration"):
        export_for_serving(m, tmp_path, "bad", class_names=["a", "b", "c"], image_size=S,
                           calibration={"method": "platt"})
