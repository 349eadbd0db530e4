"""Finding the Keras model behind an export, and images for explanation.

CAMs need gradients through the Keras layers, which a SavedModel for TF Serving does
not expose. An export holds what rebuilds them, whatever experiment wrote it and from
any working directory: in order of preference

1. ``<export>/assets.extra/cxr_tf_model.keras`` (TF Serving ignores ``assets.extra``;
   :func:`attach_keras_model` writes it; older COVID exports have one);
2. the Keras config stored in the export's metadata, rebuilt on the exported variables
   (:meth:`cxr_tf.export.ExportedModel.keras_model`; every export since it was added);
3. for older exports, the metadata's ``run_dir`` with ``model.json`` and
   ``checkpoints/best.weights.h5``, when that folder still exists.

The project's Keras classes are registered by importing :mod:`cxr_tf.models`, which
:func:`load_keras_model` does first: a bare ``keras.models.load_model`` in a process
that never imported them cannot locate ``CXRClassifier``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from cxr_tf.errors import CXRModelError

KERAS_MODEL_FILE = "cxr_tf_model.keras"


def attach_keras_model(export_path: str | os.PathLike, model) -> Path:
    """Save ``model`` as ``<export_path>/assets.extra/cxr_tf_model.keras`` (for ``cxr-tf explain``)."""
    p = Path(export_path) / "assets.extra" / KERAS_MODEL_FILE
    p.parent.mkdir(parents=True, exist_ok=True)
    model.save(p)
    return p


def load_keras_model(path: str | os.PathLike):
    """A Keras model from a ``.keras`` file or a cxr_tf export directory (see module docstring)."""
    import keras

    import cxr_tf.layers  # noqa: F401  (registers BackboneInput & co. for deserialisation)
    import cxr_tf.models  # noqa: F401  (registers CXRClassifier and the backbones' layers)

    path = Path(path)
    if path.is_file() and path.suffix == ".keras":
        return _load_keras_file(path)
    if not path.is_dir():
        raise CXRModelError(f"{path}: no such model (give saved_models/<name>/<version> or a .keras file)")
    attached = path / "assets.extra" / KERAS_MODEL_FILE
    if attached.is_file():
        return _load_keras_file(attached)
    meta_file = path / "assets.extra" / "cxr_tf_metadata.json"
    run_dir = None
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        if meta.get("keras_model"):
            from cxr_tf.export import load_exported

            return load_exported(path).keras_model()
        run_dir = meta.get("metadata", {}).get("run_dir")
    if run_dir and (Path(run_dir) / "model.json").is_file() and (Path(run_dir) / "checkpoints" / "best.weights.h5").is_file():
        from cxr_tf.models import CXRClassifier

        cfg = json.loads((Path(run_dir) / "model.json").read_text())["config"]
        model = CXRClassifier.from_config(cfg)
        model.load_weights(Path(run_dir) / "checkpoints" / "best.weights.h5")
        return model
    raise CXRModelError(
        f"{path}: CAMs need the Keras model, and this export has neither assets.extra/{KERAS_MODEL_FILE} "
        "nor a metadata run_dir with model.json and checkpoints/best.weights.h5. Pass the .keras file instead, "
        "or re-export with cxr_tf.explain.attach_keras_model."
    )


def export_threshold(path: str | os.PathLike) -> float | None:
    """The binary operating point of a cxr_tf export (top level, or nested in older exports); None if none."""
    meta_file = Path(path) / "assets.extra" / "cxr_tf_metadata.json"
    if not meta_file.is_file():
        return None
    meta = json.loads(meta_file.read_text())
    t = meta.get("threshold", (meta.get("metadata") or {}).get("threshold"))
    return None if t is None else float(t)


def _load_keras_file(path: Path):
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except (TypeError, ValueError) as e:  # e.g. a class no imported module registers
        raise CXRModelError(f"{path}: cannot rebuild the Keras model: {str(e).splitlines()[0]}") from e


def load_images(paths, image_size: int, cache_dir=None) -> np.ndarray:
    """Image files -> a model-ready batch ``(N, S, S, 1)`` in [0, 1].

    Through the same decoding contract as training and serving (:mod:`cxr_tf.io.graph`):
    each file is proved by :func:`cxr_tf.io.graph_input` (a bad file raises the
    project's error naming it), files the graph cannot decode as they are go through
    the decode cache, and the pixels come from the graph's own
    :func:`cxr_tf.data.preprocess.prepare_image`, so a CAM explains exactly the image
    the model was trained and served on.

    Args:
        paths: image files (PNG, JPEG, DICOM, TIFF, BMP, ...).
        image_size: model input side.
        cache_dir: decode cache (default :func:`cxr_tf.data.pipeline.default_cache_dir`).
    """
    import tensorflow as tf

    from cxr_tf.data.pipeline import default_cache_dir
    from cxr_tf.data.preprocess import prepare_image
    from cxr_tf.io import graph_input

    cache_dir = cache_dir or default_cache_dir()
    out = []
    for p in paths:
        src = graph_input(p, cache_dir=cache_dir)
        # fsencode: a non-UTF-8 file name reaches TF as its own bytes
        out.append(prepare_image(tf.io.read_file(os.fsencode(src)), image_size).numpy())
    return np.stack(out)
