"""Finding the Keras model behind an export, and images for explanation.

CAMs need gradients through the Keras layers, which a SavedModel for TF Serving does
not expose. So an export made by cxr_tf's COVID experiments stores the Keras model
beside the serving graph, in ``<export>/assets.extra/cxr_tf_model.keras`` (TF Serving
ignores ``assets.extra``; :func:`attach_keras_model` writes it). For other exports the
metadata's ``run_dir`` leads to the run's ``model.json`` (the classifier's config) and
``checkpoints/best.weights.h5``, from which the model is rebuilt.
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

    path = Path(path)
    if path.is_file() and path.suffix == ".keras":
        return keras.models.load_model(path, compile=False)
    if not path.is_dir():
        raise CXRModelError(f"{path}: no such model (give saved_models/<name>/<version> or a .keras file)")
    attached = path / "assets.extra" / KERAS_MODEL_FILE
    if attached.is_file():
        return keras.models.load_model(attached, compile=False)
    meta_file = path / "assets.extra" / "cxr_tf_metadata.json"
    run_dir = None
    if meta_file.is_file():
        run_dir = json.loads(meta_file.read_text()).get("metadata", {}).get("run_dir")
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
