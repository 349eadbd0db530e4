"""Score an exported model on any dataset folder: ``python -m cxr_tf.evaluate``.

This is how results on data the project never saw are measured: the model is the
SavedModel exactly as TF Serving would load it, images go through its
``serving_default`` signature as encoded bytes (in-memory datasets through
``predict_images``), and the output is the standard metrics.json + report.md + plots.

Example::

    python -m cxr_tf.evaluate --model saved_models/pneumonia_3class_resnet50/1 \\
        --data-dir $CXR_DATA_DIR/kermany224 --format kermany --out runs/eval_kermany
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import time
from pathlib import Path

import numpy as np

from cxr_tf.errors import CXRDatasetError, run_main


def _match_classes(ds, model_classes: list[str], source=None):
    """Relabel the dataset's classes onto the model's (case-insensitive names)."""
    lower = {c.lower(): c for c in model_classes}
    mapping, unknown = {}, []
    for c in ds.class_names:
        key = c.lower()
        if key in lower:
            mapping[c] = lower[key]
        else:
            unknown.append(c)
    if unknown:
        raise CXRDatasetError(
            source, f"dataset classes {unknown} are not among the model's classes {model_classes}; "
            "rename the folders/labels or evaluate a model trained on these classes")
    return ds.select_classes(mapping, model_classes)


def load_for_model(data_dir: str, fmt: str, model_classes: list[str], on_error: str = "raise"):
    from cxr_tf.datasets import KERMANY_3CLASS, KERMANY_PNEUMONIA, detect_format, load_dataset

    fmt = detect_format(data_dir) if fmt == "auto" else fmt
    kwargs = {}
    if fmt == "kermany":
        if [c.lower() for c in model_classes] == KERMANY_3CLASS:
            kwargs["classes"] = "3class"
        elif [c.lower() for c in model_classes] == KERMANY_PNEUMONIA:
            kwargs["classes"] = "pneumonia"
        else:
            raise CXRDatasetError(data_dir, f"Kermany data has no classes matching the model's {model_classes}")
        kwargs["on_error"] = on_error
    elif fmt in ("folder", "csv"):
        kwargs["on_error"] = on_error  # links out of the data root: per-item errors
    elif fmt == "npz":
        kwargs["class_names"] = None
    ds = load_dataset(data_dir, fmt, **kwargs)
    if fmt == "npz" and len(ds.class_names) == len(model_classes) and all(c.isdigit() for c in ds.class_names):
        ds.class_names = list(model_classes)  # unnamed MedMNIST columns follow the model's order
    listed_skipped = list(getattr(ds, "skipped", None) or [])
    ds = _match_classes(ds, model_classes, data_dir)
    ds.skipped = listed_skipped  # entries the loader dropped stay in the skip list
    return ds


def evaluate_exported(model_path: str, data_dir: str, fmt: str = "auto", out: str | None = None,
                      threshold: float | None = None, on_error: str = "raise", batch_size: int = 32,
                      splits: str | None = None, split_name: str = "test",
                      cache_dir: str | None = None) -> dict:
    """Evaluate an exported SavedModel on a dataset; returns the metrics dict."""
    from cxr_tf.data import prepare_items
    from cxr_tf.data.pipeline import default_cache_dir
    from cxr_tf.datasets import load_splits
    from cxr_tf.evaluation import evaluate_predictions
    from cxr_tf.export import load_exported

    t0 = time.time()
    model = load_exported(model_path)
    ds = load_for_model(data_dir, fmt, model.class_names, on_error)
    listed_skipped = list(getattr(ds, "skipped", None) or [])  # subset() starts a new dataset
    if splits:
        ds = ds.subset(load_splits(splits, ds) == split_name)
    ds.skipped = listed_skipped
    cache_dir = cache_dir or default_cache_dir()
    # Files the graph cannot decode as they are (DICOM, TIFF, BMP, ...) are converted
    # once into this folder: say where, so nothing lands under ~/.cache unannounced.
    print(f"[cxr_tf] decode cache for files the model cannot read directly: {cache_dir}")
    ds, skipped = prepare_items(ds, cache_dir=cache_dir, on_error=on_error)
    if len(ds) == 0:
        raise CXRDatasetError(data_dir, "no usable images to evaluate")
    if ds.in_memory:
        prob = model.predict_images(np.asarray(ds.items, np.float32)[..., None] if np.asarray(ds.items).ndim == 3
                                    else np.asarray(ds.items, np.float32))
    else:
        prob = np.concatenate([_predict_files(model, ds.items[i:i + batch_size], ds.item_names[i:i + batch_size],
                                              batch_size) for i in range(0, len(ds), batch_size)])
    if threshold is None and len(model.class_names) == 2:
        threshold = model.threshold  # top level, or nested in older exports
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = out or os.path.join("runs", "evaluate", stamp)
    os.makedirs(out, exist_ok=True)
    if skipped:
        from cxr_tf.io import write_skip_list

        write_skip_list(skipped, os.path.join(out, "skipped.csv"))
    cfg = {"model": str(model_path), "data_dir": str(data_dir), "format": fmt, "images": len(ds),
           "skipped": len(skipped), "threshold": threshold}
    metrics = evaluate_predictions(ds.class_index(), prob, model.class_names, out,
                                   title=f"{Path(model_path).parent.name} v{Path(model_path).name} on {Path(data_dir).name}",
                                   config=cfg, threshold=threshold, meta=ds.meta)
    np.savez_compressed(os.path.join(out, "predictions.npz"), y_true=ds.class_index(), y_prob=prob,
                        items=np.asarray(ds.item_names))
    print(f"[cxr_tf] evaluated {len(ds)} images in {time.time() - t0:.0f}s: accuracy "
          f"{metrics['accuracy']['value']:.3f}, macro AUC {metrics['macro_auc']['value'] or float('nan'):.3f}; "
          f"report {os.path.join(out, 'report.md')}")
    return metrics


def _predict_files(model, paths, names, batch_size: int) -> np.ndarray:
    """Probabilities for a batch of files; a batch the signature refuses is retried one
    file at a time so the error names the file (validation makes this a last resort)."""
    from cxr_tf.errors import CXRImageError

    data = [Path(p).read_bytes() for p in paths]
    try:
        return model.predict_bytes(data, batch_size)
    except CXRImageError:
        for name, b in zip(names, data):
            try:
                model.predict_bytes([b], 1)
            except CXRImageError as e:
                raise CXRImageError(name, f"the model's decoder refused it: {e.cause}") from None
        raise


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="SavedModel version folder, e.g. saved_models/NAME/1")
    p.add_argument("--data-dir", required=True, help="dataset folder, .npz or .csv manifest")
    p.add_argument("--format", default="auto", choices=["auto", "kermany", "folder", "npz", "csv"])
    p.add_argument("--out", default=None, help="output folder (default runs/evaluate/<UTC timestamp>)")
    p.add_argument("--threshold", type=float, default=None, help="binary decision threshold (default: the model's)")
    p.add_argument("--on-error", default="raise", choices=["raise", "skip"],
                   help="bad image files: stop naming the first (raise) or leave them out, listed with their "
                        "cause in <out>/skipped.csv (skip)")
    p.add_argument("--cache-dir", default=None,
                   help="where files the model cannot decode directly (DICOM, TIFF, BMP, ...) are cached as "
                        "16-bit PNG (default ~/.cache/cxr_tf/decoded)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--splits", default=None, help="a run's splits.csv: evaluate only one split of it")
    p.add_argument("--split-name", default="test")


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    p = argparse.ArgumentParser(prog="python -m cxr_tf.evaluate", description=__doc__.split("\n")[0])
    add_arguments(p)
    a = p.parse_args(argv)
    return run_main(evaluate_exported, a.model, a.data_dir, a.format, a.out, a.threshold, a.on_error,
                    a.batch_size, a.splits, a.split_name, a.cache_dir)


if __name__ == "__main__":
    sys.exit(main())
