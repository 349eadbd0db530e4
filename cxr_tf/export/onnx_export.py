"""ONNX conversion (tf2onnx) and its runtime (ONNX Runtime), for :mod:`cxr_tf.export.portable`.

The graph converted is the model-ready signature ``images`` float32 ``[N, S, S, 1]``
-> ``probabilities``: tf2onnx has no conversion for TF's antialiased resize
(``ScaleAndTranslate``; measured with tf2onnx 1.17, opset 18: "Unsupported ops"), and
ONNX cannot decode PNG/JPEG, so preprocessing ships as
:mod:`cxr_tf.export.preprocess_np` instead.

Quantisation uses ONNX Runtime's own tools: ``dynamic`` (int8 weights, activations
quantised on the fly) and ``int8`` (static QDQ, activations calibrated on a
representative batch of training images).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cxr_tf.errors import CXRConversionError, CXRExportDependencyError

#: Opset written by default: supported by tf2onnx 1.17 and ONNX Runtime >= 1.13.
DEFAULT_OPSET = 17
QUANTIZE = ("none", "dynamic", "int8")
INSTALL_HINT = "pip install 'cxr_tf[onnx]' (tf2onnx, onnx, onnxruntime)"


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise CXRExportDependencyError(None, f"ONNX export needs {module!r} ({e}): {INSTALL_HINT}") from None


def versions() -> dict:
    out = {}
    for m in ("tf2onnx", "onnx", "onnxruntime"):
        try:
            out[m] = _require(m).__version__
        except CXRExportDependencyError:
            out[m] = None
    return out


def convert(concrete_fn, input_spec, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
            quantize: str = "none", representative: np.ndarray | None = None) -> dict:
    """Write ``path`` (.onnx) from a ``tf.function`` whose input is ``input_spec``.

    Args:
        concrete_fn: the ``tf.function`` (its variables are frozen into the graph).
        input_spec: its ``tf.TensorSpec`` (name ``images``).
        path: the output file.
        opset: ONNX opset.
        quantize: ``none``, ``dynamic`` or ``int8``.
        representative: model-ready training images for ``int8`` calibration.

    Returns:
        ``{"opset": ..., "input": name, "output": name}``.

    Raises:
        CXRConversionError: tf2onnx fails, the model fails ``onnx.checker``, or ONNX
            Runtime refuses to load it (e.g. an opset it has no kernels for).
    """
    tf2onnx = _require("tf2onnx")
    onnx = _require("onnx")
    ort = _require("onnxruntime")
    path = Path(path)
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or opset < 1:
        raise CXRConversionError(path, f"opset must be a positive int; got {opset!r}")
    float_path = path if quantize == "none" else path.with_name(path.stem + ".float.onnx")
    try:
        model_proto, _ = tf2onnx.convert.from_function(concrete_fn, input_signature=[input_spec],
                                                        opset=int(opset), output_path=str(float_path))
        onnx.checker.check_model(model_proto)
    except Exception as e:  # tf2onnx raises bare Exceptions / ValueErrors of many kinds
        raise CXRConversionError(path, f"tf2onnx could not convert the model at opset {opset}: "
                                       f"{type(e).__name__}: {str(e).splitlines()[0][:300]}") from e
    try:
        if quantize != "none":
            _quantize(ort, float_path, path, quantize, representative, input_spec.name)
        # Loading builds every kernel: an opset ONNX Runtime cannot run fails here, at
        # export time, not in a hospital's viewer plug-in.
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except CXRConversionError:
        raise
    except Exception as e:
        raise CXRConversionError(path, f"ONNX Runtime {ort.__version__} cannot load the converted model "
                                       f"(opset {opset}): {str(e).splitlines()[0][:300]}") from e
    finally:
        if float_path != path and float_path.exists():
            float_path.unlink()
    return {"opset": int(opset), "input": sess.get_inputs()[0].name, "output": sess.get_outputs()[0].name}


def _quantize(ort, src: Path, dst: Path, quantize: str, representative, input_name: str) -> None:
    from onnxruntime import quantization as q

    if quantize == "dynamic":
        q.quantize_dynamic(str(src), str(dst), weight_type=q.QuantType.QInt8)
        return
    if representative is None or len(representative) == 0:
        raise CXRConversionError(dst, "int8 quantisation needs representative training images")

    class _Reader(q.CalibrationDataReader):
        def __init__(self):
            self._it = iter([{input_name: representative[i:i + 1]} for i in range(len(representative))])

        def get_next(self):
            return next(self._it, None)

    # QDQ is the format ONNX Runtime recommends for CPU; per-channel weights keep conv
    # filters of very different ranges apart (per-tensor loses more accuracy).
    q.quantize_static(str(src), str(dst), _Reader(), quant_format=q.QuantFormat.QDQ,
                      activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8, per_channel=True)


class OnnxRunner:
    """Runs an ``.onnx`` export with ONNX Runtime (CPU): ``runner(x) -> probabilities``."""

    def __init__(self, path: str | os.PathLike):
        ort = _require("onnxruntime")
        opts = ort.SessionOptions()
        try:
            opts.intra_op_num_threads = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux: ONNX Runtime's default (physical cores)
            pass
        # Idle pool threads otherwise spin-wait for work: on a CPU shared with other
        # processes (or TF in the same one) that burns the cores the work needs.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: np.ascontiguousarray(x, np.float32)})[0]
