"""``--precision``: Keras dtype policies for mixed-precision training.

``mixed_float16`` / ``mixed_bfloat16`` compute in 16 bits and keep float32 variables
(Micikevicius et al. 2018, "Mixed Precision Training"). What stays float32 and why:

- the classifier's output layer (``dtype="float32"`` in :class:`cxr_tf.models.CXRClassifier`):
  softmax / sigmoid of float16 logits saturates and rounds probabilities to 2^-11;
- the loss: Keras losses compute in ``floatx()`` (float32) whatever the model's policy;
- loss scaling: ``model.compile`` wraps the optimizer in a ``LossScaleOptimizer`` for a
  ``mixed_float16`` model (Keras 3 does it itself; bfloat16 has float32's range and needs none);
- the export: :func:`cxr_tf.export.export_for_serving` serves a float32 copy of the weights.

The policy is global in Keras, so it is set once, before the model is built
(:func:`set_precision` from the experiments' runtime set-up), and every run sets it
(float32 included) so one run's policy never leaks into the next in one process.
"""
from __future__ import annotations

import logging

from cxr_tf.errors import CXRConfigError
from cxr_tf.training.config import PRECISIONS

logger = logging.getLogger("cxr_tf.training")


def set_precision(precision: str = "float32") -> str:
    """Set Keras' global dtype policy (before building the model); returns the previous one's name."""
    import keras

    if precision not in PRECISIONS:
        raise CXRConfigError(f"--precision must be one of {PRECISIONS}; got {precision!r}")
    previous = keras.config.dtype_policy().name
    keras.config.set_dtype_policy(precision)
    if precision != "float32":
        logger.info("precision: %s (compute in %s, variables, outputs, loss and export in float32)",
                    precision, precision.split("_")[1])
    return previous


def jit_compile_arg(jit_compile: bool | None):
    """``model.compile``'s ``jit_compile``: None (flag not given) -> Keras' ``"auto"``."""
    return "auto" if jit_compile is None else bool(jit_compile)
