"""Callbacks: TensorBoard extras (learning rate, sample inputs, confusion matrix) and
the standard set every cxr_tf training run uses."""
from __future__ import annotations

import numpy as np
import keras
import tensorflow as tf

from cxr_tf.evaluation import confusion_matrix_image


class LearningRateLogger(keras.callbacks.Callback):
    """Puts the current learning rate into the epoch logs (TensorBoard and CSV see it)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and "learning_rate" not in logs:
            lr = self.model.optimizer.learning_rate
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(lr))


def _grid(images: np.ndarray, cols: int = 8) -> np.ndarray:
    n, h, w, c = images.shape
    rows = int(np.ceil(n / cols))
    out = np.zeros((rows * h, cols * w, c), images.dtype)
    for i in range(n):
        r, k = divmod(i, cols)
        out[r * h : (r + 1) * h, k * w : (k + 1) * w] = images[i]
    return out


class SampleImagesLogger(keras.callbacks.Callback):
    """Writes a grid of real (augmented) training inputs to TensorBoard at the start.

    What the model sees is the most useful debugging picture there is: wrong
    scaling, black images or absurd augmentation show up here first.
    """

    def __init__(self, dataset: tf.data.Dataset, log_dir: str, class_names: list[str], max_images: int = 16):
        super().__init__()
        self.dataset, self.log_dir, self.class_names, self.max_images = dataset, str(log_dir), class_names, max_images

    def on_train_begin(self, logs=None):
        x, y = next(iter(self.dataset))
        x = np.asarray(x)[: self.max_images]
        y = np.nan_to_num(np.asarray(y)[: self.max_images])
        names = [self.class_names[i] for i in y.argmax(1)]
        writer = tf.summary.create_file_writer(self.log_dir + "/train")
        with writer.as_default():
            tf.summary.image("sample_inputs", _grid(x)[None], step=0,
                             description="training inputs after augmentation; labels: " + ", ".join(names))
        writer.flush()


class ConfusionMatrixLogger(keras.callbacks.Callback):
    """Predicts the validation set each ``every`` epochs and logs the confusion matrix image."""

    def __init__(self, dataset: tf.data.Dataset, y_true: np.ndarray, log_dir: str, class_names: list[str], every: int = 1):
        super().__init__()
        self.dataset, self.y_true = dataset, np.asarray(y_true)
        self.log_dir, self.class_names, self.every = str(log_dir), class_names, every
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        from sklearn.metrics import confusion_matrix

        prob = self.model.predict(self.dataset, verbose=0)
        cm = confusion_matrix(self.y_true, prob.argmax(1), labels=range(len(self.class_names)))
        img = confusion_matrix_image(cm, self.class_names, title=f"validation, epoch {epoch + 1}")
        if self._writer is None:  # one event file for the whole run
            self._writer = tf.summary.create_file_writer(self.log_dir + "/validation")
        with self._writer.as_default():
            tf.summary.image("confusion_matrix", img[None, ..., :3], step=epoch)
        self._writer.flush()


def standard_callbacks(run, monitor: str = "val_auc", patience: int = 5) -> list[keras.callbacks.Callback]:
    """TensorBoard, best checkpoint, CSV log, early stopping and the resume backup (a killed run resumes)."""
    # Resume (cxr_tf.training.resume): the backup is LAST so it commits an epoch after the
    # checkpoint, CSV row and early-stopping state of that epoch, and restores their state.
    from cxr_tf.training.resume import AtomicModelCheckpoint, ResumableBackup

    ckpt = AtomicModelCheckpoint(str(run.checkpoints / "best.weights.h5"), monitor=monitor, mode="max",
                                 save_best_only=True, verbose=0)
    cbs = [
        LearningRateLogger(),
        keras.callbacks.TensorBoard(log_dir=str(run.tensorboard), update_freq="epoch", write_graph=False, profile_batch=0),
        ckpt,
        keras.callbacks.CSVLogger(str(run / "history.csv"), append=True),
    ]
    track = [ckpt]
    if patience:
        cbs.append(keras.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=patience, verbose=1))
        track.append(cbs[-1])
    cbs.append(ResumableBackup(run.backup, track=track))
    return cbs
