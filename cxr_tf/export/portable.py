"""One entry point for every export format: SavedModel, ONNX and TFLite, each verified.

``cxr-tf export --model RUN_DIR|saved_models/NAME/VERSION --format savedmodel|onnx|tflite
[--quantize none|float16|dynamic|int8]`` and :func:`export_model` do the same:

1. resolve the model source (a run folder, a cxr_tf SavedModel, a Keras model; other
   schemes such as ``preset:NAME`` plug in through :func:`register_source_resolver`);
2. convert (tf2onnx for ONNX, ``tf.lite.TFLiteConverter`` for TFLite, the existing
   :func:`~cxr_tf.export.savedmodel.export_for_serving` for SavedModel);
3. run the written file with its own runtime (ONNX Runtime, LiteRT) on real held-out
   images and compare with Keras: within 1e-5 for float exports, within
   :data:`PREDICTION_TOLERANCE` for quantised ones, else :class:`CXRExportMismatchError`;
4. measure accuracy and AUC of the export against the Keras model on the held-out split;
   a quantised export that drops more than ``max_drop`` is refused
   (:class:`CXRQuantizationError`) unless ``force``;
5. only then move the file into place, with ``<file>.metadata.json`` and
   ``<file>.model_card.md`` beside it (and ``preprocess_np.py`` for portable formats).

Portable formats take the model-ready batch (float32 ``[N, S, S, 1]`` in [0, 1]):
ONNX cannot decode images and neither converter has TF's antialiased resize, so the
preprocessing is :func:`cxr_tf.export.preprocess_np.preprocess_images` (NumPy only),
whose output equals the SavedModel's in-graph preprocessing (checked at every export).
int8 calibration uses training-split images only, never held-out ones.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cxr_tf.errors import (
    CXRConfigError,
    CXRExportError,
    CXRExportMismatchError,
    CXRModelError,
    CXRQuantizationError,
)

logger = logging.getLogger("cxr_tf.export")

FORMATS = ("savedmodel", "onnx", "tflite")
QUANTIZE_MODES = {"savedmodel": ("none",), "onnx": ("none", "dynamic", "int8"),
                  "tflite": ("none", "float16", "dynamic", "int8")}
EXTENSIONS = {"onnx": ".onnx", "tflite": ".tflite"}
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
#: Largest |export - Keras| probability difference accepted on the verification images.
#: Float exports must reproduce Keras (1e-5). Quantised ones differ by design: the
#: bounds below were measured on the ResNet18 / tiny_cnn kermany models of
#: ``benchmarks/export_formats.py`` and tests/export, with headroom; a broken
#: conversion (wrong input scaling, wrong channel order) exceeds them by far. Quantised
#: quality is judged by the held-out accuracy / AUC drop, not by these bounds.
PREDICTION_TOLERANCE = {"none": 1e-5, "float16": 1e-2, "dynamic": 0.1, "int8": 0.25}
#: Default largest accepted drop of held-out accuracy and of AUC for quantised exports.
MAX_DROP = 0.02
PREPROCESS_TOLERANCE = 1e-5


# --------------------------------------------------------------------------- sources
@dataclasses.dataclass
class ModelSource:
    """A Keras classifier and what travels with it.

    Args:
        model: Keras model, ``(N, S, S, 1)`` in [0, 1] -> ``(N, C)`` probabilities.
        name: export name.
        class_names, image_size, multilabel: the model's contract.
        threshold: the validation-chosen binary operating threshold, if any.
        calibration: calibration parameters (e.g. a temperature), if any.
        metadata: anything else stored with the export (run folder, experiment, ...).
        data: ``() -> (train CXRDataset, held-out CXRDataset)``, or ``None`` when the
            source does not know its data.
        origin: where the model came from (for the metadata).
    """

    model: object
    name: str
    class_names: list
    image_size: int
    multilabel: bool = False
    threshold: float | None = None
    calibration: dict | None = None
    metadata: dict = dataclasses.field(default_factory=dict)
    data: Callable | None = None
    origin: str = "keras model"


def _from_preset(name: str) -> ModelSource:
    """``preset:NAME``: the preset's own classifier, its thresholds and calibration. A preset
    knows no data of its own, so ``--data-dir`` with ``--splits`` supplies the check images."""
    from cxr_tf.models.presets import load_preset

    preset = load_preset(name)
    model = preset.build()
    meta = preset.metadata
    positive = preset.class_names[-1]
    return ModelSource(model=model, name=preset.name, class_names=preset.class_names,
                       image_size=preset.image_size, multilabel=bool(preset.model_config.get("multilabel")),
                       threshold=meta.thresholds.get(positive) if len(preset.class_names) == 2 else None,
                       calibration=meta.calibration, metadata={"preset": preset.name,
                                                               "preset_sha256": meta.weights_sha256},
                       origin=f"preset {preset.name} ({preset.source})")


_RESOLVERS: dict[str, Callable[[str], ModelSource]] = {"preset": _from_preset}


def register_source_resolver(scheme: str, fn: Callable[[str], ModelSource]) -> None:
    """Make ``SCHEME:rest`` model specs resolvable (e.g. ``preset``); ``fn(rest) -> ModelSource``."""
    _RESOLVERS[scheme] = fn


def resolve_model_source(spec) -> ModelSource:
    """A :class:`ModelSource` from a spec: a ``ModelSource``, a Keras model, ``SCHEME:NAME``
    with a registered resolver, a run folder (``model.json`` + ``checkpoints/best.weights.h5``)
    or a cxr_tf SavedModel version folder.

    Raises:
        CXRModelError: nothing usable at ``spec``.
    """
    if isinstance(spec, ModelSource):
        return spec
    if hasattr(spec, "predict") and hasattr(spec, "inputs"):
        return _from_keras(spec)
    spec = os.fspath(spec)
    scheme, sep, rest = spec.partition(":")
    if sep and not os.path.exists(spec) and len(scheme) > 1:  # len>1: not a Windows drive letter
        if scheme not in _RESOLVERS:
            raise CXRModelError(f"{spec}: no resolver for '{scheme}:' model sources "
                                f"(registered: {sorted(_RESOLVERS) or 'none'})")
        return _RESOLVERS[scheme](rest)
    path = Path(spec)
    if (path / "model.json").is_file() and (path / "checkpoints" / "best.weights.h5").is_file():
        return _from_run_dir(path)
    if (path / "saved_model.pb").is_file():
        return _from_savedmodel(path)
    raise CXRModelError(f"{path}: not a run folder (model.json + checkpoints/best.weights.h5) "
                        "nor a SavedModel version folder (saved_model.pb)")


def _from_keras(model) -> ModelSource:
    names = getattr(model, "class_names", None)
    size = getattr(model, "image_size", None)
    if size is None:
        shape = tuple(model.inputs[0].shape)
        size = shape[1] if len(shape) == 4 and shape[1] == shape[2] else None
    return ModelSource(model=model, name=model.name, class_names=list(names) if names else None,
                       image_size=int(size) if size else None,
                       multilabel=bool(getattr(model, "multilabel", False)))


def _rebuild(run: Path):
    """The classifier of a run folder: its class (registered with Keras) from ``model.json``."""
    import keras

    import cxr_tf.models  # noqa: F401  (registers cxr_tf's serializable model classes)

    info = json.loads((run / "model.json").read_text())
    cls = keras.saving.get_registered_object(info.get("class_name", "cxr_tf>CXRClassifier"))
    if cls is None:
        raise CXRModelError(f"{run / 'model.json'}: unknown model class {info.get('class_name')!r}")
    model = cls.from_config(info["config"])
    model.load_weights(run / "checkpoints" / "best.weights.h5")
    return model


def _run_data(run: Path, class_names):
    """``() -> (train, test)`` datasets of a run: its config's data and its ``splits.csv``."""
    cfg_file, splits = run / "config.json", run / "splits.csv"
    if not (cfg_file.is_file() and splits.is_file()):
        return None
    cfg = json.loads(cfg_file.read_text())
    data_dir = os.path.expandvars(str(cfg.get("data_dir") or ""))
    if not data_dir or not os.path.exists(data_dir):
        return None

    def load():
        return split_data(data_dir, splits, class_names, cfg.get("format", "auto"))
    return load


def split_data(data_dir, splits, class_names, fmt: str = "auto", train: str = "train", heldout: str = "test"):
    """``(train, held-out)`` :class:`~cxr_tf.datasets.CXRDataset` of ``data_dir`` by a saved ``splits.csv``,
    relabelled onto the model's ``class_names``."""
    from cxr_tf.datasets import load_splits
    from cxr_tf.datasets.relabel import load_for_model

    ds = load_for_model(str(data_dir), fmt, list(class_names))
    split = load_splits(splits, ds)
    return ds.subset(split == train), ds.subset(split == heldout)


def _from_run_dir(run: Path) -> ModelSource:
    model = _rebuild(run)
    metrics = {}
    if (run / "metrics.json").is_file():
        metrics = json.loads((run / "metrics.json").read_text())
    src = _from_keras(model)
    src.name = getattr(model, "name", None) or run.name
    src.threshold = metrics.get("threshold")
    src.calibration = metrics.get("calibration")
    src.metadata = {"run_dir": str(run)}
    src.data = _run_data(run, src.class_names)
    src.origin = f"run folder {run}"
    return src


def _from_savedmodel(path: Path) -> ModelSource:
    meta_file = path / "assets.extra" / "cxr_tf_metadata.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    inner = meta.get("metadata") or {}
    keras_file = path / "assets.extra" / "cxr_tf_model.keras"
    # exports keep no machine path: run_dir is the run folder's name, found only from where
    # the user runs the command (else pass --data-dir / --splits for the check images)
    run_dir = inner.get("run_dir")
    run_dir = run_dir if run_dir and (Path(run_dir) / "model.json").is_file() else None
    data = None
    if meta.get("keras_model"):  # the model's config, rebuilt on the export's own variables
        from cxr_tf.export.savedmodel import load_exported

        model = load_exported(path).keras_model()
    elif keras_file.is_file():  # older exports
        import keras

        model = keras.models.load_model(keras_file, compile=False)
    elif run_dir:
        model = _rebuild(Path(run_dir))
    else:
        raise CXRModelError(f"{path}: the Keras model behind this SavedModel is unknown: it stores no Keras "
                            "config, no assets.extra/cxr_tf_model.keras and no reachable run folder")
    class_names = meta.get("class_names") or list(getattr(model, "class_names", []) or [])
    if run_dir:
        data = _run_data(Path(run_dir), class_names)
    threshold = meta.get("threshold", inner.get("threshold"))
    return ModelSource(model=model, name=meta.get("model_name") or path.parent.name, class_names=class_names,
                       image_size=int(meta.get("image_size") or getattr(model, "image_size")),
                       multilabel=bool(meta.get("multilabel", False)), threshold=threshold,
                       calibration=meta.get("calibration", inner.get("calibration")),
                       metadata={k: v for k, v in inner.items() if k in ("run_dir", "experiment")},
                       data=data, origin=f"SavedModel {path}")


# --------------------------------------------------------------------------- the module converted
def _portable_module(model, image_size: int):
    """A ``tf.Module`` holding the model's ``tf.Variable`` objects and the model-ready signature.

    The variables are tracked directly (as in savedmodel's ``_ServingModule``): a
    concrete function over a Keras 3 model alone leaves READ_VARIABLE ops the TFLite
    converter cannot freeze (its output was NaN, measured).
    """
    import tensorflow as tf

    from cxr_tf.data.preprocess import CHANNELS
    from cxr_tf.export.savedmodel.write import _tf_variable

    spec = tf.TensorSpec([None, image_size, image_size, CHANNELS], tf.float32, name=INPUT_NAME)

    class _Portable(tf.Module):
        def __init__(self):
            super().__init__(name="cxr_tf_portable")
            object.__setattr__(self, "_keras_model", model)
            self.model_variables = [_tf_variable(v) for v in model.variables]
            self.serve = tf.function(self._serve, input_signature=[spec])

        def _serve(self, images):
            return {OUTPUT_NAME: tf.cast(self._keras_model(images, training=False), tf.float32)}

    return _Portable(), spec


# --------------------------------------------------------------------------- data helpers
def _model_ready(ds, image_size: int) -> np.ndarray:
    """The dataset's images as the SavedModel preprocesses them: ``(N, S, S, 1)``."""
    from cxr_tf.data import image_dataset

    if len(ds) == 0:
        return np.zeros((0, image_size, image_size, 1), np.float32)
    return np.concatenate([np.asarray(x) for x, _ in image_dataset(ds, image_size).batch(64)])


def _raw_pixels(ds, n: int) -> list[np.ndarray]:
    """Decoded, unscaled pixels of the first ``n`` items, float32 ``(H, W, C)``."""
    import tensorflow as tf

    from cxr_tf.data.preprocess import decode_image

    out = []
    for item in list(ds.items)[:n]:
        if ds.in_memory:
            a = np.asarray(item, np.float32)
            out.append(a[..., None] if a.ndim == 2 else a)
        else:
            out.append(decode_image(tf.io.read_file(str(item))).numpy())
    return out


def _batched(fn, x: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate([np.asarray(fn(x[i:i + batch]), np.float32) for i in range(0, len(x), batch)])


def quality(y_true: np.ndarray, prob: np.ndarray, threshold: float | None = None,
            multilabel: bool = False) -> dict:
    """Accuracy (at ``threshold`` on class 1 when binary and given, else argmax) and AUC
    (class 1 when binary, macro one-vs-rest otherwise; ``None`` if one class is absent).

    Multi-label (``y_true`` multi-hot ``(N, C)``, NaN = unknown): accuracy of every known
    label at 0.5 (or ``threshold``), AUC the mean over labels that have both values.
    """
    from sklearn.metrics import roc_auc_score

    y_true = np.asarray(y_true)
    if multilabel:
        known = ~np.isnan(y_true)
        t = 0.5 if threshold is None else threshold
        acc = float(((prob >= t) == (y_true == 1))[known].mean())
        aucs = [roc_auc_score(y_true[known[:, j], j] == 1, prob[known[:, j], j]) for j in range(y_true.shape[1])
                if len(np.unique(y_true[known[:, j], j])) == 2]
        return {"accuracy": acc, "auc": float(np.mean(aucs)) if aucs else None}
    if prob.shape[1] == 2 and threshold is not None:
        pred = (prob[:, 1] >= threshold).astype(int)
    else:
        pred = prob.argmax(1)
    auc = None
    try:
        if prob.shape[1] == 2:
            auc = float(roc_auc_score(y_true == 1, prob[:, 1]))
        else:
            auc = float(roc_auc_score(y_true, prob, multi_class="ovr", average="macro",
                                      labels=list(range(prob.shape[1]))))
    except ValueError:  # a class missing from the held-out sample (older scikit-learn)
        auc = None
    if auc is not None and not np.isfinite(auc):  # the same, newer scikit-learn (NaN and a warning)
        auc = None
    return {"accuracy": float((pred == y_true).mean()), "auc": auc}


# --------------------------------------------------------------------------- result
@dataclasses.dataclass(frozen=True)
class PortableExport:
    """What :func:`export_model` wrote and measured.

    Args:
        path: the exported file (``.onnx`` / ``.tflite``) or SavedModel version folder.
        format, quantize: as asked.
        metadata: the metadata written beside it (also ``metadata_path``).
        model_card_path: the model card.
    """

    path: Path
    format: str
    quantize: str
    metadata: dict
    metadata_path: Path
    model_card_path: Path

    def runner(self):
        """``x -> probabilities`` through the export's own runtime."""
        return load_runner(self.path)


def load_runner(path: str | os.PathLike) -> Callable[[np.ndarray], np.ndarray]:
    """A callable running an export with its own runtime on model-ready images
    (SavedModel: its ``predict_images`` signature, which also accepts raw pixels)."""
    path = Path(path)
    if path.suffix == ".onnx":
        from cxr_tf.export.onnx_export import OnnxRunner

        return OnnxRunner(path)
    if path.suffix == ".tflite":
        from cxr_tf.export.tflite_export import TFLiteRunner

        return TFLiteRunner(path)
    if (path / "saved_model.pb").is_file():
        from cxr_tf.export.savedmodel import load_exported

        return load_exported(path).predict_images
    raise CXRConfigError(f"{path}: not an .onnx, .tflite or SavedModel export")


# --------------------------------------------------------------------------- export
def export_model(
    model,
    format: str = "onnx",
    *,
    quantize: str = "none",
    out: str | os.PathLike | None = None,
    name: str | None = None,
    force: bool = False,
    overwrite: bool = False,
    opset: int | None = None,
    train_data=None,
    heldout_data=None,
    class_names: Sequence[str] | None = None,
    image_size: int | None = None,
    threshold: float | None = None,
    calibration: dict | None = None,
    metadata: dict | None = None,
    max_drop: float = MAX_DROP,
    n_verify: int = 16,
    n_calibration: int = 100,
    max_heldout: int = 1000,
    seed: int = 0,
) -> PortableExport:
    """Export a classifier to ``format``, verify it with its own runtime, write metadata and a model card.

    Args:
        model: a Keras model, a :class:`ModelSource`, a run folder, a cxr_tf SavedModel
            folder, or ``SCHEME:NAME`` with a registered resolver.
        format: ``savedmodel``, ``onnx`` or ``tflite``.
        quantize: ``none``; ``float16`` (TFLite); ``dynamic``; ``int8`` (ONNX, TFLite).
        out: output folder; default ``exports/<name>`` (SavedModel: ``saved_models``).
        name: export name (file stem / servable name); default the source's.
        force: keep a quantised export whose held-out accuracy or AUC drops by more than
            ``max_drop`` (the drop is still recorded in the metadata).
        overwrite: replace existing files.
        opset: ONNX opset (default :data:`cxr_tf.export.onnx_export.DEFAULT_OPSET`).
        train_data: training-split :class:`~cxr_tf.datasets.CXRDataset` (int8 calibration);
            default the source's.
        heldout_data: held-out :class:`~cxr_tf.datasets.CXRDataset` (verification and
            accuracy / AUC); default the source's test split.
        class_names, image_size, threshold, calibration: override the source's.
        metadata: extra JSON-serialisable information.
        max_drop: largest accepted drop of accuracy and of AUC for quantised exports.
        n_verify: held-out images on which predictions and preprocessing are compared.
        n_calibration: training images in the int8 representative sample.
        max_heldout: held-out images used for accuracy / AUC (the first ones).
        seed: draws the representative sample.

    Returns:
        A :class:`PortableExport`.

    Raises:
        CXRConfigError: bad format, quantisation, data or existing output.
        CXRExportDependencyError: converter or runtime missing (with the pip line).
        CXRConversionError: the converter failed or its runtime refuses the file.
        CXRExportMismatchError: runtime predictions (or the NumPy preprocessing) differ from Keras.
        CXRQuantizationError: the quantised model loses more than ``max_drop`` (unless ``force``).
    """
    if format not in FORMATS:
        raise CXRConfigError(f"format must be one of {FORMATS}; got {format!r}")
    if quantize not in QUANTIZE_MODES[format]:
        raise CXRConfigError(f"{format} export supports quantize in {QUANTIZE_MODES[format]}; got {quantize!r}")
    if not 0 <= float(max_drop) <= 1:
        raise CXRConfigError(f"max_drop must be in [0, 1]; got {max_drop!r}")
    src = resolve_model_source(model)
    class_names = [str(c) for c in (class_names or src.class_names or [])]
    image_size = int(image_size or src.image_size or 0)
    threshold = src.threshold if threshold is None else float(threshold)
    calibration = src.calibration if calibration is None else calibration
    name = name or src.name
    if not class_names or image_size < 1:
        raise CXRConfigError("class_names and image_size are unknown for this model; pass them")
    if train_data is None or heldout_data is None:
        if src.data is None:
            raise CXRConfigError(f"{src.origin}: its training and held-out data are unknown; pass train_data and "
                                 "heldout_data (CLI: --data-dir and --splits)")
        tr, ho = src.data()
        train_data = tr if train_data is None else train_data
        heldout_data = ho if heldout_data is None else heldout_data
    if len(heldout_data) == 0:
        raise CXRConfigError("the held-out split is empty: nothing to verify the export on")
    if quantize == "int8" and len(train_data) == 0:
        raise CXRConfigError("the training split is empty: int8 needs representative training images")

    keras_model = src.model
    heldout = heldout_data.subset(np.arange(min(len(heldout_data), max_heldout)))
    x_held = _model_ready(heldout, image_size)
    y_held = heldout.labels.astype(np.float32) if src.multilabel else heldout.class_index()
    p_keras = np.asarray(keras_model.predict(x_held, batch_size=32, verbose=0), np.float32)

    info = {
        "model_name": name,
        "format": format,
        "quantize": quantize,
        "class_names": class_names,
        "image_size": image_size,
        "channels": 1,
        "multilabel": bool(src.multilabel),
        "threshold": threshold,
        "calibration": calibration,
        "source": src.origin,
        "cxr_tf_version": _cxr_tf_version(),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "metadata": {**src.metadata, **dict(metadata or {})},
    }
    if format == "savedmodel":
        return _export_savedmodel(src, keras_model, info, out, name, heldout, x_held, p_keras, y_held, n_verify,
                                  overwrite)

    out = Path(out) if out is not None else Path("exports") / name
    stem = name if quantize == "none" else f"{name}.{quantize}"
    final = out / f"{stem}{EXTENSIONS[format]}"
    if final.exists() and not overwrite:
        raise CXRConfigError(f"{final} already exists; pass overwrite=True (--overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".tmp-{uuid.uuid4().hex[:8]}-{final.name}"
    module, spec = _portable_module(keras_model, image_size)
    representative = None
    if quantize == "int8":  # training images only: calibrating on test images would leak them
        pick = np.random.default_rng(seed).choice(len(train_data), min(n_calibration, len(train_data)),
                                                  replace=False)
        representative = _model_ready(train_data.subset(np.sort(pick)), image_size)
        info["int8_calibration"] = {"split": "train", "images": int(len(pick)), "seed": seed}
    try:
        if format == "onnx":
            from cxr_tf.export import onnx_export as conv

            opset = conv.DEFAULT_OPSET if opset is None else opset
            info["onnx"] = conv.convert(module.serve, spec, tmp, opset=opset, quantize=quantize,
                                        representative=representative)
        else:
            from cxr_tf.export import tflite_export as conv

            conv.convert(module.serve.get_concrete_function(), module, tmp, quantize=quantize,
                         representative=representative)
        info["converter_versions"] = {**conv.versions(), "tensorflow": _tf_version()}
        runner = load_runner(tmp)  # tmp keeps the suffix (.onnx / .tflite) the loader reads
        info["verification"] = _verify_portable(tmp, runner, heldout, x_held, p_keras, image_size, quantize,
                                                n_verify)
        p_exp = _batched(runner, x_held)
        info["heldout"] = _compare_quality(tmp, y_held, p_keras, p_exp, threshold, src.multilabel, quantize,
                                           max_drop, force)
        info["file"] = final.name
        info["bytes"] = tmp.stat().st_size
        info["sha256"] = hashlib.sha256(tmp.read_bytes()).hexdigest()
        info["input"] = {"name": INPUT_NAME, "dtype": "float32", "shape": ["N", image_size, image_size, 1],
                         "range": [0.0, 1.0],
                         "preprocessing": "preprocess_np.preprocess_images(pixels, image_size) "
                                          "(cxr_tf.export.preprocess_np; copy beside this file)"}
        info["outputs"] = {OUTPUT_NAME: f"float32 [N, {len(class_names)}]"}
        os.replace(tmp, final)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    meta_path = final.with_name(final.name + ".metadata.json")
    meta_path.write_text(json.dumps(info, indent=2, sort_keys=True))
    card = final.with_name(final.name + ".model_card.md")
    card.write_text(model_card(info))
    shutil.copyfile(Path(__file__).with_name("preprocess_np.py"), out / "preprocess_np.py")
    return PortableExport(final, format, quantize, info, meta_path, card)


def _verify_portable(path, runner, heldout, x_held, p_keras, image_size, quantize, n_verify) -> dict:
    """Runtime vs Keras on the first ``n_verify`` held-out images; NumPy vs TF preprocessing."""
    import tensorflow as tf

    from cxr_tf.data.preprocess import prepare_float_batch
    from cxr_tf.export.preprocess_np import preprocess_images

    n = min(n_verify, len(x_held))
    pp = 0.0
    for raw in _raw_pixels(heldout, n):
        want = prepare_float_batch(tf.constant(raw[None]), image_size).numpy()
        pp = max(pp, float(np.abs(preprocess_images(raw[None], image_size) - want).max()))
    if pp > PREPROCESS_TOLERANCE:
        raise CXRExportMismatchError(path, f"the NumPy preprocessing differs from the SavedModel's by {pp:.3g} "
                                           f"(> {PREPROCESS_TOLERANCE}) on held-out images")
    got = _batched(runner, x_held[:n])
    diff = float(np.abs(got - p_keras[:n]).max())
    tol = PREDICTION_TOLERANCE[quantize]
    if not np.isfinite(got).all() or diff > tol:
        raise CXRExportMismatchError(path, f"{quantize} export predicts up to {diff:.3g} away from Keras on {n} "
                                           f"held-out images (tolerance {tol})")
    return {"images": n, "max_abs_diff_vs_keras": diff, "tolerance": tol,
            "preprocess_max_abs_diff": pp, "preprocess_tolerance": PREPROCESS_TOLERANCE}


def _compare_quality(path, y, p_keras, p_exp, threshold, multilabel, quantize, max_drop, force) -> dict:
    ref = quality(y, p_keras, threshold, multilabel)
    got = quality(y, p_exp, threshold, multilabel)
    drops = {"accuracy": ref["accuracy"] - got["accuracy"],
             "auc": (ref["auc"] - got["auc"]) if ref["auc"] is not None and got["auc"] is not None else None}
    res = {"images": int(len(y)), "keras": ref, "export": got, "drop": drops, "max_drop": max_drop,
           "mean_abs_diff_vs_keras": float(np.abs(p_exp - p_keras).mean()), "forced": False}
    worst = max(v for v in drops.values() if v is not None)
    if quantize != "none" and worst > max_drop:
        if not force:
            raise CXRQuantizationError(
                path, f"{quantize} quantisation drops held-out accuracy by {drops['accuracy']:.4f} and AUC by "
                      f"{drops['auc'] if drops['auc'] is None else round(drops['auc'], 4)} on {len(y)} images "
                      f"(tolerance {max_drop}); refused. Use force=True (--force) to keep it anyway, or "
                      "a milder quantisation")
        res["forced"] = True
    return res


def _export_savedmodel(src, keras_model, info, out, name, heldout, x_held, p_keras, y_held, n_verify,
                       overwrite) -> PortableExport:
    """The SavedModel path: :func:`export_for_serving`, then the same checks and card."""
    from cxr_tf.export.savedmodel import METADATA_FILE, export_for_serving, load_exported

    extra = {k: info[k] for k in ("threshold", "calibration", "source") if info[k] is not None}
    warm = [Path(p).read_bytes() for p in list(heldout.items)[:2]] if not heldout.in_memory else None
    res = export_for_serving(keras_model, out or "saved_models", name, class_names=info["class_names"],
                             image_size=info["image_size"], metadata={**info["metadata"], **extra},
                             warmup_images=warm, multilabel=info["multilabel"], overwrite=overwrite)
    exported = load_exported(res.path)
    n = min(n_verify, len(x_held))
    raws = _raw_pixels(heldout, n)
    got = np.concatenate([exported.predict_images(r[None]) for r in raws])
    diff = float(np.abs(got - p_keras[:n]).max())
    if diff > PREDICTION_TOLERANCE["none"]:
        shutil.rmtree(res.path, ignore_errors=True)
        raise CXRExportMismatchError(res.path, f"SavedModel predicts up to {diff:.3g} away from Keras on {n} "
                                               f"held-out images (tolerance {PREDICTION_TOLERANCE['none']})")
    # held-out quality through the serving path proper: encoded files through serving_default
    # (raw pixels through predict_images for in-memory data). Feeding it the model-ready
    # batch instead would min-max scale those images a second time.
    if heldout.in_memory:
        p_exp = np.concatenate([exported.predict_images(r[None]) for r in _raw_pixels(heldout, len(heldout))])
    else:
        p_exp = exported.predict_bytes([Path(p).read_bytes() for p in heldout.items])
    info["verification"] = {"images": n, "max_abs_diff_vs_keras": diff, "tolerance": PREDICTION_TOLERANCE["none"]}
    info["heldout"] = _compare_quality(res.path, y_held, p_keras, p_exp, info["threshold"], info["multilabel"],
                                       "none", 1.0, False)
    info["file"] = res.path.name
    info["bytes"] = res.sizes["total_bytes"]
    meta_path = res.path / "assets.extra" / METADATA_FILE
    # the checks join export_for_serving's metadata file (the copy inside the graph predates them)
    stored = json.loads(meta_path.read_text())
    stored.update({k: info[k] for k in ("verification", "heldout")})
    meta_path.write_text(json.dumps(stored, indent=2, sort_keys=True))
    card = res.path / "assets.extra" / "model_card.md"
    card.write_text(model_card(info))
    return PortableExport(res.path, "savedmodel", "none", info, meta_path, card)


# --------------------------------------------------------------------------- model card
def model_card(info: dict) -> str:
    """The export's model card (:mod:`cxr_tf.evaluation.model_card`): its classes, operating
    point and calibration, and the checks it passed; with the source run's metrics when the
    run folder is reachable."""
    from cxr_tf.evaluation.model_card import card_from_run, render_card

    names = list(info["class_names"])
    base = {"title": f"Model card: {info['model_name']} ({info['format']}, quantisation {info['quantize']})",
            "class_names": names, "export": info,
            "config": {"image_size": info["image_size"], "multilabel": info["multilabel"]},
            "calibration": info.get("calibration")}
    if info.get("threshold") is not None and len(names) == 2:
        base["operating_points"] = {"rule": "the source's validation-chosen threshold",
                                    "thresholds": {names[1]: info["threshold"]}}
    run = (info.get("metadata") or {}).get("run_dir")
    if run and (Path(str(run)) / "metrics.json").is_file():
        card = card_from_run(run)
        card.update({k: v for k, v in base.items() if v is not None or k not in card})
        return render_card(card)
    return render_card(base)


def _cxr_tf_version() -> str:
    from cxr_tf.export.savedmodel.write import _cxr_tf_version as v

    return v()


def _tf_version() -> str:
    import tensorflow as tf

    return tf.__version__


# --------------------------------------------------------------------------- CLI
def add_arguments(p) -> None:
    p.add_argument("--model", required=True,
                   help="run folder (model.json + checkpoints/) or saved_models/NAME/VERSION")
    p.add_argument("--format", default="onnx", choices=FORMATS, help="export format")
    p.add_argument("--quantize", default="none", choices=("none", "float16", "dynamic", "int8"),
                   help="TFLite: none|float16|dynamic|int8; ONNX: none|dynamic|int8; SavedModel: none")
    p.add_argument("--out", default=None, help="output folder (default exports/NAME; savedmodel: saved_models)")
    p.add_argument("--name", default=None, help="export name (default: the model's)")
    p.add_argument("--force", action="store_true",
                   help="keep a quantised export whose held-out accuracy/AUC drop exceeds --max-drop")
    p.add_argument("--max-drop", type=float, default=MAX_DROP,
                   help=f"largest accepted accuracy/AUC drop of a quantised export (default {MAX_DROP})")
    p.add_argument("--overwrite", action="store_true", help="replace existing export files")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    p.add_argument("--data-dir", default=None, help="data for calibration/verification (default: the run's)")
    p.add_argument("--data-format", default="auto", help="layout of --data-dir (auto, kermany, folder, npz, csv)")
    p.add_argument("--splits", default=None, help="splits.csv naming train and test items (default: the run's)")


def run(a) -> PortableExport:
    train = heldout = None
    if a.data_dir or a.splits:
        if not (a.data_dir and a.splits):
            raise CXRConfigError("--data-dir and --splits go together")
        src = resolve_model_source(a.model)
        train, heldout = split_data(a.data_dir, a.splits, src.class_names, a.data_format)
        model = src
    else:
        model = a.model
    res = export_model(model, a.format, quantize=a.quantize, out=a.out, name=a.name, force=a.force,
                       overwrite=a.overwrite, opset=a.opset, train_data=train, heldout_data=heldout,
                       max_drop=a.max_drop)
    ho = res.metadata["heldout"]
    logger.info(f"wrote {res.path} ({res.metadata['bytes']:,} bytes); verified on "
                f"{res.metadata['verification']['images']} held-out images (max diff "
                f"{res.metadata['verification']['max_abs_diff_vs_keras']:.2g}); held-out accuracy "
                f"{ho['export']['accuracy']:.4f} vs Keras {ho['keras']['accuracy']:.4f}; card {res.model_card_path}")
    return res


__all__ = ["CXRExportError", "FORMATS", "ModelSource", "PortableExport", "export_model", "load_runner",
           "model_card", "register_source_resolver", "resolve_model_source", "split_data"]
