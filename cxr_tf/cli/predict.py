"""``cxr-tf predict``: probabilities and decisions for unlabelled images, as a CSV.

    cxr-tf predict --model preset:NAME | saved_models/NAME/VERSION | RUN_DIR | model.keras \\
                   IMAGES_OR_DIR... --out predictions.csv [--threshold T] [--on-error skip|raise]

Every file goes through the project's one decoding contract (:mod:`cxr_tf.io.graph`): a
PNG / JPEG is decoded by the graph's own decoder, anything else (DICOM with its
photometric and VOI handling, TIFF, BMP, ...) once by :func:`cxr_tf.io.read_image` into
the decode cache; then the same TF ops as training and serving prepare it
(:func:`cxr_tf.data.preprocess.prepare_float_batch`), so a file gives the same input
whichever path it takes. Folders are searched recursively for image files
(known extensions, or none: DICOMs often have none). Unreadable files are listed with
their cause in ``<out stem>_skipped.csv`` (``--on-error skip``, the default).

Columns: ``path``, ``p_<class>`` per class, ``predicted`` (most probable class),
``decision`` and ``threshold``: binary models decide on the second class with the
model's operating threshold (preset metadata, export metadata or the run's
``metrics.json``; ``--threshold`` overrides; 0.5 when none is known); multi-class models
decide by argmax (threshold empty), or, with per-class thresholds, by the served graph's rule; multi-label models list every class at or above its
threshold.
"""
from __future__ import annotations

import argparse
import logging
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from cxr_tf.errors import CXRConfigError, CXRImageError, CXRModelError, run_main

#: Extensions a folder search picks up (files named explicitly are always tried).
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".gif", ".tif", ".tiff"}


@dataclasses.dataclass
class Predictor:
    """A model ready for prediction, whatever it was loaded from."""

    description: str
    class_names: list
    image_size: int
    multilabel: bool
    thresholds: dict  # class name -> threshold, from the model's own metadata
    predict: Callable[[list], np.ndarray]  # list of (H, W) float arrays -> (N, C) probabilities


logger = logging.getLogger("cxr_tf.cli")

def graph_preprocessor(image_size: int):
    """``prepare_float_batch`` traced once with unknown height and width (one graph for
    every image size, as tf.data and the exported signatures run it)."""
    import tensorflow as tf

    from cxr_tf.data.preprocess import prepare_float_batch

    return tf.function(lambda x: prepare_float_batch(x, image_size),
                       input_signature=[tf.TensorSpec([None, None, None, None], tf.float32)])


def _keras_predictor(model, description: str, thresholds: dict, temperature: float | None = None) -> Predictor:
    """``temperature``: the calibration the thresholds were chosen under (a preset's
    metadata), applied to the probabilities as the served graph applies it."""
    size = int(model.input.shape[1])
    prepare = graph_preprocessor(size)
    multilabel = bool(getattr(model, "multilabel", False))

    def predict(arrays):
        x = np.concatenate([prepare(a[None, ..., None].astype(np.float32)).numpy() for a in arrays])
        prob = np.asarray(model.predict(x, verbose=0, batch_size=len(x)))
        if temperature:
            from cxr_tf.evaluation.calibration import apply_temperature

            prob = apply_temperature(prob, temperature, multilabel).astype(np.float32)
        return prob

    names = list(getattr(model, "class_names", None) or [str(i) for i in range(int(model.output.shape[-1]))])
    return Predictor(description, names, size, bool(getattr(model, "multilabel", False)), thresholds, predict)


def _binary_threshold(names: list, value) -> dict:
    return {names[1]: float(value)} if value is not None and len(names) == 2 else {}


def load_predictor(spec: str) -> Predictor:
    """``preset:NAME`` / a preset folder / a checked URL, a SavedModel version folder, a run
    folder (``model.json`` + ``checkpoints/best.weights.h5``) or a ``.keras`` file."""
    from cxr_tf.models import presets as P

    s = os.fspath(spec)
    path = Path(s)
    # A run folder has a config.json too; only a preset has metadata.json beside it.
    if s.startswith((P.PREFIX, "https://", "http://")) or (
            (path / P.CONFIG_FILE).is_file() and (path / P.METADATA_FILE).is_file()):
        from cxr_tf.models import CXRClassifier

        model = CXRClassifier.from_preset(s)
        p = model.preset
        cal = p.metadata.calibration or {}
        return _keras_predictor(model, f"preset {p.name} ({p.source}: {p.path})", dict(p.metadata.thresholds),
                                temperature=cal.get("temperature"))
    if (path / "saved_model.pb").is_file():
        from cxr_tf.export import load_exported

        exported = load_exported(path)
        # the served operating point (top level; nested in older exports): what the served
        # decision applies, on the (calibrated, where exported) probabilities predict_images returns
        if exported.class_thresholds:
            thr = dict(zip(exported.class_names, exported.class_thresholds))
        else:
            thr = _binary_threshold(exported.class_names, exported.threshold)

        def predict(arrays):
            # One call per image: the signature scales and resizes any size itself, exactly
            # as prepare_float_batch does (it is the same function inside the export).
            return np.concatenate([exported.predict_images(a[None, ..., None]) for a in arrays])

        return Predictor(f"SavedModel {path}", exported.class_names, exported.image_size, exported.multilabel,
                         dict(thr), predict)
    if (path / "model.json").is_file():
        from cxr_tf.models import CXRClassifier

        ckpt = path / "checkpoints" / "best.weights.h5"
        if not ckpt.is_file():
            raise CXRModelError(f"{path}: a run folder without checkpoints/best.weights.h5 (unfinished run?)")
        model = CXRClassifier.from_config(json.loads((path / "model.json").read_text())["config"])
        model.load_weights(str(ckpt))
        thr, temperature = None, None
        if (path / "metrics.json").is_file():
            thr = json.loads((path / "metrics.json").read_text()).get("threshold")
        if (path / "calibration.json").is_file():  # the run's threshold lives on its calibrated scale
            temperature = json.loads((path / "calibration.json").read_text()).get("temperature")
        return _keras_predictor(model, f"run {path}", _binary_threshold(model.class_names, thr),
                                temperature=temperature)
    if path.is_file() and path.suffix == ".keras":
        import keras

        model = keras.models.load_model(path, compile=False)
        return _keras_predictor(model, f"Keras file {path}", {})
    raise CXRModelError(f"{s}: not a model; give preset:NAME, a preset folder, saved_models/NAME/VERSION, a run "
                        "folder or a .keras file")


def find_images(inputs) -> list[str]:
    """Files as given, and image files found recursively in folders (sorted, stable order)."""
    out = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = [q for q in p.rglob("*") if q.is_file() and not q.name.startswith(".")
                     and (q.suffix.lower() in IMAGE_EXTENSIONS or q.suffix == "")]
            out += sorted(str(q) for q in found)
        else:
            out.append(str(p))  # a missing file is reported (skipped or raised) like a bad one
    return out


def decide(prob: np.ndarray, names: list, multilabel: bool, thresholds: dict) -> tuple[list, list]:
    """Per-row decision and the threshold text used (see the module docstring)."""
    if multilabel:
        thr = [float(thresholds.get(c, 0.5)) for c in names]
        dec = [";".join(c for c, v, t in zip(names, row, thr) if v >= t) or "none" for row in prob]
        return dec, [";".join(f"{c}={t:g}" for c, t in zip(names, thr))] * len(prob)
    if len(names) == 2:
        t = float(thresholds.get(names[1], 0.5))
        return [names[1] if row[1] >= t else names[0] for row in prob], [t] * len(prob)
    if thresholds and all(c in thresholds for c in names):
        # per-class operating points: the rule the exported graph applies (shared, tested against it)
        from cxr_tf.evaluation.calibration import decide as decide_by_class

        idx = decide_by_class(prob, [thresholds[c] for c in names])
        text = ";".join(f"{c}={float(thresholds[c]):g}" for c in names)
        return [names[int(i)] for i in idx], [text] * len(prob)
    return [names[int(i)] for i in prob.argmax(1)], [""] * len(prob)


def decode_file(path: str, cache_dir=None) -> np.ndarray:
    """A file's pixels as every other path decodes them: ``(H, W)`` float32, unscaled."""
    import tensorflow as tf

    from cxr_tf.data.pipeline import default_cache_dir
    from cxr_tf.data.preprocess import decode_image
    from cxr_tf.io import graph_input

    src = graph_input(path, cache_dir=cache_dir or default_cache_dir())
    return decode_image(tf.io.read_file(os.fsencode(src))).numpy()[..., 0]


def predict_files(model, inputs, out: str = "predictions.csv", threshold: float | None = None,
                  on_error: str = "skip", batch_size: int = 32, verbose: int = 1, tta: int = 1,
                  seed: int = 0, cache_dir=None) -> dict:
    """Predict every image of ``inputs``; writes ``out`` (and the skip list). Returns a summary.

    ``model`` may be a list (a deep ensemble: probabilities averaged, thresholds of the
    first member unless ``threshold``); ``tta`` > 1 averages that many seeded views of each
    image. Either adds ``entropy`` and ``mutual_information`` columns.

    Raises:
        CXRConfigError: bad options, or no readable image at all.
        CXRImageError: an unreadable file with ``on_error="raise"``.
    """
    import keras
    import pandas as pd

    from cxr_tf.evaluation.predictive_uncertainty import check_compatible, combine
    from cxr_tf.io import write_skip_list

    if on_error not in ("skip", "raise"):
        raise CXRConfigError(f"--on-error must be skip or raise; received {on_error!r}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise CXRConfigError(f"--threshold must be in [0, 1]; received {threshold}")
    t0 = time.time()
    specs = [model] if isinstance(model, (str, os.PathLike)) else list(model)
    members = [load_predictor(m) for m in specs]
    check_compatible([{"class_names": m.class_names} for m in members])
    pred = members[0]
    thresholds = dict(pred.thresholds) if len(members) == 1 else {}
    source = "model metadata" if thresholds else "default 0.5"
    if threshold is not None:
        if len(pred.class_names) == 2 and not pred.multilabel:
            thresholds = {pred.class_names[1]: threshold}
        else:
            thresholds = {c: threshold for c in pred.class_names}
        source = "--threshold"
    files = find_images(inputs)
    if not files:
        raise CXRConfigError(f"no image files in {list(inputs)}")
    rows, skipped, batch, names = [], [], [], []
    bar = keras.utils.Progbar(len(files), unit_name="image", verbose=verbose)

    def views(m):
        if tta <= 1:
            return [m.predict(batch)]
        from cxr_tf.data.tta import tta_views

        prepare = graph_preprocessor(m.image_size)
        x = np.concatenate([prepare(a[None, ..., None].astype(np.float32)).numpy() for a in batch])
        # each view is model-ready already; predict() re-applies the (idempotent) scaling
        return [m.predict([v[..., 0] for v in view]) for view in tta_views(x, tta, seed=seed)]

    def flush():
        if batch:
            outs = [p for m in members for p in views(m)]
            unc = combine(np.stack(outs), pred.multilabel) if len(outs) > 1 else None
            prob = outs[0] if unc is None else unc["mean"]
            dec, thr = decide(prob, pred.class_names, pred.multilabel, thresholds)
            for k, (f, p, d, t) in enumerate(zip(names, prob, dec, thr)):
                rows.append({"path": f, **{f"p_{c}": float(v) for c, v in zip(pred.class_names, p)},
                             "predicted": pred.class_names[int(np.argmax(p))], "decision": d, "threshold": t,
                             **({} if unc is None else {"entropy": float(unc["entropy"][k]),
                                                         "mutual_information": float(unc["mutual_information"][k])})})
            batch.clear()
            names.clear()

    for i, f in enumerate(files, start=1):
        try:
            batch.append(decode_file(f, cache_dir))
            names.append(f)
        except CXRImageError as e:
            if on_error == "raise":
                raise
            skipped.append((f, e.cause))
        if len(batch) >= batch_size:
            flush()
        bar.update(i)
    flush()
    out_path = Path(out)
    skip_path = out_path.with_name(out_path.stem + "_skipped.csv")
    if skipped:
        write_skip_list(skipped, skip_path)
    elif skip_path.exists():
        skip_path.unlink()  # a stale list from an earlier run would mislead
    if not rows:
        raise CXRConfigError(f"none of the {len(files)} files could be read (causes in {skip_path})")
    from cxr_tf.io.atomic import atomic_path

    with atomic_path(out_path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    summary = {"model": pred.description, "images": len(rows), "skipped": len(skipped), "out": str(out_path),
               "skip_list": str(skip_path) if skipped else None, "thresholds": thresholds,
               "threshold_source": source, "seconds": round(time.time() - t0, 1)}
    if verbose:
        logger.info(f"{pred.description}: {len(rows)} images -> {out_path}"
              + (f"; {len(skipped)} skipped -> {skip_path}" if skipped else "")
              + (f"; thresholds {thresholds} ({source})" if len(pred.class_names) == 2 or pred.multilabel else ""))
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="IMAGES_OR_DIR", help="PNG, JPEG or DICOM files, or folders")
    p.add_argument("--model", required=True, action="append",
                   help="preset:NAME, a preset folder, saved_models/NAME/VERSION, a run folder or a .keras file; "
                        "repeat it for a deep ensemble (probabilities averaged, entropy per image)")
    p.add_argument("--out", default="predictions.csv", help="the CSV to write (skip list beside it)")
    p.add_argument("--threshold", type=float, default=None,
                   help="decision threshold (default: the model's own operating threshold, else 0.5)")
    p.add_argument("--on-error", default="skip", choices=["skip", "raise"],
                   help="unreadable files: list them in <out>_skipped.csv (skip) or stop (raise)")
    p.add_argument("--batch-size", type=int, default=32, help="images per prediction batch")
    p.add_argument("--tta", type=int, default=1,
                   help="test-time augmentation views per image (1 = none), averaged; adds entropy columns")
    p.add_argument("--seed", type=int, default=0, help="seed of the TTA views")
    p.add_argument("--cache-dir", default=None,
                   help="decode cache for DICOM, TIFF, BMP, ... (default ~/.cache/cxr_tf/decoded)")


def run(a) -> dict:
    models = a.model if len(a.model) > 1 else a.model[0]
    return predict_files(models, a.inputs, a.out, a.threshold, a.on_error, a.batch_size, tta=a.tta, seed=a.seed,
                         cache_dir=a.cache_dir)


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    p = argparse.ArgumentParser(prog="python -m cxr_tf.cli.predict", description=__doc__.split("\n")[0])
    add_arguments(p)
    return run_main(run, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
