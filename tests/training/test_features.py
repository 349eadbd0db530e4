"""Cached-feature head training: same features and same head updates as the live path."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from cxr_tf.errors import CXRConfigError
from cxr_tf.models import CXRClassifier
from cxr_tf.training.features import extract_features, feature_model, head_model, train_head_on_features


def _data(n=24, size=32, seed=0):
    """Class 1 images are brighter: learnable from pooled features."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.random((n, size, size, 1), dtype=np.float32) * 0.5 + y[:, None, None, None] * 0.5
    return x.astype(np.float32), np.eye(2, dtype=np.float32)[y]


def _model(freeze_until=-1):
    keras.utils.set_random_seed(1)
    return CXRClassifier("tiny_cnn", num_classes=2, image_size=32, head="gap", freeze_until=freeze_until)


def test_extract_features_equal_live_gap_output():
    x, y = _data()
    model = _model()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(10)  # uneven last batch
    feats, labels = extract_features(model, ds)
    assert feats.shape == (24, 64) and labels.shape == (24, 2)
    np.testing.assert_array_equal(labels, y)
    live = keras.Model(model.input, model.get_layer("head_gap").output)(x, training=True)
    np.testing.assert_allclose(feats, np.asarray(live), rtol=1e-5, atol=1e-6)


def test_head_training_on_features_matches_training_through_frozen_trunk():
    x, y = _data()
    live, cached = _model(), _model()
    cached.set_weights(live.get_weights())
    # One full batch per epoch: the update does not depend on the shuffling order.
    live.compile(optimizer=keras.optimizers.SGD(0.5), loss="categorical_crossentropy")
    live.fit(x, y, batch_size=len(x), epochs=3, shuffle=False, verbose=0)
    feats, labels = extract_features(cached, tf.data.Dataset.from_tensor_slices((x, y)).batch(8))
    hist = train_head_on_features(cached, feats, labels, epochs=3, batch_size=len(x),
                                  optimizer=keras.optimizers.SGD(0.5))
    assert len(hist.history["loss"]) == 3
    for a, b in zip(live.get_layer("predictions").get_weights(), cached.get_layer("predictions").get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # the classifier itself carries the trained head
    np.testing.assert_allclose(live.predict(x, verbose=0), cached.predict(x, verbose=0), rtol=1e-4, atol=1e-5)


def test_head_learns_above_chance_from_cached_features():
    x, y = _data(n=64)
    model = _model()
    feats, labels = extract_features(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(16))
    before = float(np.mean(model.predict(x, verbose=0).argmax(1) == y.argmax(1)))
    train_head_on_features(model, feats, labels, epochs=60, batch_size=16, optimizer=keras.optimizers.Adam(0.05))
    after = float(np.mean(model.predict(x, verbose=0).argmax(1) == y.argmax(1)))
    assert after >= 0.9 and after > before


def test_trainable_trunk_and_bad_inputs_are_refused():
    with pytest.raises(CXRConfigError, match="trainable"):
        feature_model(_model(freeze_until=0))
    model = _model()
    with pytest.raises(CXRConfigError, match="not a layer"):
        head_model(model, "nope")
    with pytest.raises(CXRConfigError, match="label rows"):
        train_head_on_features(model, np.zeros((3, 64)), np.zeros((2, 2)), epochs=1)
    with pytest.raises(CXRConfigError, match="NaN"):
        train_head_on_features(model, np.zeros((2, 64)), np.full((2, 2), np.nan), epochs=1)


def test_head_training_with_a_run_folder_resumes_after_an_interruption(tmp_path):
    """``run=``: history.csv, best checkpoint and resume backup; an interrupted head training
    called again with the same folder continues from its last committed epoch."""
    from cxr_tf.training.resume import read_history_csv, read_state
    from cxr_tf.training.run import RunDir

    x, y = _data(n=32)
    model = _model()
    feats, labels = extract_features(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(16))
    run = RunDir(tmp_path / "head")

    class Crash(keras.callbacks.Callback):  # before the backup commits epoch 2 (the "kill")
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("killed")

    kw = dict(epochs=4, batch_size=8, validation_data=(feats, labels), run=run)
    with pytest.raises(RuntimeError, match="killed"):
        train_head_on_features(model, feats, labels, callbacks=[Crash()], optimizer=keras.optimizers.Adam(0.01), **kw)
    assert read_state(run.backup).epoch == 1
    hist = train_head_on_features(_model(), feats, labels, optimizer=keras.optimizers.Adam(0.01), **kw)  # a fresh process: new model, same folder
    assert len(hist.history["loss"]) == 3  # epochs 2-4 only: epoch 1 came from the backup
    assert len(read_history_csv(run / "history.csv")["loss"]) == 4  # one row per epoch, none twice
    assert (run.checkpoints / "best.weights.h5").is_file() and read_state(run.backup).complete
