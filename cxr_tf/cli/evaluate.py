"""Score an exported model on any dataset folder: ``python -m cxr_tf.cli.evaluate``.

This is how results on data the project never saw are measured: the model is the
SavedModel exactly as TF Serving would load it, images go through its
``serving_default`` signature as encoded bytes (in-memory datasets through
``predict_images``), and the output is the standard metrics.json + report.md + plots.

Example::

    python -m cxr_tf.cli.evaluate --model saved_models/pneumonia_3class_resnet50/1 \\
        --data-dir $CXR_DATA_DIR/kermany224 --format kermany --out runs/eval_kermany
"""
from __future__ import annotations

import argparse
import logging
import datetime as _dt
import os
import sys
import time
from pathlib import Path

import numpy as np

from cxr_tf.datasets.relabel import load_for_model
from cxr_tf.errors import CXRDatasetError, run_main


logger = logging.getLogger("cxr_tf.cli")

def _training_data_name(model) -> str | None:
    """The folder name of the data an export was trained on (from its portable metadata)."""
    cfg = (model.metadata.get("metadata") or {}).get("config") or {}
    d = cfg.get("data_dir")
    return Path(str(d)).name if d else None


def _predict(models, ds, batch_size: int, tta: int, seed: int) -> tuple[np.ndarray, dict | None]:
    """Mean probabilities over ensemble members and TTA views; uncertainty when > 1 member."""
    from cxr_tf.evaluation.predictive_uncertainty import combine

    members = []
    for model in models:
        if tta > 1:
            from cxr_tf.data import image_dataset
            from cxr_tf.data.tta import predict_tta

            x = np.stack([im.numpy() for im, _ in image_dataset(ds, model.image_size)])
            members += list(predict_tta(model.predict_images, x, tta, seed=seed))
        elif ds.in_memory:
            arr = np.asarray(ds.items, np.float32)
            members.append(model.predict_images(arr[..., None] if arr.ndim == 3 else arr))
        else:
            members.append(np.concatenate([
                _predict_files(model, ds.items[i:i + batch_size], ds.item_names[i:i + batch_size], batch_size)
                for i in range(0, len(ds), batch_size)]))
    if len(members) == 1:
        return members[0], None
    c = combine(np.stack(members), multilabel=bool(getattr(models[0], "multilabel", False)))
    return c["mean"], c


def evaluate_exported(model_path, data_dir: str, fmt: str = "auto", out: str | None = None,
                      threshold: float | None = None, on_error: str = "raise", batch_size: int = 32,
                      splits: str | None = None, split_name: str = "test",
                      cache_dir: str | None = None, tta: int = 1, seed: int = 0,
                      operating_points: str | None = None) -> dict:
    """Evaluate an exported SavedModel (or an ensemble: a list of them) on a dataset.

    Args:
        model_path: a SavedModel version folder, or a list of them (a deep ensemble: their
            probabilities are averaged; the predictive entropy and mutual information per
            image go to ``predictions.csv``).
        tta: test-time augmentation views per image (1: none); averaged like members.
        seed: the TTA views' seed.
        operating_points: a run's ``operating_points.json`` (or the run folder holding it):
            per-class thresholds to decide with instead of the export's own.

    Decisions follow the served graph: per-class thresholds (the export's
    ``class_thresholds``, or ``operating_points``) by
    :func:`cxr_tf.evaluation.calibration.decide`, a binary model's threshold on P(class 1),
    else argmax; ``metrics.json`` / the report name the thresholds used and
    ``predictions.npz`` holds each image's decision (``y_pred``, ``decision``).

    Returns the metrics dict.
    """
    from cxr_tf.data import prepare_items
    from cxr_tf.data.pipeline import default_cache_dir
    from cxr_tf.datasets import load_splits
    from cxr_tf.evaluation import evaluate_predictions
    from cxr_tf.evaluation.predictive_uncertainty import check_compatible
    from cxr_tf.export import load_exported

    t0 = time.time()
    paths = [model_path] if isinstance(model_path, (str, os.PathLike)) else list(model_path)
    models = [load_exported(p) for p in paths]
    check_compatible([{"class_names": list(m.class_names)} for m in models])
    model = models[0]
    ds = load_for_model(data_dir, fmt, model.class_names, on_error)
    listed_skipped = list(getattr(ds, "skipped", None) or [])  # subset() starts a new dataset
    if splits:
        ds = ds.subset(load_splits(splits, ds) == split_name)
    ds.skipped = listed_skipped
    cache_dir = cache_dir or default_cache_dir()
    # Files the graph cannot decode as they are (DICOM, TIFF, BMP, ...) are converted
    # once into this folder: say where, so nothing lands under ~/.cache unannounced.
    logger.info(f"decode cache for files the model cannot read directly: {cache_dir}")
    ds, skipped = prepare_items(ds, cache_dir=cache_dir, on_error=on_error)
    if len(ds) == 0:
        raise CXRDatasetError(data_dir, "no usable images to evaluate")
    prob, unc = _predict(models, ds, batch_size, max(1, int(tta)), seed)
    threshold, class_thresholds, source = operating_point(models, threshold, operating_points)
    if class_thresholds is not None:
        logger.info(f"deciding by per-class thresholds ({source}), the served graph's rule: "
              + ", ".join(f"{c} {'-' if t is None else f'{t:.4g}'}" for c, t in zip(model.class_names,
                                                                                    class_thresholds)))
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = out or os.path.join("runs", "evaluate", stamp)
    os.makedirs(out, exist_ok=True)
    if skipped:
        from cxr_tf.io import write_skip_list

        write_skip_list(skipped, os.path.join(out, "skipped.csv"))
    cfg = {"model": [str(p) for p in paths] if len(paths) > 1 else str(paths[0]), "data_dir": str(data_dir),
           "format": fmt, "images": len(ds), "skipped": len(skipped), "threshold": threshold,
           "class_thresholds": None if class_thresholds is None else dict(zip(model.class_names, class_thresholds)),
           "thresholds_from": source, "tta_views": tta, "ensemble_members": len(models)}
    name = Path(str(paths[0])).parent.name + (f" +{len(paths) - 1} (ensemble)" if len(paths) > 1 else "")
    metrics = evaluate_predictions(ds.class_index(), prob, model.class_names, out,
                                   title=f"{name} v{Path(str(paths[0])).name} on {Path(data_dir).name}",
                                   config=cfg, threshold=threshold, class_thresholds=class_thresholds, meta=ds.meta)
    from cxr_tf.evaluation.report import write_metrics_json

    metrics["thresholds_from"] = source  # which operating point decided, beside the thresholds themselves
    write_metrics_json(os.path.join(out, "metrics.json"), metrics)
    y_pred = _decisions(prob, threshold, class_thresholds)
    np.savez_compressed(os.path.join(out, "predictions.npz"), y_true=ds.class_index(), y_prob=prob,
                        items=np.asarray(ds.item_names), y_pred=y_pred,
                        decision=np.asarray(model.class_names)[y_pred])
    if unc is not None:
        import pandas as pd

        table = pd.DataFrame({"item": ds.item_names, "true": np.asarray(model.class_names)[ds.class_index()],
                              **{f"p_{c}": prob[:, j] for j, c in enumerate(model.class_names)},
                              "entropy": unc["entropy"], "mutual_information": unc["mutual_information"]})
        table.to_csv(os.path.join(out, "predictions.csv"), index=False, encoding="utf-8", errors="surrogateescape")
        metrics["uncertainty"] = {"members": unc["n_members"], "mean_entropy": float(unc["entropy"].mean()),
                                  "mean_mutual_information": float(unc["mutual_information"].mean())}
    logger.info(f"evaluated {len(ds)} images in {time.time() - t0:.0f}s: accuracy "
          f"{metrics['accuracy']['value']:.3f}, macro AUC {metrics['macro_auc']['value'] or float('nan'):.3f}; "
          f"report {os.path.join(out, 'report.md')}")
    return metrics


def _float32(t) -> float | None:
    """A threshold as the served graph holds it (float32), or None for a class without one."""
    if t is None or not np.isfinite(float(t)):
        return None
    return float(np.float32(t))


def read_operating_points(path, class_names: list[str]) -> list[float | None]:
    """Per-class thresholds, in ``class_names`` order, from a run's ``operating_points.json``
    (``{"rule": ..., "thresholds": {class: t}}``) or the run folder holding it."""
    import json

    from cxr_tf.errors import CXRConfigError

    p = Path(path)
    p = p / "operating_points.json" if p.is_dir() else p
    if not p.is_file():
        raise CXRConfigError(f"--operating-points {path}: no operating_points.json there")
    thr = json.loads(p.read_text()).get("thresholds") or {}
    missing = [c for c in class_names if c not in thr]
    if missing:
        raise CXRConfigError(f"--operating-points {p}: no threshold for the model's classes {missing} "
                             f"(it has {sorted(thr)})")
    return [_float32(thr[c]) for c in class_names]


def operating_point(models, threshold, operating_points) -> tuple[float | None, list | None, str]:
    """``(binary threshold, per-class thresholds, where they came from)`` for the decisions.

    ``--threshold`` wins (binary); then ``--operating-points`` (a binary model uses its
    positive class's threshold, the binary rule; more classes all of them); then a single
    export's own ``class_thresholds`` / binary ``threshold`` (what its served decision
    applies). An ensemble's average has no validated operating point: argmax unless given."""
    names = list(models[0].class_names)
    if threshold is not None:
        return float(threshold), None, "--threshold"
    if operating_points:
        ct = read_operating_points(operating_points, names)
        if len(names) == 2 and ct[1] is not None:
            return ct[1], None, f"--operating-points {operating_points}"
        return None, ct, f"--operating-points {operating_points}"
    if len(models) > 1:
        return None, None, "argmax (ensemble average: no validated operating point)"
    model = models[0]
    if model.class_thresholds and not model.multilabel:
        return None, [_float32(t) for t in model.class_thresholds], "export metadata class_thresholds"
    if len(names) == 2 and model.threshold is not None:
        return float(model.threshold), None, "export metadata threshold"  # top level, or nested in older exports
    return None, None, "argmax (the export has no operating point)"


def _decisions(prob, threshold, class_thresholds) -> np.ndarray:
    """Per-image class indices by the rule the metrics used."""
    from cxr_tf.evaluation.calibration import decide

    if class_thresholds is not None:
        return decide(prob, class_thresholds).astype(np.int64)
    if threshold is not None:
        return (prob[:, 1] >= threshold).astype(np.int64)
    return prob.argmax(1).astype(np.int64)


def evaluate_sites(model_path, data_dirs, fmt: str = "auto", out: str | None = None, **kwargs) -> "pd.DataFrame":
    """:func:`evaluate_exported` on several datasets, one sub-folder each, and one table.

    A dataset whose folder name is the one the model was trained on is ``internal`` (pass
    ``splits`` to score only its held-out split), every other one ``external``. Writes
    ``sites.csv`` and ``sites.md`` (accuracy and macro AUC with 95% CIs; binary tasks:
    sensitivity and specificity at the model's threshold).
    """
    import pandas as pd

    from cxr_tf.evaluation import fmt_ci
    from cxr_tf.export import load_exported

    paths = [model_path] if isinstance(model_path, (str, os.PathLike)) else list(model_path)
    trained_on = _training_data_name(load_exported(paths[0]))
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = out or os.path.join("runs", "evaluate", stamp)
    rows, seen = [], {}
    for d in data_dirs:
        name = Path(d).name or Path(d).parent.name
        seen[name] = seen.get(name, 0) + 1
        sub = name if seen[name] == 1 else f"{name}_{seen[name]}"
        split_kw = kwargs if name == trained_on else {k: v for k, v in kwargs.items() if k not in ("splits", "split_name")}
        m = evaluate_exported(paths, d, fmt, os.path.join(out, sub), **split_kw)
        row = {"dataset": name, "site": "internal" if name == trained_on else "external", "images": m["n"],
               "accuracy": fmt_ci(m["accuracy"], "wilson_ci"), "macro_auc": fmt_ci(m["macro_auc"], "bootstrap_ci"),
               "accuracy_value": m["accuracy"]["value"], "macro_auc_value": m["macro_auc"]["value"]}
        if m["n_classes"] == 2:
            pos = m["class_names"][1]
            row["sensitivity"] = fmt_ci(m["per_class"][pos]["sensitivity"], "wilson_ci")
            row["specificity"] = fmt_ci(m["per_class"][pos]["specificity"], "wilson_ci")
        rows.append(row)
    table = pd.DataFrame(rows)
    os.makedirs(out, exist_ok=True)
    table.to_csv(os.path.join(out, "sites.csv"), index=False)
    shown = [c for c in table.columns if not c.endswith("_value")]
    md = ["# Internal vs external evaluation", "",
          f"Model: {', '.join(str(p) for p in paths)}; trained on `{trained_on or 'unknown'}` (internal). "
          "95% CIs: Wilson (proportions), bootstrap (AUC).", "",
          "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    md += ["| " + " | ".join(str(r[c]) for c in shown) + " |" for r in rows]
    Path(out, "sites.md").write_text("\n".join(md) + "\n")
    logger.info(Path(out, "sites.md").read_text())
    return table


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
    p.add_argument("--model", required=True, action="append",
                   help="SavedModel version folder, e.g. saved_models/NAME/1; repeat it for a deep ensemble "
                        "(probabilities averaged, entropy per image in predictions.csv)")
    p.add_argument("--data-dir", required=True, action="append",
                   help="dataset folder, .npz or .csv manifest; repeat it to score several sites into one "
                        "internal-vs-external table (sites.md)")
    p.add_argument("--format", default="auto", choices=["auto", "kermany", "folder", "npz", "csv"],
                   help="dataset layout (auto: detected from the folder)")
    p.add_argument("--out", default=None, help="output folder (default runs/evaluate/<UTC timestamp>)")
    p.add_argument("--threshold", type=float, default=None, help="binary decision threshold (default: the model's)")
    p.add_argument("--on-error", default="raise", choices=["raise", "skip"],
                   help="bad image files: stop naming the first (raise) or leave them out, listed with their "
                        "cause in <out>/skipped.csv (skip)")
    p.add_argument("--cache-dir", default=None,
                   help="where files the model cannot decode directly (DICOM, TIFF, BMP, ...) are cached as "
                        "16-bit PNG (default ~/.cache/cxr_tf/decoded)")
    p.add_argument("--batch-size", type=int, default=32, help="images per served batch")
    p.add_argument("--splits", default=None, help="a run's splits.csv: evaluate only one split of it "
                                                  "(with several --data-dir: the internal dataset only)")
    p.add_argument("--split-name", default="test", help="which split of --splits to score")
    p.add_argument("--tta", type=int, default=1,
                   help="test-time augmentation views per image (1 = none; mild seeded shifts and rotations, "
                        "view 0 the original), averaged; entropy per image in predictions.csv")
    p.add_argument("--seed", type=int, default=0, help="seed of the TTA views")
    p.add_argument("--operating-points", default=None,
                   help="a run's operating_points.json (or its run folder): decide with these per-class "
                        "thresholds (the served graph's rule) instead of the export's own; default: the "
                        "export's class_thresholds / threshold, argmax when it has none")


def run(a) -> None:
    """``cxr-tf evaluate`` / ``python -m cxr_tf.cli.evaluate`` with parsed arguments."""
    models = a.model if len(a.model) > 1 else a.model[0]
    kw = dict(threshold=a.threshold, on_error=a.on_error, batch_size=a.batch_size, splits=a.splits,
              split_name=a.split_name, cache_dir=a.cache_dir, tta=a.tta, seed=a.seed,
              operating_points=a.operating_points)
    if len(a.data_dir) > 1:
        evaluate_sites(models, a.data_dir, a.format, a.out, **kw)
    else:
        evaluate_exported(models, a.data_dir[0], a.format, a.out, **kw)


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    p = argparse.ArgumentParser(prog="python -m cxr_tf.cli.evaluate", description=__doc__.split("\n")[0])
    add_arguments(p)
    a = p.parse_args(argv)
    return run_main(run, a)


if __name__ == "__main__":
    sys.exit(main())
