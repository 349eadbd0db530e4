"""Head-only training on cached trunk features.

When everything below the head is frozen (SPEC S3 / seed 003: "only the last layer
is fine-tuned", 100 epochs), every epoch pushes the same images through the same
frozen trunk. Running the trunk once, keeping its pooled features, and training the
head on those arrays gives the same head updates at a fraction of the cost
(``benchmarks/cached_features.py`` measures it).

The head trained here is the classifier's own head: :func:`head_model` is a Keras
functional model over the classifier's layers after ``feature_layer``, sharing
their weights, so after :func:`train_head_on_features` the full classifier is
ready for evaluation and export as it is.

Exact only when nothing before ``feature_layer`` changes between epochs: no
trainable weights there (frozen BatchNorm runs in inference mode) and no random
layers (dropout, noise, augmentation). :func:`extract_features` checks both.
Online augmentation is therefore incompatible; augment offline (seed 003's x5
oversampling is offline) and extract features of the augmented copies.
"""
from __future__ import annotations

import keras
import numpy as np

from cxr_tf.errors import CXRConfigError

#: The pooled trunk output of :class:`~cxr_tf.models.CXRClassifier`.
DEFAULT_FEATURE_LAYER = "head_gap"
_RANDOM_LAYERS = (keras.layers.Dropout, keras.layers.SpatialDropout2D, keras.layers.GaussianNoise,
                  keras.layers.GaussianDropout, keras.layers.AlphaDropout)


def feature_model(model: keras.Model, feature_layer: str = DEFAULT_FEATURE_LAYER) -> keras.Model:
    """``model.input -> feature_layer output``, checked to be frozen and deterministic.

    Raises:
        CXRConfigError: the layer does not exist, or a layer feeding it has trainable
            weights or is random (cached features would then differ from live ones).
    """
    try:
        out = model.get_layer(feature_layer).output
    except ValueError as e:
        raise CXRConfigError(f"feature_layer {feature_layer!r} is not a layer of {model.name}") from e
    fm = keras.Model(model.inputs[0] if len(model.inputs) == 1 else model.inputs, out, name=f"{model.name}_features")
    for layer in fm.layers:
        if layer.trainable_weights:
            raise CXRConfigError(
                f"layer {layer.name!r} before {feature_layer!r} is trainable: cached features would go stale "
                "(freeze the trunk, e.g. CXRClassifier(freeze_until=-1))")
        if isinstance(layer, _RANDOM_LAYERS):
            raise CXRConfigError(f"layer {layer.name!r} before {feature_layer!r} is random ({type(layer).__name__}): "
                                 "cached features would not match training-mode outputs")
    return fm


def head_model(model: keras.Model, feature_layer: str = DEFAULT_FEATURE_LAYER) -> keras.Model:
    """``feature_layer output -> model.output`` over the classifier's own head layers (shared weights)."""
    try:
        out = model.get_layer(feature_layer).output
    except ValueError as e:
        raise CXRConfigError(f"feature_layer {feature_layer!r} is not a layer of {model.name}") from e
    return keras.Model(out, model.outputs[0], name=f"{model.name}_head")


def extract_features(model: keras.Model, dataset, feature_layer: str = DEFAULT_FEATURE_LAYER
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Run the frozen trunk once over ``dataset``.

    Args:
        model: the classifier (everything before ``feature_layer`` frozen).
        dataset: finite iterable of ``(images, labels)`` batches, e.g.
            ``build_pipeline(ds, size, batch, training=False).dataset``.
        feature_layer: where the trunk ends (default the classifier's GAP layer).

    Returns:
        ``(features (N, D) float32, labels (N, C) float32)`` in dataset order.
    """
    fm = feature_model(model, feature_layer)
    feats, labels = [], []
    for x, y in dataset:
        feats.append(np.asarray(fm.predict_on_batch(x), np.float32))
        labels.append(np.asarray(y, np.float32))
    if not feats:
        raise CXRConfigError("extract_features: the dataset yielded no batches")
    return np.concatenate(feats), np.concatenate(labels)


def train_head_on_features(
    model: keras.Model,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    batch_size: int = 32,
    feature_layer: str = DEFAULT_FEATURE_LAYER,
    optimizer: keras.optimizers.Optimizer | None = None,
    loss: str | keras.losses.Loss | None = None,
    validation_data: tuple[np.ndarray, np.ndarray] | None = None,
    callbacks: list | None = None,
    verbose: int = 0,
    run=None,
) -> keras.callbacks.History:
    """Train the classifier's head on cached features; ``model``'s head weights are updated.

    Args:
        model: the classifier whose head is trained.
        features, labels: from :func:`extract_features`.
        epochs, batch_size: as for ``fit`` (shuffled every epoch).
        feature_layer: as given to :func:`extract_features`.
        optimizer: default Adam 1e-4 (seed 003).
        loss: default categorical (softmax) or binary (sigmoid outputs) cross-entropy.
        validation_data: cached validation features and labels.
        callbacks: Keras callbacks for ``fit``.
        verbose: ``fit`` verbosity.
        run: a folder (RunDir) to make the training resumable (:func:`resumable_callbacks`):
            history.csv, best checkpoint by ``val_auc`` (with validation data), resume backup.
    """
    features = np.asarray(features, np.float32)
    labels = np.asarray(labels, np.float32)
    if len(features) != len(labels):
        raise CXRConfigError(f"{len(features)} feature rows but {len(labels)} label rows")
    if not np.isfinite(labels).all():
        raise CXRConfigError("labels contain NaN: mask unknown labels before head training")
    head = head_model(model, feature_layer)
    if loss is None:
        sigmoid = getattr(model, "multilabel", False)
        loss = keras.losses.BinaryCrossentropy() if sigmoid else keras.losses.CategoricalCrossentropy()
    metrics = ["accuracy"] + ([keras.metrics.AUC(name="auc")] if run is not None else [])
    head.compile(optimizer=optimizer or keras.optimizers.Adam(1e-4), loss=loss, metrics=metrics)
    if run is not None:
        callbacks = list(callbacks or []) + resumable_callbacks(run, "val_auc" if validation_data is not None
                                                                else None)
    return head.fit(features, labels, batch_size=batch_size, epochs=epochs, shuffle=True,
                    validation_data=validation_data, callbacks=callbacks, verbose=verbose)


def resumable_callbacks(run, monitor: str | None = "val_auc") -> list:
    """The shared trainer's resume for a ``fit`` on in-memory arrays (a head on cached features).

    ``run``: the training's folder (a :class:`~cxr_tf.training.run.RunDir`, e.g. a sweep
    cell). Returns ``[best checkpoint (when monitor), CSVLogger, ResumableBackup]`` to put
    LAST in ``fit``'s callbacks: ``<run>/history.csv`` one row per epoch,
    ``<run>/checkpoints/best.weights.h5`` (best ``monitor``), ``<run>/backup/`` committed
    after every epoch. Called again with the same folder after a kill, it cuts
    ``history.csv`` to the committed epochs and ``fit`` restarts from the last one
    (weights, optimizer, best value restored; an in-memory ``shuffle`` then draws a new
    order for the remaining epochs, so the resumed head is equivalent, not bit-identical).
    """
    import logging

    from cxr_tf.training import resume

    state = resume.read_state(run.backup)
    resume.truncate_history_csv(run / "history.csv", state.epoch if state else 0)
    if state is not None:
        logging.getLogger("cxr_tf.training").info(
            f"resuming {run}: {state.epoch} epochs done" + (" (training had finished)" if state.complete else ""))
    cbs, track = [], []
    if monitor:
        track.append(resume.AtomicModelCheckpoint(str(run.checkpoints / "best.weights.h5"), monitor=monitor,
                                                  mode="max", save_best_only=True, verbose=0))
        cbs += track
    cbs.append(keras.callbacks.CSVLogger(str(run / "history.csv"), append=True))
    cbs.append(resume.ResumableBackup(run.backup, track=track))
    return cbs
