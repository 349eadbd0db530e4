"""Multi-worker training: a custom distributed loop over the same Keras model and optimizer.

Why not ``model.fit``: under ``tf.distribute.MultiWorkerMirroredStrategy`` Keras 3's
``fit`` fails (``ValueError: Attempt to convert a value (PerReplica:...) to a Tensor``;
keras-team/keras#20585, FACTS.md). The step here is the standard TF2 recipe:
``strategy.distribute_datasets_from_function`` -> ``strategy.run(step)`` inside a
``tf.function`` -> ``GradientTape`` -> ``optimizer.apply_gradients`` (Keras 3's TF
optimizer all-reduces the gradients) with the per-example loss summed and divided by
the GLOBAL batch, and ``strategy.reduce`` for what is logged.

Any compiled model: the per-example loss is the compiled loss unreduced (averaged over
the non-batch axes), and a :class:`Monitor` (a score of the validation targets and
predictions, its name and its "better" rule) picks the best epoch: the classifier's
``val_auc`` by default, validation SSIM for the SSL autoencoder (``cxr_tf.ssl.pretrain``),
the clean-label mean AUC for the noisy-label methods (``chexpert_noisy``). A folder inside
the run (a sweep cell) has its checkpoint in the chief's same sub-folder.

What a classifier run gives, the same as the ``model.fit`` path: ``history.csv`` (one row per
epoch: loss, accuracy, val_loss, val_accuracy, val_auc, learning_rate), TensorBoard
scalars (``epoch_*``), the validation confusion matrix per epoch, a grid of training
inputs, ``checkpoints/best.weights.h5`` (best ``val_auc``), early stopping, and resume:
a ``tf.train.CheckpointManager`` in ``backup/`` holds the model, the optimizer, the
epoch, the best value and the patience counter; a restarted job (all workers) restores
it and skips the input stream by the batches already consumed.

Exactness. Every worker builds the same seeded global-batch pipeline and keeps its own
slice of each global batch (``input_pipeline_id``), so the union of the replicas'
batches at step *k* is exactly the global batch *k* of a one-worker run. BatchNorm
layers are switched to ``synchronized=True`` while training (statistics over the global
batch, as with one worker). The loss curve then equals a one-worker run with the same
global batch up to float summation order (``tests/reliability/test_multi_worker.py``
measures it). The price: each worker decodes and augments the whole global batch
(sharding the file list per worker would avoid it, but changes which images meet in
a batch, so a run would no longer equal a one-worker run; not done here).

Who writes what (TF's recommendation): only the chief (task ``worker:0``, or ``chief``)
writes the run folder, TensorBoard, the best checkpoint and the export. TF requires
every worker to call the ``tf.train`` checkpoint save; the others save into a temporary
folder deleted at the end. Non-chief workers keep their config, split and history in
``<run-dir>/.workers/<task>/`` and stop after training (no evaluation, no export).
Every worker must build the same dataset and split: same data, same ``--seed``, and,
for DICOM folders (patients from the PatientID tag, :mod:`cxr_tf.datasets.privacy`), the same
``CXR_TF_PATIENT_SALT``.

Running on a multi-host GPU cluster
-----------------------------------
Start the same command on every host, with the same ``--run-dir`` on storage all
hosts share (NFS, GCS: restoring reads the chief's checkpoint), and a ``TF_CONFIG``
that differs only in ``task.index``. ``--batch-size`` is the GLOBAL batch (per GPU:
batch / total GPUs); each host mirrors over its local GPUs. Two hosts with 4 GPUs
each::

    # host gpu-node-0 (the chief)
    export TF_CONFIG='{"cluster": {"worker": ["gpu-node-0:12345", "gpu-node-1:12345"]},
                       "task": {"type": "worker", "index": 0}}'
    python -m cxr_tf.experiments.pneumonia_freeze --strategy multi_worker \\
        --data-dir /shared/chest_xray --run-dir /shared/runs/pneumonia_mw --batch-size 128

    # host gpu-node-1
    export TF_CONFIG='{"cluster": {"worker": ["gpu-node-0:12345", "gpu-node-1:12345"]},
                       "task": {"type": "worker", "index": 1}}'
    python -m cxr_tf.experiments.pneumonia_freeze --strategy multi_worker \\
        --data-dir /shared/chest_xray --run-dir /shared/runs/pneumonia_mw --batch-size 128

The port must be open between hosts; all workers must be started (the first
collective waits for every one). If a worker dies the others block in a collective:
stop the job and start every worker again with the same command; training resumes
from the last completed epoch. NCCL is used for GPU all-reduce when available
(``tf.distribute.experimental.CommunicationOptions(implementation=NCCL)`` is TF's
choice for GPUs; the default ``AUTO`` picks it).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cxr_tf.errors import CXRConfigError

logger = logging.getLogger("cxr_tf.training")


# --------------------------------------------------------------------------- cluster
def task_info() -> tuple[str, int, int]:
    """``(task_type, task_index, num_workers)`` from ``TF_CONFIG`` (``("worker", 0, 1)`` without it)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return "worker", 0, 1
    try:
        tc = json.loads(raw)
        cluster = tc.get("cluster", {})
        task = tc.get("task", {})
        n = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
        return str(task.get("type", "worker")), int(task.get("index", 0)), max(n, 1)
    except (ValueError, TypeError, AttributeError) as e:
        raise CXRConfigError(f"TF_CONFIG is not valid JSON with cluster/task: {e}") from None


def is_chief() -> bool:
    """The chief writes: task type ``chief``, or ``worker`` 0 when the cluster has no chief."""
    t, i, _ = task_info()
    if t == "chief":
        return True
    raw = json.loads(os.environ.get("TF_CONFIG") or "{}")
    has_chief = bool(raw.get("cluster", {}).get("chief"))
    return t == "worker" and i == 0 and not has_chief


def configure_worker(cfg) -> None:
    """Give a non-chief worker its own run folder and no export (only the chief writes).

    Called by :func:`cxr_tf.training.flow.setup_runtime` for ``--strategy multi_worker``.
    The chief's run folder is kept in ``cfg.__dict__['_chief_run_dir']`` (not a config field).
    """
    if not cfg.run_dir:
        raise CXRConfigError("--strategy multi_worker needs --run-dir, the same folder on every worker "
                             "(on storage all hosts share)")
    cfg.__dict__["_chief_run_dir"] = str(cfg.run_dir)
    if not is_chief():
        t, i, _ = task_info()
        cfg.run_dir = str(Path(cfg.run_dir) / ".workers" / f"{t}-{i}")
        if hasattr(cfg, "export"):
            cfg.export = False


def chief_run_dir(cfg, run) -> Path:
    """The chief's folder for this worker's ``run``: the run folder itself, or for a folder
    inside it (a sweep cell, ``<run>/cells/<name>``) the same sub-folder of the chief's run."""
    chief = cfg.__dict__.get("_chief_run_dir")
    if not chief:
        return Path(str(run))
    own = Path(str(cfg.run_dir))
    try:
        rel = Path(str(run)).relative_to(own)
    except ValueError:
        return Path(chief)
    return Path(chief) / rel


# --------------------------------------------------------------------------- monitor
@dataclasses.dataclass
class Monitor:
    """What selects the best epoch (and drives early stopping) in :func:`fit_distributed`.

    Attributes:
        name: the history column (``val_auc``, ``val_ssim``, ...).
        fn: ``fn(y_val, prob) -> float`` on the whole validation set (numpy arrays);
            ``None``: the classifier's AUC (what ``model.fit`` logs as ``val_auc``).
        better: ``better(current, best) -> bool``; default: finite and greater.
        initial: the best value before the first epoch.
    """

    name: str = "val_auc"
    fn: Callable | None = None
    better: Callable | None = None
    initial: float = -np.inf

    def improved(self, current: float, best: float) -> bool:
        if self.better is not None:
            return bool(self.better(current, best))
        return bool(np.isfinite(current) and current > best)


# --------------------------------------------------------------------------- helpers
def _per_example_loss(model, label_smoothing: float):
    """The compiled loss, unreduced (one value per example; any other axes averaged)."""
    import keras

    loss = getattr(model, "loss", None)
    if isinstance(loss, keras.losses.Loss):
        conf = dict(loss.get_config(), reduction=None)
        fn = type(loss).from_config(conf)

        def per_example(y, p):
            v = fn(y, p)
            return keras.ops.mean(v, axis=tuple(range(1, len(v.shape)))) if len(v.shape) > 1 else v

        return per_example
    if model.multilabel:
        return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing, reduction=None)
    return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing, reduction=None)


def _set_bn_sync(model, on: bool) -> list:
    import keras

    changed = []
    layers = model._flatten_layers(include_self=False, recursive=True) if hasattr(model, "_flatten_layers") \
        else model.layers
    for layer in layers:
        if isinstance(layer, keras.layers.BatchNormalization) and layer.synchronized != on:
            layer.synchronized = on
            changed.append(layer)
    return changed


def _learning_rate(optimizer) -> float:
    import keras

    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def _auc(y_true: np.ndarray, prob: np.ndarray, multilabel: bool) -> float:
    import keras

    m = keras.metrics.AUC(multi_label=multilabel)  # what model.fit logs as val_auc
    m.update_state(y_true, prob)
    return float(m.result())


class _History:
    """``history.csv`` of this worker's run folder, one row per epoch (CSVLogger's layout)."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def append(self, epoch: int, logs: dict) -> None:
        if not self.enabled:
            return
        keys = sorted(logs)
        new = not self.path.exists() or self.path.stat().st_size == 0
        with open(self.path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["epoch", *keys])
            w.writerow([epoch, *[logs[k] for k in keys]])
            f.flush()
            os.fsync(f.fileno())


# --------------------------------------------------------------------------- the loop
def fit_distributed(cfg, model, train_ds, pipes, run, strategy=None, *, monitor: Monitor | None = None,
                    classifier: bool = True, epochs: int | None = None, patience: int | None = None,
                    val_loss: bool = True, best_on_every_worker: bool = False, class_weights: bool = True):
    """Train ``model`` (built and compiled under ``strategy.scope()``) with a custom loop.

    Args:
        cfg: the experiment config (epochs, batch_size, early_stopping, balance, ...).
        model: a compiled Keras model (its optimizer and loss are used; the loss unreduced,
            averaged over the non-batch axes, is the per-example loss).
        train_ds: the training :class:`~cxr_tf.datasets.CXRDataset` (class weights, sample
            images; classifiers only; may be ``None`` otherwise).
        pipes: ``(train, val, test)`` pipelines (objects with ``dataset``, ``steps`` /
            ``num_examples``); ``train.dataset`` yields GLOBAL batches ``(x, y)``.
        run: this worker's :class:`~cxr_tf.training.run.RunDir` (a run folder or a sub-folder
            of it: the chief's counterpart holds the checkpoint, :func:`chief_run_dir`).
        strategy: default ``model.distribute_strategy``.
        monitor: what picks ``checkpoints/best.weights.h5``; default the classifier's ``val_auc``.
        classifier: log accuracy, the confusion matrix and sample inputs (a CXRClassifier);
            ``False`` for any other model (an autoencoder, packed noisy-label targets).
        epochs, patience: default ``cfg.epochs`` and ``cfg.early_stopping``.
        val_loss: log the compiled loss on the validation set (off when the validation
            targets are not what the loss takes, e.g. clean labels for a masked loss).
        best_on_every_worker: every worker keeps the best weights in its own run folder
            (the experiment continues from them on every worker, e.g. a second phase).
        class_weights: weight the loss by class under ``--balance class_weight`` (as
            ``flow.fit`` does); ``False`` for an experiment whose ``model.fit`` never did.

    Returns:
        ``(history dict, seconds)`` like :func:`cxr_tf.training.flow.fit`.
    """
    import tensorflow as tf

    from cxr_tf.data import class_weights as _class_weights
    from cxr_tf.training.resume import read_history_csv, truncate_history_csv

    strategy = strategy or model.distribute_strategy
    train, val, _ = pipes
    monitor = monitor or Monitor()
    epochs = int(cfg.epochs if epochs is None else epochs)
    chief = is_chief()
    chief_run = chief_run_dir(cfg, run)
    n_rep = int(strategy.num_replicas_in_sync)
    global_batch = int(cfg.batch_size)
    if global_batch % n_rep:
        raise CXRConfigError(f"--batch-size {global_batch} (the global batch) must be divisible by the "
                             f"{n_rep} replicas in sync")
    per_replica = global_batch // n_rep
    steps = int(train.steps)
    optimizer = model.optimizer
    loss_fn = _per_example_loss(model, getattr(cfg, "label_smoothing", 0.0))
    cw = None
    if classifier and class_weights and getattr(cfg, "balance", None) == "class_weight" and not model.multilabel:
        w = _class_weights(train_ds)
        cw = tf.constant([w[i] for i in range(len(w))], tf.float32)

    # ---- state: model, optimizer, epoch, best val_auc, patience counter (one commit point)
    with strategy.scope():
        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        best_var = tf.Variable(float(monitor.initial), dtype=tf.float64, trainable=False, name="best_val_auc")
        wait_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="patience_wait")
        if not optimizer.built:
            optimizer.build(model.trainable_variables)
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_var, best=best_var, wait=wait_var)
    ckpt_dir = chief_run / "backup"
    restored = tf.train.latest_checkpoint(str(ckpt_dir))
    if restored:
        ckpt.restore(restored).expect_partial()
    if chief:
        write_dir = ckpt_dir
    else:  # TF wants every worker to save: into its own folder (.workers/<task>/backup), deleted after
        write_dir = Path(run.backup)
    manager = tf.train.CheckpointManager(ckpt, str(write_dir), max_to_keep=1)
    start = int(epoch_var.numpy())

    # Every worker logs into its own run folder (a non-chief's is <run-dir>/.workers/<task>).
    history = _History(run / "history.csv", True)
    truncate_history_csv(run / "history.csv", start)
    if restored:
        logger.info("resuming %s: %s of %s epochs done (%s)", chief_run, start, epochs, restored)

    # ---- input: every worker slices its part out of the same global batches
    base = train.dataset.skip(start * steps) if start else train.dataset

    def dataset_fn(ctx: tf.distribute.InputContext):
        n_in, idx = ctx.num_input_pipelines, ctx.input_pipeline_id
        width = global_batch // n_in
        lo = idx * width
        d = base.map(lambda x, y: (x[lo:lo + width], y[lo:lo + width]))
        if width != per_replica:  # several local replicas: consecutive per-replica batches
            d = d.unbatch().batch(per_replica, drop_remainder=True)
        return d

    dist = strategy.distribute_datasets_from_function(dataset_fn)
    iterator = iter(dist)

    synced = _set_bn_sync(model, True)

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            prob = model(x, training=True)
            per_ex = loss_fn(y, prob)
            if cw is not None:
                per_ex = per_ex * tf.gather(cw, tf.argmax(y, axis=-1))
            loss = tf.reduce_sum(per_ex) / global_batch
            if model.losses:
                loss += tf.add_n(model.losses) / n_rep
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        if not classifier:
            return loss, tf.constant(0.0)
        if model.multilabel:
            hit = tf.reduce_mean(tf.cast(tf.equal(prob > 0.5, y > 0.5), tf.float32), axis=-1)
        else:
            hit = tf.cast(tf.equal(tf.argmax(prob, -1), tf.argmax(y, -1)), tf.float32)
        return loss, tf.reduce_sum(hit)

    @tf.function
    def train_step(it):
        loss, hits = strategy.run(replica_step, args=next(it))
        return (strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
                strategy.reduce(tf.distribute.ReduceOp.SUM, hits, axis=None))

    @tf.function
    def infer(x):
        return model(x, training=False)

    y_val = np.concatenate([np.asarray(y) for _, y in val.dataset]) if val.num_examples else None
    writers = {}
    if chief:
        writers = {k: tf.summary.create_file_writer(str(run.tensorboard / k)) for k in ("train", "validation")}
    if chief and classifier and train_ds is not None:
        # From a separate pipeline object: iterating train.dataset itself would advance the
        # shared reshuffle seed generator and change the batches training sees.
        from cxr_tf.training.inputs import train_pipeline

        _log_sample_inputs(train_pipeline(cfg, train_ds).dataset, writers["train"], model.class_names)

    t0 = time.time()
    patience = int((getattr(cfg, "early_stopping", 0) if patience is None else patience) or 0)
    try:
        for epoch in range(start, epochs):
            total_loss, total_hits = 0.0, 0.0
            for _ in range(steps):
                loss, hits = train_step(iterator)
                total_loss += float(loss)
                total_hits += float(hits)
            logs = {"loss": total_loss / steps, "learning_rate": _learning_rate(optimizer)}
            if classifier:
                logs["accuracy"] = total_hits / (steps * global_batch)
            if y_val is not None:
                prob = np.concatenate([infer(x).numpy() for x, _ in val.dataset])
                if val_loss:
                    vl = loss_fn(tf.constant(y_val), tf.constant(prob)).numpy()
                    logs["val_loss"] = float(np.mean(vl))
                if classifier:
                    if model.multilabel:
                        logs["val_accuracy"] = float(np.mean((prob > 0.5) == (y_val > 0.5)))
                    else:
                        logs["val_accuracy"] = float(np.mean(prob.argmax(1) == y_val.argmax(1)))
                logs[monitor.name] = (_auc(y_val, prob, model.multilabel) if monitor.fn is None
                                      else float(monitor.fn(y_val, prob)))
            logger.info(f"epoch {epoch + 1}/{epochs} ({n_rep} replicas): "
                        + " - ".join(f"{k}: {v:.4f}" for k, v in sorted(logs.items())))

            # best checkpoint (chief) and early stopping: the same decisions on every worker
            current = logs.get(monitor.name, float("nan"))
            improved = monitor.improved(current, float(best_var.numpy()))
            if improved:
                best_var.assign(current)
                wait_var.assign(0)
                if best_on_every_worker and not chief:
                    from cxr_tf.training.resume import save_weights_atomic

                    save_weights_atomic(model, run.checkpoints / "best.weights.h5", optimizer=False)
                if chief:
                    from cxr_tf.training.resume import save_weights_atomic

                    save_weights_atomic(model, run.checkpoints / "best.weights.h5", optimizer=False)
            else:
                wait_var.assign_add(1)
            stop = bool(patience and int(wait_var.numpy()) >= patience and epoch > 0)
            stop = _any_worker(strategy, stop)  # never let workers disagree (a hang)

            history.append(epoch, logs)
            if chief:
                _log_epoch(writers, epoch, logs, y_val, prob if y_val is not None and classifier else None, model)
            epoch_var.assign(epoch + 1)
            manager.save(checkpoint_number=epoch + 1)  # the commit point of this epoch
            if stop:
                logger.info("early stopping after epoch %d", epoch + 1)
                break
    finally:
        for layer in synced:
            layer.synchronized = False
        for w in writers.values():
            w.close()
        if not chief:
            shutil.rmtree(write_dir, ignore_errors=True)
    _detach_strategy(model)
    seconds = time.time() - t0
    hist = read_history_csv(run / "history.csv")
    return hist, seconds


def _any_worker(strategy, flag: bool) -> bool:
    """True when ``flag`` is true on any worker (an all-reduce SUM): a decision all share."""
    import tensorflow as tf

    value = strategy.run(lambda: tf.constant(1.0 if flag else 0.0))
    return bool(float(strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)) > 0.5)


def _detach_strategy(model) -> None:
    """After the custom loop, Keras' predict/evaluate must not run under the
    multi-worker strategy (they would hit the same Keras 3 failure as fit): each
    worker predicts locally with the trained (identical) variables."""
    if getattr(model, "_distribute_strategy", None) is not None:
        model._distribute_strategy = None
    for attr in ("predict_function", "test_function", "train_function"):
        if hasattr(model, attr):
            setattr(model, attr, None)


def _log_sample_inputs(dataset, writer, class_names) -> None:
    import tensorflow as tf

    from cxr_tf.training.callbacks import _grid

    x, y = next(iter(dataset))
    x, y = np.asarray(x)[:16], np.nan_to_num(np.asarray(y)[:16])
    with writer.as_default():
        tf.summary.image("sample_inputs", _grid(x)[None], step=0,
                         description="training inputs after augmentation; labels: "
                         + ", ".join(class_names[i] for i in y.argmax(1)))
    writer.flush()


def _log_epoch(writers, epoch, logs, y_val, prob, model) -> None:
    import tensorflow as tf

    with writers["train"].as_default():
        for k, v in logs.items():
            if not k.startswith("val_"):
                tf.summary.scalar(f"epoch_{k}", v, step=epoch)
    with writers["validation"].as_default():
        for k, v in logs.items():
            if k.startswith("val_"):
                tf.summary.scalar(f"epoch_{k[4:]}", v, step=epoch)
        if prob is not None and not getattr(model, "multilabel", True):
            from sklearn.metrics import confusion_matrix

            from cxr_tf.evaluation import confusion_matrix_image

            cm = confusion_matrix(y_val.argmax(1), prob.argmax(1), labels=range(len(model.class_names)))
            img = confusion_matrix_image(cm, model.class_names, title=f"validation, epoch {epoch + 1}")
            tf.summary.image("confusion_matrix", img[None, ..., :3], step=epoch)
    for w in writers.values():
        w.flush()
