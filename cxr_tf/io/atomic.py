"""Atomic writes: a temporary file in the same folder, then ``os.replace``, so an
interrupted run, a concurrent worker or a reader never sees a half-written file.

The one place for this in cxr_tf: :func:`atomic_path` (any writer that takes a path:
h5py, ``np.savez``, ``DataFrame.to_csv``), :func:`atomic_write` (a writer that takes an
open file), :func:`write_json_atomic` and :func:`save_weights_atomic` (fsynced: the run
folder, the resume backup, SSL encoders and presets). Keras is imported only by the
weights writer, so readers stay free of it.
"""
from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import Iterator


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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix, so writers that look at it still work),
    renamed over ``path`` when the block succeeds and removed when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, write, mode: str = "wb", **open_kwargs) -> str:
    """Write ``path`` through ``write(f)`` on an open temporary file, then rename it over ``path``."""
    with atomic_path(path) as tmp, open(tmp, mode, **open_kwargs) as f:
        write(f)
    return str(path)


def write_json_atomic(path: str | os.PathLike, obj, indent: int = 1, default=None) -> Path:
    """Write JSON (sorted keys) to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=indent, sort_keys=True, default=default)
        f.flush()
        os.fsync(f.fileno())
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
    with atomic_path(path) as tmp:  # ends in .weights.h5, as Keras requires
        if optimizer or not _optimizer_to_skip(model):
            model.save_weights(str(tmp), overwrite=True)
        else:
            # the public save_weights has no switch for this; saving_lib's objects_to_skip is it
            from keras.src.saving import saving_lib

            saving_lib.save_weights_only(model, str(tmp), objects_to_skip=_optimizer_to_skip(model))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    _fsync_dir(path.parent)
    return path


