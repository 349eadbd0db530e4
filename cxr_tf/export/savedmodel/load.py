"""Load a SavedModel written by :func:`~cxr_tf.export.savedmodel.write.export_for_serving`."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import tensorflow as tf

from cxr_tf.errors import CXRImageError, CXRInputError, CXRModelError
from cxr_tf.export.savedmodel.layout import (
    BYTES_INPUT,
    IMAGES_INPUT,
    IMAGES_SIGNATURE,
    METADATA_FILE,
    SERVING_SIGNATURE,
    decision_rule,
    float32_policy,
)


# --------------------------------------------------------------------------- loading
class ExportedModel:
    """A SavedModel written by :func:`export_for_serving`, loaded for prediction.

    Args:
        path: the version directory.

    Attributes:
        class_names, image_size, multilabel, metadata (the full metadata dict),
        threshold (binary operating point or None), class_thresholds,
        signatures (the loaded concrete signature functions), module (the raw object).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not (self.path / "saved_model.pb").is_file():
            raise CXRInputError(self.path, "not a SavedModel directory (no saved_model.pb)")
        self.module = tf.saved_model.load(str(self.path))
        meta_file = self.path / "assets.extra" / METADATA_FILE
        if meta_file.is_file():
            self.metadata = json.loads(meta_file.read_text())
        else:  # assets.extra is optional for TF Serving; the variables always travel
            self.metadata = json.loads(self.module.metadata_json.numpy().decode())
        self.class_names = [c.decode() for c in self.module.class_names.numpy()]
        self.image_size = int(self.module.image_size.numpy())
        self.multilabel = bool(self.module.multilabel.numpy())
        self.signatures = self.module.signatures
        # Older exports kept the threshold nested under "metadata" and served argmax.
        nested = self.metadata.get("metadata") or {}
        self.threshold = self.metadata.get("threshold", nested.get("threshold"))
        self.class_thresholds = self.metadata.get("class_thresholds")
        self.serves_decision = "decision_rule" in self.metadata

    def decide(self, probabilities) -> np.ndarray:
        """Class indices by this export's operating point (what its ``class_index`` serves)."""
        return decision_rule(probabilities, self.threshold if len(self.class_names) == 2 else None,
                             self.class_thresholds)

    def serve_bytes(self, images: Sequence[bytes]) -> dict[str, np.ndarray]:
        """All outputs of ``serving_default`` (probabilities, class_index, decision) for encoded images."""
        fn = self.signatures[SERVING_SIGNATURE]
        out = fn(**{BYTES_INPUT: tf.constant([bytes(b) for b in images], tf.string)})
        return {k: v.numpy() for k, v in out.items()}

    def serve_images(self, images) -> dict[str, np.ndarray]:
        """All outputs of ``predict_images`` for a float batch ``(N, H, W, C)``."""
        arr = np.asarray(images, dtype=np.float32)
        if arr.ndim != 4:
            raise CXRInputError(None, f"expected a batch of images (N, H, W, C); got shape {arr.shape}")
        return {k: v.numpy() for k, v in self.signatures[IMAGES_SIGNATURE](**{IMAGES_INPUT: tf.constant(arr)}).items()}

    def keras_model(self):
        """The Keras model rebuilt from the stored config on the exported variables.

        Needs no file outside the export and no working directory (the weights are the
        SavedModel's own variables, in ``model.variables`` order).

        Raises:
            CXRModelError: an export without a stored config (older exports).
        """
        import keras

        import cxr_tf.layers  # noqa: F401  (registers the project's serialisable classes)
        import cxr_tf.models  # noqa: F401

        cfg = self.metadata.get("keras_model")
        if not cfg:
            raise CXRModelError(f"{self.path}: this export stores no Keras config (exported before cxr_tf "
                                "stored one); re-export it, or pass a .keras file")
        with float32_policy():  # the export is float32 (float32_model) whatever the caller's policy
            model = keras.saving.deserialize_keras_object(cfg)
        src = list(self.module.model_variables)
        if len(src) != len(model.variables):
            raise CXRModelError(f"{self.path}: {len(src)} exported variables for a model with "
                                f"{len(model.variables)}")
        for v, s in zip(model.variables, src):
            if tuple(v.shape) != tuple(s.shape):
                raise CXRModelError(f"{self.path}: variable {v.path} has shape {tuple(v.shape)}, "
                                    f"exported {tuple(s.shape)}")
            v.assign(s.numpy())
        return model

    def predict_bytes(self, images: Sequence[bytes], batch_size: int = 32) -> np.ndarray:
        """Probabilities for encoded images through ``serving_default``.

        Args:
            images: encoded PNG/JPEG/... bytes.
            batch_size: images per signature call.

        Returns:
            float32 ``(N, C)``.

        Raises:
            TypeError: an item is not bytes.
            CXRImageError: an item cannot be decoded.
        """
        images = list(images)
        for i, b in enumerate(images):
            if not isinstance(b, (bytes, bytearray)):
                raise TypeError(f"images[{i}] is {type(b).__name__}, expected encoded image bytes")
        fn = self.signatures[SERVING_SIGNATURE]
        out = [np.zeros((0, len(self.class_names)), np.float32)]
        for start in range(0, len(images), batch_size):
            chunk = tf.constant([bytes(b) for b in images[start:start + batch_size]], tf.string)
            try:
                out.append(fn(**{BYTES_INPUT: chunk})["probabilities"].numpy())
            except tf.errors.InvalidArgumentError as e:
                raise CXRImageError(
                    None, f"cannot decode an image among items {start}..{start + len(chunk) - 1}: "
                          f"{e.message.splitlines()[0]}") from e
        return np.concatenate(out, axis=0)

    def predict_images(self, images) -> np.ndarray:
        """Probabilities for a float batch ``(N, H, W, C)`` through ``predict_images``.

        Args:
            images: array-like, any size, range and channel count.

        Returns:
            float32 ``(N, C)``.
        """
        arr = np.asarray(images, dtype=np.float32)
        if arr.ndim != 4:
            raise CXRInputError(None, f"expected a batch of images (N, H, W, C); got shape {arr.shape}")
        return self.signatures[IMAGES_SIGNATURE](**{IMAGES_INPUT: tf.constant(arr)})["probabilities"].numpy()


def load_exported(path: str | os.PathLike) -> ExportedModel:
    """Load a SavedModel written by :func:`export_for_serving`.

    Args:
        path: the version directory (``base_dir/name/version``).
    """
    return ExportedModel(path)
