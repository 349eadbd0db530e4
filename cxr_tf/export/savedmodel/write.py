"""Write a cxr_tf classifier as a TF Serving SavedModel (:func:`export_for_serving`).

See :mod:`cxr_tf.export.savedmodel` for the layout and the design.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np
import tensorflow as tf

from cxr_tf.data.preprocess import CHANNELS, prepare_float_batch, prepare_image
from cxr_tf.errors import CXRConfigError, CXRImageError, CXRModelError
from cxr_tf.export.savedmodel.layout import (
    _NAME_RE,
    BYTES_INPUT,
    IMAGES_INPUT,
    IMAGES_SIGNATURE,
    MAX_SIZE_RATIO,
    METADATA_FILE,
    SERVING_SIGNATURE,
    WARMUP_FILE,
    _decide,
    _thresholds_for,
    float32_policy,
)
from cxr_tf.export.serving_protos import make_predict_log

#: Below this weights size the fixed per-file overheads of HDF5 and of the
#: checkpoint dominate, so the ratio says nothing about duplicated variables.
_RATIO_MIN_BYTES = 256 * 1024


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What :func:`export_for_serving` wrote.

    Args:
        path: the version directory (``base_dir/name/version``).
        version: the integer version.
        sizes: ``variables_bytes``, ``weights_bytes`` (raw bytes of the model's weights), ``saved_model_pb_bytes``,
            ``total_bytes`` and ``ratio`` (variables / weights).
    """

    path: Path
    version: int
    sizes: dict


# --------------------------------------------------------------------------- module
def _tf_variable(v) -> tf.Variable:
    """The ``tf.Variable`` behind a Keras 3 variable (TF backend)."""
    if isinstance(v, tf.Variable):
        return v
    inner = getattr(v, "_value", None)  # keras.src.backend.tensorflow.core.Variable
    if isinstance(inner, tf.Variable):
        return inner
    raise CXRModelError(f"variable {getattr(v, 'path', v)!r} is not backed by a tf.Variable "
                        "(export needs the TensorFlow backend)")


class _ServingModule(tf.Module):
    """Holds the model's variables, its serving functions and its metadata.

    The Keras model itself is deliberately *not* a tracked attribute. A Keras 3
    variable saves through a fresh ``tf.Variable`` copy (its
    ``_export_to_saved_model_graph``), so the save/restore ops of a tracked model
    write one set of resources while the signatures read another: fine for
    ``tf.saved_model.load``, but a session-based loader (TF Serving,
    ``saved_model_cli run``) then fails with "Could not find variable conv/kernel".
    Tracking the underlying ``tf.Variable`` objects instead stores each weight once,
    under the very handle the signatures read. The metadata are variables too (not
    Python attributes) so that ``tf.saved_model.load(path)`` alone can tell the classes.
    """

    def __init__(self, model, class_names, image_size, multilabel, metadata_json, thresholds=None,
                 temperature=None):
        super().__init__(name="cxr_tf_serving")
        # A plain-object reference: invisible to tracking (see the class docstring).
        object.__setattr__(self, "_keras_model", model)
        self.model_variables = [_tf_variable(v) for v in model.variables]
        self._image_size = int(image_size)
        self._multilabel = bool(multilabel)
        # Operating point as constants of the graph (None: argmax, or 0.5 per label).
        self._thresholds = None if thresholds is None else np.asarray(thresholds, np.float32)
        # Temperature scaling fitted on validation (cxr_tf.evaluation.calibration), a graph constant.
        self._temperature = None if temperature is None else float(temperature)
        self._class_names = list(class_names)
        self.class_names = tf.Variable(list(class_names), dtype=tf.string, trainable=False,
                                       name="class_names")
        self.image_size = tf.Variable(self._image_size, dtype=tf.int32, trainable=False,
                                      name="image_size")
        self.multilabel = tf.Variable(self._multilabel, dtype=tf.bool, trainable=False,
                                      name="multilabel")
        self.metadata_json = tf.Variable(metadata_json, dtype=tf.string, trainable=False,
                                         name="metadata_json")
        self.serve_bytes = tf.function(
            self._serve_bytes,
            input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)])
        # Rank is fixed at 4 (any size, range and channel count): TF's session clients
        # (saved_model_cli run, Python sessions) then refuse a wrong-rank feed before
        # running; elsewhere the graph fails with InvalidArgumentError. An in-graph rank
        # assertion would be useless: grappler folds Rank of a rank-4 placeholder to 4.
        self.serve_images = tf.function(
            self._serve_images,
            input_signature=[tf.TensorSpec([None, None, None, None], tf.float32, name=IMAGES_INPUT)])

    def _outputs(self, images):
        probs = tf.cast(self._keras_model(images, training=False), tf.float32)
        out = {}
        if self._temperature is not None:
            # Logits recovered from the probabilities (log p for softmax: the per-row
            # constant cancels; logit(p) for sigmoid), divided by T: the same arithmetic as
            # cxr_tf.evaluation.calibration.apply_temperature, so served == offline.
            p = tf.clip_by_value(probs, 1e-7, 1.0 - 1e-7)
            out["uncalibrated_probabilities"] = probs
            if self._multilabel:
                probs = tf.sigmoid((tf.math.log(p) - tf.math.log1p(-p)) / self._temperature)
            else:
                probs = tf.nn.softmax(tf.math.log(p) / self._temperature, axis=-1)
        out["probabilities"] = probs
        if self._multilabel:  # independent labels: one yes/no per label, no single class
            t = 0.5 if self._thresholds is None else tf.constant(self._thresholds)
            out["decision"] = tf.cast(probs >= t, tf.int64)
            return out
        index = _decide(probs, self._thresholds)
        out["class_index"] = index
        out["decision"] = tf.gather(tf.constant(self._class_names), index)
        return out

    def _serve_bytes(self, image_bytes):
        images = tf.map_fn(
            lambda b: prepare_image(b, self._image_size), image_bytes,
            fn_output_signature=tf.TensorSpec([self._image_size, self._image_size, CHANNELS], tf.float32))
        return self._outputs(images)

    def _serve_images(self, images):
        shape = tf.shape(images)
        # Assertions give the caller an InvalidArgumentError naming the problem rather
        # than an obscure failure (or NaN probabilities) from deep inside the resize.
        checks = [
            tf.debugging.assert_positive(shape[1:], message="images: height, width and channels must be > 0"),
            tf.debugging.assert_all_finite(images, message="images: values must be finite (no NaN/Inf)"),
        ]
        with tf.control_dependencies(checks):
            images = tf.identity(images)
        return self._outputs(prepare_float_batch(images, self._image_size))


_MACHINE_PATH_KEYS = ("data_dir", "weights", "run_dir", "runs_dir", "cache_dir", "saved_models_dir", "splits",
                      "trunk", "init", "path")


def _portable(value, key: str = ""):
    """``value`` without the exporting machine's absolute paths (metadata travels with the model).

    An absolute path becomes ``$CXR_DATA_DIR/<rest>`` when under the data folder, else its
    last component; relative paths under keys naming files are kept as their last component
    too, since they are relative to a working directory the model never sees again.
    """
    if isinstance(value, dict):
        return {k: _portable(v, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_portable(v, key) for v in value]
    if not isinstance(value, str) or not value:
        return value
    data_root = os.environ.get("CXR_DATA_DIR")
    if os.path.isabs(value):
        if data_root:
            rel = os.path.relpath(os.path.abspath(value), os.path.abspath(data_root))
            if rel == ".":
                return "$CXR_DATA_DIR"
            if not rel.startswith(".."):
                return "$CXR_DATA_DIR/" + rel
        return Path(value).name
    if key in _MACHINE_PATH_KEYS and ("/" in value or os.sep in value):
        return Path(value).name
    return value


def _keras_config(model) -> dict | None:
    """The model's Keras serialisation (architecture only), or None if it has none."""
    import keras

    try:
        cfg = keras.saving.serialize_keras_object(model)
        json.dumps(cfg)
        return cfg
    except Exception:  # a model without get_config: exports still serve, explain needs a .keras
        return None


def _mixed_layers(model) -> list[str]:
    return [l.name for l in model._flatten_layers(include_self=False)
            if getattr(l, "compute_dtype", "float32") != "float32"]


def float32_model(model):
    """``model`` itself when it computes in float32, else a float32 copy with the same weights.

    Why the export never serves a mixed-precision graph (``--precision mixed_*``): a SavedModel
    traced from a mixed model runs its convolutions in float16/bfloat16 wherever it is served,
    and TF Serving and TFLite on CPUs emulate those slowly or not at all; its probabilities then
    depend on the serving hardware's 16-bit kernels. Mixed precision is a training speed-up:
    the variables are float32 (the policy's variable dtype), so the float32 copy holds exactly
    the trained weights and serves what the model computes in full precision. It differs from
    the mixed model's own predictions only by the 16-bit rounding of the activations
    (tests/training/test_precision.py measures the bound).
    """
    import keras

    if not _mixed_layers(model):
        return model
    with float32_policy():
        if not type(model).__module__.startswith("keras."):
            # A model class that rebuilds itself from its own config (CXRClassifier): its
            # layers take the global policy when they are built.
            clone = type(model).from_config(model.get_config())
        else:  # plain functional / sequential: each layer's config carries its policy
            clone = keras.models.clone_model(
                model, clone_function=lambda l: l.__class__.from_config({**l.get_config(), "dtype": "float32"}))
    if len(clone.weights) != len(model.weights):
        raise CXRModelError(f"float32 copy of {model.name} has {len(clone.weights)} weights, "
                            f"the model {len(model.weights)}")
    clone.set_weights(model.get_weights())
    left = _mixed_layers(clone)
    if left:
        raise CXRModelError(f"cannot export {model.name} in float32: layers {left[:5]} keep a 16-bit policy")
    return clone


# --------------------------------------------------------------------------- helpers
def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _existing_versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def _cxr_tf_version() -> str:
    import cxr_tf

    v = getattr(cxr_tf, "__version__", None)
    if v:
        return str(v)
    try:
        from importlib.metadata import version

        return version("cxr_tf")
    except Exception:  # not installed (running from a checkout)
        return "unknown"


def _gradient_png(size: int = 64) -> bytes:
    """A small synthetic 8-bit PNG (diagonal gradient) for the default warm-up."""
    ramp = tf.linspace(0.0, 1.0, size)
    img = (ramp[:, None] + ramp[None, :]) / 2.0
    img = tf.cast(tf.round(img * 255.0), tf.uint8)[..., None]
    return tf.io.encode_png(img).numpy()


def _outputs_doc(multilabel: bool, calibrated: bool = False) -> dict:
    probs = {"probabilities": "float32 [N, C]" + (" (temperature-calibrated)" if calibrated else "")}
    if calibrated:
        probs["uncalibrated_probabilities"] = "float32 [N, C] (the model's own)"
    if multilabel:
        return {**probs, "decision": "int64 [N, C] (1: label present at its threshold)"}
    return {**probs, "class_index": "int64 [N] (by the operating point)",
            "decision": "string [N] (class name by the operating point)"}


def _check_model(model, image_size: int, class_names: Sequence[str]):
    if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool) or image_size < 1:
        raise CXRConfigError(f"image_size must be a positive int; got {image_size!r}")
    try:
        in_shape = tuple(model.inputs[0].shape)
        out_shape = tuple(model.outputs[0].shape)
    except (AttributeError, IndexError, TypeError) as e:
        raise CXRModelError("model must be a built Keras functional model with one input and one output") from e
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise CXRModelError("model must have exactly one input and one output")
    if len(in_shape) != 4 or in_shape[3] not in (None, CHANNELS) or any(
            d not in (None, image_size) for d in in_shape[1:3]):
        raise CXRModelError(
            f"model input {in_shape} does not take (N, {image_size}, {image_size}, {CHANNELS}) images")
    if len(out_shape) != 2 or out_shape[1] != len(class_names):
        raise CXRModelError(f"model output {out_shape} does not match {len(class_names)} class names")


# --------------------------------------------------------------------------- export
def export_for_serving(
    model,
    base_dir: str | os.PathLike = "saved_models",
    name: str | None = None,
    version: int | None = None,
    *,
    class_names: Sequence[str],
    image_size: int,
    metadata: dict | None = None,
    warmup_images: Sequence[bytes] | None = None,
    multilabel: bool = False,
    threshold: float | None = None,
    class_thresholds: Sequence[float] | None = None,
    calibration: dict | None = None,
    overwrite: bool = False,
    max_size_ratio: float | None = MAX_SIZE_RATIO,
) -> ExportResult:
    """Write a TF Serving SavedModel with in-graph preprocessing.

    Signatures: ``serving_default`` takes ``image_bytes`` (string ``[N]``, encoded
    PNG/JPEG/BMP/GIF); ``predict_images`` takes ``images`` (float32 ``[N, H, W, C]``
    of any size, range and channel count). Both return ``probabilities`` (float32
    ``[N, C]``) and ``decision``: unless ``multilabel``, the class name (string ``[N]``)
    by the operating point (:func:`decision_rule`) with its ``class_index`` (int64
    ``[N]``); for ``multilabel``, int64 ``[N, C]`` yes/no per label.

    Args:
        model: a Keras functional classifier, ``(N, S, S, 1)`` in [0, 1] -> ``(N, C)``.
        base_dir: the TF Serving base directory holding one folder per model.
        name: the servable name (folder and ``ModelSpec.name``); default ``model.name``.
        version: integer version folder; ``None`` takes the next free integer.
        class_names: one name per output column.
        image_size: ``S``, the side the model expects.
        metadata: extra JSON-serialisable information stored with the model.
        warmup_images: encoded images replayed by TF Serving at load time; default
            one synthetic gradient PNG. They are run once here, because a warm-up
            request that fails makes TF Serving refuse to load the model.
        multilabel: sigmoid outputs; ``decision`` is then one 0/1 per label.
        threshold: the operating point chosen on validation data: binary, class 1 when
            ``P(class 1) >= threshold``; multilabel, the same threshold for every label.
            Default: ``metadata["threshold"]`` if given (older callers), else none (argmax).
        class_thresholds: one threshold per class / label (overrides ``threshold``).
        calibration: ``{"method": "temperature", "temperature": T, ...}`` (from
            :func:`cxr_tf.evaluation.calibration.calibration_summary`): applied in the graph,
            so ``probabilities`` are calibrated (``uncalibrated_probabilities`` beside them)
            and the thresholds act on calibrated probabilities.
        overwrite: replace an existing version folder instead of refusing.
        max_size_ratio: refuse (CXRModelError) when ``variables/`` exceeds this
            multiple of the ``.weights.h5`` size (weights of 256 KiB and more);
            ``None`` disables the check.

    Returns:
        An :class:`ExportResult`.

    Raises:
        CXRConfigError: bad name, version, class names or metadata, or the version exists.
        CXRModelError: the model does not fit the convention, or the size check fails.
        CXRImageError: a warm-up image cannot be decoded.
    """
    name = name if name is not None else model.name
    model = float32_model(model)  # a --precision mixed_* model serves its weights in float32
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise CXRConfigError(f"model name {name!r} must be letters, digits, '.', '_' or '-'")
    class_names = [str(c) for c in class_names]
    if not class_names or len(set(class_names)) != len(class_names):
        raise CXRConfigError(f"class_names must be non-empty and unique; got {class_names}")
    _check_model(model, image_size, class_names)
    image_size = int(image_size)
    metadata = dict(metadata or {})
    if threshold is None and class_thresholds is None and metadata.get("threshold") is not None:
        threshold = metadata.pop("threshold")
    thresholds = _thresholds_for(len(class_names), threshold, class_thresholds, multilabel)
    temperature = None
    if calibration:
        temperature = calibration.get("temperature")
        if calibration.get("method") != "temperature" or not (isinstance(temperature, (int, float))
                                                             and temperature > 0):
            raise CXRConfigError(f"calibration must be {{'method': 'temperature', 'temperature': T > 0}}; "
                                 f"got {calibration!r}")
    threshold = None if threshold is None else float(threshold)
    if multilabel:
        rule = "P(label) >= " + ("0.5" if thresholds is None else "per-label threshold")
    elif thresholds is None:
        rule = "argmax"
    elif np.ndim(thresholds) == 0:
        rule = f"P({class_names[1]}) >= {threshold:g}"
    else:
        rule = "most probable class at or above its threshold, else argmax"

    model_dir = Path(base_dir) / name
    if version is None:
        existing = _existing_versions(model_dir)
        version = existing[-1] + 1 if existing else 1
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 0:
        raise CXRConfigError(f"version must be a non-negative int; got {version!r}")
    version = int(version)
    final = model_dir / str(version)
    if final.exists() and not overwrite:
        raise CXRConfigError(f"{final} already exists; pass overwrite=True or another version")

    info = {
        "model_name": name,
        "keras_model_name": model.name,
        "class_names": class_names,
        "image_size": image_size,
        "channels": CHANNELS,
        "multilabel": bool(multilabel),
        # The operating point at the top level: what the served decision applies.
        "threshold": threshold,
        "class_thresholds": None if class_thresholds is None else [float(v) for v in class_thresholds],
        "decision_rule": rule,
        "calibration": calibration,
        "version": version,
        "keras_model": _keras_config(model),
        "signatures": {
            SERVING_SIGNATURE: {"inputs": {BYTES_INPUT: "string [N]"},
                                "outputs": _outputs_doc(multilabel, temperature is not None)},
            IMAGES_SIGNATURE: {"inputs": {IMAGES_INPUT: "float32 [N, H, W, C]"},
                               "outputs": _outputs_doc(multilabel, temperature is not None)},
        },
        "cxr_tf_version": _cxr_tf_version(),
        "tensorflow_version": tf.__version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "metadata": _portable(metadata),
    }
    try:
        info_json = json.dumps(info, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise CXRConfigError(f"metadata must be JSON-serialisable: {e}") from e

    warmup = [_gradient_png()] if warmup_images is None else list(warmup_images)
    if not all(isinstance(b, (bytes, bytearray)) for b in warmup):
        raise CXRConfigError("warmup_images must be a list of encoded image bytes")

    module = _ServingModule(model, class_names, image_size, multilabel, info_json, thresholds, temperature)
    for i, b in enumerate(warmup):
        try:
            module.serve_bytes(tf.constant([bytes(b)]))
        except tf.errors.InvalidArgumentError as e:
            raise CXRImageError(None, f"warm-up image {i} cannot be decoded: {e.message}") from e

    model_dir.mkdir(parents=True, exist_ok=True)
    # Written under a non-numeric name and renamed at the end: TF Serving polls the
    # base path and would otherwise try to load a half-written version.
    tmp = model_dir / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    try:
        tf.saved_model.save(module, str(tmp), signatures={
            SERVING_SIGNATURE: module.serve_bytes.get_concrete_function(),
            IMAGES_SIGNATURE: module.serve_images.get_concrete_function(),
        })
        # Raw bytes of the model's own weights. (A .weights.h5 of a compiled model also
        # holds the optimizer's slots: 3x for Adam, which would hide a duplicate.)
        weights_bytes = int(sum(np.prod(w.shape) * np.dtype(w.dtype).itemsize for w in model.weights))
        var_bytes = _dir_bytes(tmp / "variables")
        sizes = {
            "variables_bytes": var_bytes,
            "weights_bytes": weights_bytes,
            "saved_model_pb_bytes": (tmp / "saved_model.pb").stat().st_size,
            "ratio": round(var_bytes / max(weights_bytes, 1), 4),
        }
        if (max_size_ratio is not None and weights_bytes >= _RATIO_MIN_BYTES
                and sizes["ratio"] > max_size_ratio):
            raise CXRModelError(
                f"variables/ is {var_bytes} bytes, {sizes['ratio']}x the model's weights "
                f"({weights_bytes} bytes): variables are stored more than once")

        extra = tmp / "assets.extra"
        extra.mkdir(exist_ok=True)
        with tf.io.TFRecordWriter(str(extra / WARMUP_FILE)) as w:
            for b in warmup:  # one single-image request each, the typical live request
                w.write(make_predict_log(name, SERVING_SIGNATURE,
                                         {BYTES_INPUT: np.array([bytes(b)], dtype=object)}))
        info["sizes"] = dict(sizes)
        (extra / METADATA_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
        sizes["total_bytes"] = _dir_bytes(tmp)

        if final.exists():  # only reachable with overwrite=True (or a concurrent export)
            if not overwrite:
                raise CXRConfigError(f"{final} appeared during the export; not overwritten")
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(path=final, version=version, sizes=sizes)
