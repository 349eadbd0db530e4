"""Fault tolerance for ``model.fit``: a killed run resumes where its last finished epoch left it.

Keras' own ``BackupAndRestore`` restores the weights, the optimizer and the epoch
number, but a resumed run is not the run that would have happened without the kill:

* the input stream restarts at its first batch (the shuffle order and the
  augmentation seeds of epoch 1 are replayed in epoch ``k + 1``);
* ``ModelCheckpoint`` forgets its best value, so the first resumed epoch always
  overwrites ``best.weights.h5`` even when it is worse than the best so far;
  ``EarlyStopping`` forgets its patience counter;
* ``CSVLogger(append=True)`` keeps rows of an epoch that is then redone, and the
  ``History`` returned by ``fit`` only holds the resumed epochs;
* the weights file and the epoch number are written one after the other (a kill in
  between pairs epoch ``k`` with the weights of ``k + 1``) and the weights file is
  written in place (a kill during the write leaves a corrupt HDF5 file);
* the backup is deleted when ``fit`` returns, so a run killed during evaluation or
  export trains again from scratch.

:class:`ResumableBackup` fixes these: one ``backup/state.json``, replaced atomically
after the epoch's weights file is complete, is the commit point. It records the epoch,
the weights file and the state of the other callbacks (checkpoint best value, early
stopping counters); :func:`prepare_resume` truncates ``history.csv`` to the committed
epochs and skips the input stream forward by the batches already consumed, so a
resumed run sees exactly the batches the uninterrupted run would have. After the last
epoch the state is marked complete (a later restart goes straight to evaluation);
:func:`finish` removes the backup once the run has written ``metrics.json``.

At most one epoch is redone (the one the kill interrupted). With the same seed, the
resumed run's final metrics equal the uninterrupted run's (see
``tests/reliability/test_resume.py`` for what is measured).
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import keras

from cxr_tf.io.atomic import _fsync_dir, _optimizer_to_skip, save_weights_atomic, write_json_atomic  # noqa: F401

STATE_FILE = "state.json"
_WEIGHTS_PATTERN = "epoch-{:04d}.weights.h5"

#: Attributes of stock Keras callbacks that must survive a restart.
_CALLBACK_STATE = {
    "ModelCheckpoint": ("best",),
    "EarlyStopping": ("wait", "best", "best_epoch", "stopped_epoch"),
}


# --------------------------------------------------------------------------- files
def load_model_weights(model: keras.Model, path: str | os.PathLike) -> None:
    """Load a weights-only checkpoint (``checkpoints/best.weights.h5``) into ``model``,
    leaving its optimizer as it is (no "skipping variable loading for optimizer" warning)."""
    skip = _optimizer_to_skip(model)
    if not skip:
        model.load_weights(str(path))
        return
    from keras.src.saving import saving_lib

    saving_lib.load_weights_only(model, str(path), objects_to_skip=skip)


# --------------------------------------------------------------------------- state
@dataclass
class ResumeState:
    """What ``backup/state.json`` records.

    Attributes:
        epoch: epochs completed (the next epoch to run, 0-based).
        complete: training has finished (all epochs, or early stopping).
        weights: file name (inside the backup folder) of the weights after ``epoch`` epochs.
        callbacks: saved attributes of the tracked callbacks, by name.
    """

    epoch: int = 0
    complete: bool = False
    weights: str | None = None
    callbacks: dict = field(default_factory=dict)


def read_state(backup_dir: str | os.PathLike) -> ResumeState | None:
    """The committed state of a backup folder, or ``None`` when there is none (fresh run)."""
    p = Path(backup_dir) / STATE_FILE
    if not p.is_file():
        return None
    try:
        d = json.loads(p.read_text())
        st = ResumeState(int(d["epoch"]), bool(d.get("complete", False)), d.get("weights"), d.get("callbacks") or {})
    except (ValueError, KeyError, TypeError) as e:
        from cxr_tf.errors import CXRInputError

        raise CXRInputError(p, f"unreadable resume state ({e}); delete the backup folder to start over") from None
    if st.weights and not (Path(backup_dir) / st.weights).is_file():
        from cxr_tf.errors import CXRInputError

        raise CXRInputError(p, f"resume state names {st.weights}, which is missing; delete the backup folder "
                               "to start over")
    return st


def restore_weights(model: keras.Model, backup_dir: str | os.PathLike, state: ResumeState) -> None:
    """Load the backed-up weights and optimizer state into ``model``."""
    if not state.weights:
        return
    opt = getattr(model, "optimizer", None)
    if opt is not None and not opt.built:
        opt.build(model.trainable_variables)
    model.load_weights(str(Path(backup_dir) / state.weights))


def _jsonable(v):
    if v is None or isinstance(v, (bool, int, str)):
        return v
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else ("inf" if f > 0 else "-inf" if f < 0 else "nan")


def _from_json(v):
    return float(v) if v in ("inf", "-inf", "nan") else v


def _callback_key(cb) -> str | None:
    for cls in type(cb).__mro__:
        if cls.__name__ in _CALLBACK_STATE:
            return cls.__name__
    return None


class ResumableBackup(keras.callbacks.Callback):
    """Back up the full training state each epoch and restore it on restart.

    Put it LAST in the callback list: it restores the other callbacks' state after
    their own ``on_train_begin`` reset, and commits an epoch only after they have
    all handled it (checkpoint written, CSV row written, early-stopping counters).

    Args:
        backup_dir: a folder used only by this callback.
        track: callbacks whose state must survive a restart (``ModelCheckpoint``,
            ``EarlyStopping`` and subclasses).
        keep: weight files kept (the committed one plus ``keep - 1`` older).
    """

    def __init__(self, backup_dir: str | os.PathLike, track=(), keep: int = 1):
        super().__init__()
        self.backup_dir = Path(backup_dir)
        self.track = [cb for cb in track if _callback_key(cb)]
        self.keep = max(1, int(keep))
        self.resumed_from: int | None = None

    # -- helpers
    def _tracked_state(self) -> dict:
        out = {}
        for i, cb in enumerate(self.track):
            key = _callback_key(cb)
            out[f"{i}:{key}"] = {a: _jsonable(getattr(cb, a, None)) for a in _CALLBACK_STATE[key]}
        return out

    def _restore_tracked(self, saved: dict) -> None:
        for i, cb in enumerate(self.track):
            values = saved.get(f"{i}:{_callback_key(cb)}")
            for a, v in (values or {}).items():
                setattr(cb, a, _from_json(v))

    def _commit(self, epoch: int, complete: bool, weights: str | None) -> None:
        write_json_atomic(self.backup_dir / STATE_FILE, {
            "epoch": int(epoch), "complete": bool(complete), "weights": weights,
            "callbacks": self._tracked_state(),
        })

    def _prune(self, current: str) -> None:
        files = sorted(p for p in self.backup_dir.glob("epoch-*.weights.h5") if p.name != current)
        for p in files[: max(0, len(files) - (self.keep - 1))]:
            p.unlink(missing_ok=True)
        for p in self.backup_dir.glob(".tmp-*"):  # leftovers of a kill during a write
            p.unlink(missing_ok=True)

    # -- Keras hooks
    def on_train_begin(self, logs=None):
        state = read_state(self.backup_dir)
        if state is None:
            return
        restore_weights(self.model, self.backup_dir, state)
        self._restore_tracked(state.callbacks)
        epochs = int(self.params.get("epochs", state.epoch)) if self.params else state.epoch
        start = max(epochs, state.epoch) if state.complete else state.epoch
        self.model._initial_epoch = start  # read by Keras' fit loop right after on_train_begin
        self.resumed_from = state.epoch

    def on_epoch_end(self, epoch, logs=None):
        name = _WEIGHTS_PATTERN.format(epoch + 1)
        save_weights_atomic(self.model, self.backup_dir / name)
        # Early stopping decided to stop at this epoch: a restart must not train further.
        self._commit(epoch + 1, bool(getattr(self.model, "stop_training", False)), name)
        self._prune(name)

    def on_train_end(self, logs=None):
        state = read_state(self.backup_dir)
        if state is not None and not state.complete:
            self._commit(state.epoch, True, state.weights)
        if self.resumed_from is not None:
            self.model._initial_epoch = None  # a later fit() of this model starts where it is told


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """``ModelCheckpoint`` (weights only, no optimizer state) that writes to a temporary
    file and renames it, so a kill during the write never leaves a corrupt ``best.weights.h5``."""

    def __init__(self, filepath, **kwargs):
        kwargs["save_weights_only"] = True
        super().__init__(filepath, **kwargs)

    def on_train_begin(self, logs=None):
        for p in Path(self.filepath).parent.glob(".tmp-*.weights.h5"):  # a kill during a write
            p.unlink(missing_ok=True)

    def _save_model(self, epoch, batch, logs):
        filepath = self._get_file_path(epoch, batch, logs)
        if self._should_save_model(epoch, batch, logs, filepath):
            save_weights_atomic(self.model, filepath, optimizer=False)


# --------------------------------------------------------------------------- history
def read_history_csv(path: str | os.PathLike) -> dict[str, list[float]]:
    """``history.csv`` (CSVLogger) as a History-like dict ``{metric: [per epoch]}``, by epoch order."""
    path = Path(path)
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    rows.sort(key=lambda r: int(float(r.get("epoch", 0))))
    out: dict[str, list[float]] = {}
    for r in rows:
        for k, v in r.items():
            if k == "epoch" or k is None:
                continue
            try:
                out.setdefault(k, []).append(float(v))
            except (TypeError, ValueError):
                out.setdefault(k, []).append(float("nan"))
    return out


def truncate_history_csv(path: str | os.PathLike, epochs: int) -> int:
    """Keep the header and the rows of epochs ``< epochs`` (one per epoch); returns rows kept."""
    path = Path(path)
    if not path.is_file():
        return 0
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        rows = list(reader)
    if header is None:
        return 0
    try:
        col = header.index("epoch")
    except ValueError:
        col = 0
    kept, seen = [], set()
    for r in rows:
        try:
            e = int(float(r[col]))
        except (ValueError, IndexError):
            continue
        if e < epochs and e not in seen:
            kept.append(r)
            seen.add(e)
    from cxr_tf.io.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(kept)
    return len(kept)


# --------------------------------------------------------------------------- flow
def prepare_resume(run, train_dataset, steps_per_epoch: int):
    """Before ``fit``: the resume point and the input stream to train on.

    Returns:
        ``(state, dataset)``: ``state`` is ``None`` for a fresh run. For a resumed run
        ``history.csv`` is cut to the committed epochs and ``dataset`` skips the
        ``epoch * steps_per_epoch`` batches the finished epochs consumed (the input
        pipeline is replayed, not the model: cheap next to training).
    """
    state = read_state(run.backup)
    start = state.epoch if state else 0
    truncate_history_csv(run / "history.csv", start)
    if state is None or state.complete or start == 0:
        return state, train_dataset
    return state, train_dataset.skip(start * steps_per_epoch)


def finish(run) -> None:
    """The run is complete (``metrics.json`` written): the backup is no longer needed."""
    shutil.rmtree(run.backup, ignore_errors=True)


class EpochProgress:
    """Resume for a training loop that calls ``model.fit`` one epoch at a time and picks its
    best epoch by its own score (chexpert_noisy's validation mean AUC on clean labels).

    Usage: ``best, hist, start = p.restore(model, best, hist)``; after each epoch append
    ``(loss, score)`` to ``hist`` and ``p.commit(model, epoch, hist, best, improved)``; at
    the end ``best_w = p.finish(model, best_w)``. Each epoch is committed in
    ``<folder>/backup/state.json`` (the same format as :class:`ResumableBackup`'s), holding
    the epoch, the weights with the optimizer (``epoch-K.weights.h5``), the best-so-far
    score, the file of its weights (``best-K.weights.h5``) and the per-epoch history (also
    ``<folder>/history.csv``, columns ``epoch`` + ``columns``). A restart restores them and
    trains the remaining epochs; the best epoch is still chosen over all epochs by the
    score. Not restored: the input order. Each epoch's ``model.fit`` draws its
    reshuffles from the dataset's seed generator, shared by every repetition and every
    ``fit`` call (how many draws an epoch makes depends on read-ahead), and MixUp's random
    state, neither of which can be saved from outside ``fit``. So the epochs after a resume
    see other batch orders than the uninterrupted run (measured: the same committed epochs,
    different losses afterwards); an uninterrupted run is unchanged (same numbers as
    before this class existed).
    """

    def __init__(self, folder, epochs: int, log, columns=("loss", "val_mean_auc")):
        self.folder, self.epochs, self.log, self.columns = folder, int(epochs), log, tuple(columns)
        self.backup = Path(str(folder)) / "backup"
        self.best_file: str | None = None

    def restore(self, model, best, hist):
        state = read_state(self.backup)
        start = state.epoch if state else 0
        truncate_history_csv(Path(str(self.folder)) / "history.csv", start)
        if state is None:
            return best, hist, 0
        self.log(f"resuming {self.folder}: {state.epoch} of {self.epochs} epochs done"
                 + (" (training had finished)" if state.complete else ""))
        restore_weights(model, self.backup, state)
        saved = state.callbacks
        best = float(saved["best"]) if saved.get("best") is not None else float("nan")
        hist = [tuple(h) for h in saved.get("history", [])][:start]
        self.best_file = saved.get("best_weights")
        return best, hist, start

    def commit(self, model, epoch: int, hist, best, improved: bool) -> None:
        self.backup.mkdir(parents=True, exist_ok=True)
        if improved:
            self.best_file = f"best-{epoch + 1:04d}.weights.h5"
            save_weights_atomic(model, self.backup / self.best_file, optimizer=False)
        name = f"epoch-{epoch + 1:04d}.weights.h5"
        save_weights_atomic(model, self.backup / name)
        path = Path(str(self.folder)) / "history.csv"
        new = not path.exists() or path.stat().st_size == 0
        with open(path, "a", newline="") as f:
            wr = csv.writer(f)
            if new:
                wr.writerow(["epoch", *self.columns])
            wr.writerow([epoch, *hist[-1]])
        write_json_atomic(self.backup / "state.json", {  # the commit point of this epoch
            "epoch": epoch + 1, "complete": epoch + 1 >= self.epochs, "weights": name,
            "callbacks": {"best": None if not math.isfinite(best) else float(best), "best_weights": self.best_file,
                          "history": [[float(a), None if not math.isfinite(b) else float(b)] for a, b in hist]}})
        keep = {name, self.best_file}
        for p in self.backup.glob("*.weights.h5"):
            if p.name not in keep:
                p.unlink(missing_ok=True)

    def finish(self, model, best_w):
        """The best weights: in memory when trained in this process, else from the backup."""
        if best_w is not None or not self.best_file:
            return best_w
        current = model.get_weights()
        load_model_weights(model, self.backup / self.best_file)
        best_w = model.get_weights()
        model.set_weights(current)
        return best_w
