"""TFLite conversion (``tf.lite.TFLiteConverter``) and its runtime (LiteRT), for
:mod:`cxr_tf.export.portable`.

The runtime is ``ai_edge_litert.interpreter.Interpreter`` (the ``ai-edge-litert``
package): ``tf.lite.Interpreter`` is deprecated in its favour (TF 2.21 warns), and
LiteRT is what runs on devices. The converter still ships with TensorFlow.

Quantisation modes: ``float16`` (weights stored as float16), ``dynamic`` (int8
weights, float activations), ``int8`` (int8 weights and activations calibrated on a
representative batch of training images; builtin int8 ops only, float32 input and
output so clients feed the same arrays as for the float model).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cxr_tf.errors import CXRConversionError, CXRExportDependencyError

QUANTIZE = ("none", "float16", "dynamic", "int8")
INSTALL_HINT = "pip install 'cxr_tf[tflite]' (ai-edge-litert)"


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        raise CXRExportDependencyError(None, f"running a TFLite export needs ai-edge-litert ({e}): "
                                             f"{INSTALL_HINT}") from None
    return Interpreter


def versions() -> dict:
    try:
        from importlib.metadata import version

        return {"ai-edge-litert": version("ai-edge-litert")}
    except Exception:  # not installed
        return {"ai-edge-litert": None}


def convert(concrete_fn, trackable, path: str | os.PathLike, *, quantize: str = "none",
            representative: np.ndarray | None = None) -> dict:
    """Write ``path`` (.tflite) from a concrete function.

    Args:
        concrete_fn: the model-ready signature's concrete function.
        trackable: the ``tf.Module`` holding its variables (frozen into constants).
        path: the output file.
        quantize: one of :data:`QUANTIZE`.
        representative: model-ready training images for ``int8`` calibration.

    Raises:
        CXRConversionError: the converter fails.
    """
    import tensorflow as tf

    path = Path(path)
    conv = tf.lite.TFLiteConverter.from_concrete_functions([concrete_fn], trackable)
    if quantize != "none":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        conv.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        if representative is None or len(representative) == 0:
            raise CXRConversionError(path, "int8 quantisation needs representative training images")
        conv.representative_dataset = lambda: ([representative[i:i + 1]] for i in range(len(representative)))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        blob = conv.convert()
    except Exception as e:  # ConverterError, RuntimeError from the calibrator, ...
        raise CXRConversionError(path, f"TFLiteConverter failed ({quantize}): "
                                       f"{type(e).__name__}: {str(e).splitlines()[0][:300]}") from e
    path.write_bytes(blob)
    try:
        TFLiteRunner(path)
    except CXRExportDependencyError:
        raise
    except Exception as e:
        raise CXRConversionError(path, f"LiteRT cannot load the converted model: {str(e)[:300]}") from e
    return {}


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class TFLiteRunner:
    """Runs a ``.tflite`` export with LiteRT through its ``serving_default`` signature."""

    def __init__(self, path: str | os.PathLike):
        Interpreter = _interpreter_class()
        # all the cores this process may use, as ONNX Runtime and TF do by default
        self.interpreter = Interpreter(model_path=str(path), num_threads=_cores())
        sigs = self.interpreter.get_signature_list()
        key = "serving_default" if "serving_default" in sigs else next(iter(sigs))
        self.runner = self.interpreter.get_signature_runner(key)
        self.input = sigs[key]["inputs"][0]
        self.output = sigs[key]["outputs"][0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        # the signature runner resizes the input tensor to the batch it is given
        return np.asarray(self.runner(**{self.input: np.ascontiguousarray(x, np.float32)})[self.output])
