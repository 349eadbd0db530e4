"""Atomic writes of JSON and Keras weights: a temporary file in the same folder, fsync,
then ``os.replace``, so an interrupted run or a reader never sees a half-written file.

The one place for this (the run folder, the resume backup, SSL encoders and presets use
it); :func:`cxr_tf.io._common.atomic_write` is the generic byte/text form. Keras is
imported only by the weights writer, so readers stay free of it.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: str | os.PathLike, obj) -> Path:
    """Write JSON to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def _optimizer_to_skip(model) -> list:
    opt = getattr(model, "optimizer", None)
    return [opt] if opt is not None else []


def save_weights_atomic(model, path: str | os.PathLike, optimizer: bool = True) -> Path:
    """``model.save_weights`` to a temporary ``.weights.h5`` then rename: never a half-written file.

    Keras 3's ``save_weights`` also stores the optimizer's variables (Adam: two slots per
    weight, so a file about 3x the model). ``optimizer=False`` leaves them out: the best
    checkpoint is for inference and fine-tuning; only the resume backup needs them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}.weights.h5")
    try:
        if optimizer or not _optimizer_to_skip(model):
            model.save_weights(str(tmp), overwrite=True)
        else:
            # the public save_weights has no switch for this; saving_lib's objects_to_skip is it
            from keras.src.saving import saving_lib

            saving_lib.save_weights_only(model, str(tmp), objects_to_skip=_optimizer_to_skip(model))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


