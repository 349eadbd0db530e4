"""What a cxr_tf SavedModel export holds, shared by its writer and its reader: file and
signature names, the served decision rule, and the float32 policy of the export."""
from __future__ import annotations

import contextlib
import re

import numpy as np
import tensorflow as tf

from cxr_tf.errors import CXRConfigError

METADATA_FILE = "cxr_tf_metadata.json"
WARMUP_FILE = "tf_serving_warmup_requests"
SERVING_SIGNATURE = "serving_default"
IMAGES_SIGNATURE = "predict_images"
#: Input key of the bytes signature. TF Serving's REST API only base64-decodes
#: ``{"b64": ...}`` values for inputs whose name ends in ``_bytes``.
BYTES_INPUT = "image_bytes"
IMAGES_INPUT = "images"
#: Largest accepted ``variables/`` size relative to the ``.weights.h5`` file.
MAX_SIZE_RATIO = 1.1
#: Servable names (the folder and TF Serving's ``ModelSpec.name``).
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# --------------------------------------------------------------------------- decision rule
def _decide(probs, thresholds):
    """The exported decision as TF ops (see :func:`decision_rule`)."""
    if thresholds is None:
        return tf.argmax(probs, axis=-1, output_type=tf.int64)
    t = tf.constant(thresholds, tf.float32)
    if t.shape.rank == 0:  # binary: P(class 1) >= threshold, exactly evaluate's rule
        return tf.cast(probs[:, 1] >= t, tf.int64)
    passed = probs >= t
    # the most probable class among those over their threshold; argmax when none is
    masked = tf.where(passed, probs, tf.fill(tf.shape(probs), -1.0))
    return tf.where(tf.reduce_any(passed, axis=-1), tf.argmax(masked, axis=-1, output_type=tf.int64),
                    tf.argmax(probs, axis=-1, output_type=tf.int64))


def decision_rule(probs, threshold=None, class_thresholds=None) -> np.ndarray:
    """Class indices by the exported operating point, as the served graph decides.

    Binary with ``threshold``: class 1 when ``P(class 1) >= threshold`` (the rule of
    :func:`cxr_tf.evaluation.classification_metrics`). Multi-class with
    ``class_thresholds`` (one per class): the most probable class among those at or
    above their threshold, argmax when none is. Otherwise argmax.
    """
    probs = np.asarray(probs, np.float32)
    t = _thresholds_for(probs.shape[1], threshold, class_thresholds)
    return _decide(tf.constant(probs), t).numpy()


def _thresholds_for(n_classes, threshold, class_thresholds, multilabel=False):
    """The operating point as the graph stores it: a scalar (binary), a vector, or None."""
    if class_thresholds is not None:
        ct = np.asarray(class_thresholds, np.float32)
        if ct.shape != (n_classes,):
            raise CXRConfigError(f"class_thresholds needs one value per class ({n_classes}); got {list(ct)}")
        return ct
    if threshold is None:
        return None
    if multilabel:
        return np.full(n_classes, float(threshold), np.float32)
    if n_classes != 2:
        raise CXRConfigError(f"threshold applies to binary models; this one has {n_classes} classes "
                             "(give class_thresholds, one per class)")
    return np.float32(threshold)


@contextlib.contextmanager
def float32_policy():
    """Keras' global dtype policy is float32 inside the block (restored after)."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)

