"""The shared flow of a classification experiment.

data -> checked items -> patient-level split (saved) -> pipelines -> model under the
strategy -> fit with the standard callbacks -> best checkpoint -> validation
threshold -> test metrics, plots, report -> SavedModel export (verified).
Experiments call these steps; each step is usable on its own.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from cxr_tf.datasets import CXRDataset, load_dataset, load_splits, patient_split, save_splits, split_summary
from cxr_tf.datasets.splits import check_leakage
from cxr_tf.errors import CXRConfigError
from cxr_tf.training.inputs import train_pipeline  # noqa: F401  (experiments call common.train_pipeline)


logger = logging.getLogger("cxr_tf.training")
#: The experiments' shorthand for an INFO line (``[cxr_tf] ...``, cxr_tf.log).
log = logger.info


def setup_runtime(cfg):
    """Seeds, determinism, the dtype policy and the distribution strategy (before any other TF op)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from cxr_tf.training.precision import set_precision
    from cxr_tf.training.strategy import make_strategy

    strategy = make_strategy(cfg.strategy, cfg.cpu_devices)
    if cfg.strategy == "multi_worker":  # only the chief writes the run folder and exports
        from cxr_tf.training.distributed import configure_worker

        configure_worker(cfg)
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(cfg.seed)
    set_precision(getattr(cfg, "precision", "float32"))  # every run sets it: none leaks into the next
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    return strategy


def parse_split(spec: str) -> tuple[float, float, float] | None:
    """``"8:1:1"`` / ``"0.8,0.1,0.1"`` -> fractions; a path -> None (load the file)."""
    if os.path.exists(spec):
        return None
    parts = spec.replace(",", ":").split(":")
    try:
        vals = [float(v) for v in parts]
    except ValueError:
        raise CXRConfigError(f"--split must be like 8:1:1 or a splits.csv path; got {spec!r}") from None
    if len(vals) != 3 or sum(vals) <= 0:
        raise CXRConfigError(f"--split needs three parts train:val:test; got {spec!r}")
    total = sum(vals)
    return tuple(v / total for v in vals)


def make_split(cfg, ds: CXRDataset, run, split: np.ndarray | None = None) -> np.ndarray:
    """Patient-level split from ``cfg.split`` (or ``split``, one an experiment drew itself,
    e.g. per source); audited and saved as ``splits.csv`` in the run folder."""
    if split is not None:
        split = np.asarray(split, dtype=object)
        check_leakage(split, ds.patient_ids)
    else:
        fr = parse_split(cfg.split)
        split = load_splits(cfg.split, ds) if fr is None else patient_split(ds, fr, seed=cfg.seed)
    split, _ = audit_split(cfg, ds, split, run)
    save_splits(run / "splits.csv", ds, split)
    table = split_summary(ds, split)
    table.to_csv(run / "split_summary.csv", index=False)
    log("split (patient-level):\n" + table.to_string(index=False))
    return split


def preset_overlap(weights: str, ds: CXRDataset, split: np.ndarray) -> dict | None:
    """Images of this run's val / test splits that a ``preset:`` trunk trained or validated on.

    A preset ships its ``splits.csv`` (paths relative to the data folder); run items match
    by path suffix. Returns ``{"preset", "val", "test"}`` counts, or None (no preset / list).
    """
    if not str(weights or "").startswith("preset:"):
        return None
    import pandas as pd

    from cxr_tf.models.presets import load_preset

    preset = load_preset(weights)
    f = preset.path / "splits.csv"
    if not f.is_file():
        return None
    table = pd.read_csv(f, keep_default_na=False, dtype=str)
    # a run's test images must be neither trained nor validated on; its val images not trained on
    seen = {"test": set(table.loc[table["split"].isin(["train", "val"]), "item"]),
            "val": set(table.loc[table["split"] == "train", "item"])}

    def was_seen(item: str, names: set) -> bool:
        parts = str(item).replace(os.sep, "/").split("/")
        return any("/".join(parts[k:]) in names for k in range(max(0, len(parts) - 4), len(parts) - 1))

    out = {"preset": preset.name}
    for s in ("val", "test"):
        idx = np.flatnonzero(np.asarray(split) == s)
        out[s] = int(sum(was_seen(ds.items[i], seen[s]) for i in idx))
    if out["val"] or out["test"]:
        log(f"warning: {out['test']} test images of this run were training or validation images of {weights}, "
            f"{out['val']} validation images were training images: scores on them are optimistic (use the "
            f"preset's own split: --split with its splits.csv, or data it never saw)")
    return out


def audit_split(cfg, ds: CXRDataset, split: np.ndarray, run) -> tuple[np.ndarray, dict | None]:
    """Near-duplicate audit of the split (``--duplicate-audit``, on by default): writes
    ``duplicates.csv/.png/.json`` into the run folder and returns ``(split, counts)``.
    With ``--dedupe`` the dropped copies get the split name ``""`` (in no split), so
    every later ``split == "train"`` leaves them out and ``splits.csv`` records them."""
    if not (getattr(cfg, "duplicate_audit", False) or getattr(cfg, "dedupe", False)):
        return split, None
    if ds.name == "synthetic" and not getattr(cfg, "dedupe", False):
        # generated from one anatomy template: perceptual hashes call many of them "copies"
        log("near-duplicate audit: skipped for the synthetic CXRs (one shared anatomy template, no real copies)")
        return split, None
    from cxr_tf.datasets.duplicates import DEFAULT_THRESHOLD, default_cache_dir
    from cxr_tf.evaluation.duplicates import audit_duplicates, format_counts

    cache = Path(cfg.cache_dir) / "duplicates" if getattr(cfg, "cache_dir", None) else default_cache_dir()
    counts, keep = audit_duplicates(ds, split, Path(str(run)), getattr(cfg, "duplicate_threshold", DEFAULT_THRESHOLD),
                                    cache_dir=cache, dedupe=bool(getattr(cfg, "dedupe", False)))
    log(format_counts(counts))
    split = np.where(keep, split, "").astype(object)
    return split, counts


def check_items(cfg, ds: CXRDataset, run) -> CXRDataset:
    """Validate files (and cache DICOM); with ``--on-error skip`` list skipped files."""
    from cxr_tf.data import prepare_items

    t = time.time()
    # prepare_items returns the loader's skipped entries and its own, in one list
    ds, skipped = prepare_items(ds, cache_dir=cfg.cache_dir, on_error=cfg.on_error)
    from cxr_tf.io import write_skip_list

    write_skip_list(skipped, run / "skipped.csv")
    if skipped:
        log(f"skipped {len(skipped)} unreadable files (listed in {run / 'skipped.csv'})")
    log(f"checked {len(ds)} images in {time.time() - t:.1f}s")
    return ds


def load_experiment_data(cfg, classes: str = "3class") -> CXRDataset:
    """``--data-dir`` through the dataset contract, or the embedded synthetic CXRs.

    Prints the layout it read and how patients were identified. The layout never
    changes the task: class folders and CSV manifests keep their own classes; ``classes``
    ("3class" | "pneumonia") picks Kermany's class set, and a manifest's only when
    ``--classes`` was given. ``--max-images`` / ``--fraction`` then keep a patient-level,
    class-stratified subset (:func:`cxr_tf.datasets.patient_subset`).
    """
    if cfg.data_dir:
        kwargs = {}
        from cxr_tf.datasets import describe_format, detect_format

        fmt = detect_format(cfg.data_dir) if cfg.format == "auto" else cfg.format
        how = "detected" if cfg.format == "auto" else "--format"
        if fmt == "kermany":
            kwargs = {"classes": classes, "on_error": cfg.on_error}
        elif fmt == "csv" and "classes" in getattr(cfg, "given", ()) and classes in ("3class", "pneumonia"):
            # Asked for explicitly: a label outside the class set (a typo such as "pnuemonia")
            # is then an error naming the rows, not a silent extra class.
            kwargs = {"class_names": ["bacterial", "viral", "normal"] if classes == "3class"
                      else ["normal", "pneumonia"]}
        if fmt in ("folder", "csv"):  # broken / looping / outside-root links: per-item errors
            kwargs["on_error"] = cfg.on_error
        log(f"data: {cfg.data_dir} read as {fmt} ({how}): {describe_format(cfg.data_dir, fmt)}")
        ds = load_dataset(cfg.data_dir, fmt, **kwargs)
        patients_from = getattr(ds, "patients_from", "")
        n = getattr(ds, "pseudonymized", 0)  # the folder loader grouped DICOMs by their PatientID tag
        if n:
            log(f"patient ids of {n} DICOM files from their PatientID tag (salted hash, cxr_tf.datasets.privacy)")
        log(f"patients: {patients_from or 'from the source'}; {ds.meta['patient_id'].nunique()} patients, "
            f"{len(ds)} images, classes {ds.class_names}")
    else:
        from cxr_tf.datasets.synthetic import make_synthetic_cxr

        names = ("bacterial", "viral", "normal") if classes == "3class" else ("normal", "pneumonia")
        ds = make_synthetic_cxr(n=cfg.synthetic_n, image_size=cfg.image_size, seed=cfg.seed, class_names=names,
                                difficulty=getattr(cfg, "synthetic_difficulty", 1.0))
    return take_subset(cfg, ds)


def take_subset(cfg, ds: CXRDataset) -> CXRDataset:
    """``--max-images`` / ``--fraction``: whole patients, stratified by class (logged)."""
    max_images, fraction = getattr(cfg, "max_images", 0), getattr(cfg, "fraction", 0.0)
    if not max_images and not fraction:
        return ds
    from cxr_tf.datasets import patient_subset

    sub = patient_subset(ds, max_images=max_images, fraction=fraction, seed=cfg.seed)
    if len(sub) < len(ds):
        log(f"subset (--max-images {max_images} / --fraction {fraction}): {len(sub)} of {len(ds)} images, "
            f"{sub.meta['patient_id'].nunique()} of {ds.meta['patient_id'].nunique()} patients"
            + ("" if sub.multilabel else f", classes {sub.class_counts()}"))
    return sub


def build_pipelines(cfg, ds: CXRDataset, split: np.ndarray, strategy):
    from cxr_tf.data import build_pipeline

    train_ds, val_ds, test_ds = (ds.subset(split == s) for s in ("train", "val", "test"))
    train = train_pipeline(cfg, train_ds)
    val = build_pipeline(val_ds, cfg.image_size, cfg.batch_size, training=False)
    test = build_pipeline(test_ds, cfg.image_size, cfg.batch_size, training=False)
    return (train_ds, val_ds, test_ds), (train, val, test)


def fit(cfg, model, train_ds, pipes, run, extra_callbacks=(), loggers: bool = True, monitor: str = "val_auc",
        distributed: dict | None = None):
    """Fit with the standard callbacks; returns (history dict, seconds).

    The one place that trains: ``model.fit`` with resume (the backup callback commits an
    epoch last), or under ``--strategy multi_worker`` the custom loop
    (:func:`cxr_tf.training.distributed.fit_distributed`, given ``distributed`` as keyword
    arguments: its ``monitor``, ``classifier=False`` for a model that is not a classifier, ...).

    ``loggers=False`` leaves out the TensorBoard sample-image and confusion-matrix
    loggers (the latter predicts the validation set again every epoch): sweeps of
    many small trainings and models that are not classifiers keep the scalars only.
    ``pipes[1]`` may be None: no validation (e.g. a trunk pretraining kept at its last
    epoch); ``monitor`` is then a training metric (``"auc"``) for the best checkpoint of the
    ``model.fit`` path (the multi-worker loop then keeps no best checkpoint).
    """
    from cxr_tf.data import class_weights
    from cxr_tf.training.callbacks import ConfusionMatrixLogger, SampleImagesLogger, standard_callbacks

    from cxr_tf.training import resume

    train, val, _ = pipes
    if getattr(cfg, "strategy", None) == "multi_worker":
        # Keras 3 model.fit fails under MultiWorkerMirroredStrategy (FACTS.md): custom loop.
        from cxr_tf.training.distributed import fit_distributed

        if val is None:  # no validation: the loop logs training metrics only
            import types

            pipes = (train, types.SimpleNamespace(dataset=None, num_examples=0, steps=0), pipes[2])
        return fit_distributed(cfg, model, train_ds, pipes, run, **(distributed or {}))
    # A killed run resumes from backup/: history.csv is cut to the committed epochs and the
    # input stream skips the batches they consumed (cxr_tf.training.resume).
    state, train_data = resume.prepare_resume(run, train.dataset, train.steps)
    if state is not None:
        log(f"resuming {run}: {state.epoch} of {cfg.epochs} epochs done"
            + (" (training had finished)" if state.complete else ""))
    cbs = standard_callbacks(run, monitor=monitor, patience=cfg.early_stopping)
    backup = [c for c in cbs if isinstance(c, resume.ResumableBackup)]
    cbs = [c for c in cbs if c not in backup]
    if loggers:
        cbs.append(SampleImagesLogger(train_pipeline(cfg, train_ds).dataset, str(run.tensorboard), model.class_names))
    if loggers and not model.multilabel and val is not None:
        y_val = np.concatenate([np.asarray(y).argmax(1) for _, y in val.dataset])
        cbs.append(ConfusionMatrixLogger(val.dataset, y_val, str(run.tensorboard), model.class_names))
    cbs += list(extra_callbacks) + backup  # the backup commits an epoch last
    cw = class_weights(train_ds) if cfg.balance == "class_weight" and train_ds is not None else None
    t = time.time()
    hist = model.fit(train_data, validation_data=None if val is None else val.dataset, epochs=cfg.epochs,
                     steps_per_epoch=train.steps, callbacks=cbs, class_weight=cw, shuffle=False,
                     verbose=2 if logger.isEnabledFor(logging.INFO) else 0)  # --quiet: no epoch lines
    # The whole run's per-epoch log, including epochs done before a restart.
    history = resume.read_history_csv(run / "history.csv") or hist.history
    return history, time.time() - t


def is_chief(cfg) -> bool:
    """Whether this process writes the results (always, except non-chief multi-workers)."""
    if getattr(cfg, "strategy", None) != "multi_worker":
        return True
    from cxr_tf.training.distributed import is_chief as _is_chief

    return _is_chief()


def finish_run(run) -> None:
    """After ``metrics.json``: drop the resume backup (a finished run is never resumed)."""
    from cxr_tf.training.resume import finish

    finish(run)


def restore_best(model, run) -> bool:
    best = run.checkpoints / "best.weights.h5"
    if best.exists():
        from cxr_tf.training.resume import load_model_weights

        load_model_weights(model, best)
        return True
    return False


def evaluate_split(model, pipe, ds: CXRDataset) -> tuple[np.ndarray, np.ndarray]:
    prob = np.asarray(model.predict(pipe.dataset, verbose=0))
    return ds.class_index(), prob


def write_tensorboard_summaries(run, metrics: dict, class_names, step: int, weights_epoch: int | None = None,
                                monitor: str = "val_auc") -> None:
    """Test confusion matrix image and headline metrics into TensorBoard.

    ``weights_epoch`` (1-based) is the epoch of the evaluated weights (the best
    checkpoint, not the last epoch): the image title says it, and the summaries are
    written at that step so they line up with that epoch's validation curves.
    """
    import tensorflow as tf

    from cxr_tf.evaluation import confusion_matrix_image

    title = "test" if weights_epoch is None else f"test, weights of epoch {weights_epoch} (best {monitor})"
    if weights_epoch is not None:
        step = weights_epoch - 1  # Keras' TensorBoard callback logs epoch k at step k - 1
    writer = tf.summary.create_file_writer(str(run.tensorboard / "test"))
    with writer.as_default():
        img = confusion_matrix_image(metrics["confusion_matrix"], class_names, title=title)
        tf.summary.image("confusion_matrix", img[None, ..., :3], step=step)
        for key in ("accuracy", "macro_auc", "averaged_accuracy"):
            v = metrics.get(key)
            v = v.get("value") if isinstance(v, dict) else v
            if v is not None:
                tf.summary.scalar(f"test/{key}", float(v), step=step)
    writer.flush()


#: Fewest validation images (and >= 5 per class) to fit a temperature on: on the smoke
#: runs' 11 images T ran to its bound (20) and doubled the test ECE.
MIN_CALIBRATION_IMAGES = 30


def calibrate_and_choose(cfg, run, class_names, y_val, p_val, y_test, p_test, multilabel: bool = False):
    """Temperature scaling and operating points, both fitted on VALIDATION predictions.

    Writes ``calibration.json`` (T, test ECE with CIs before and after, NLL),
    ``plots/reliability.png`` and ``operating_points.json`` (one threshold per class by
    ``--operating-rule``). Returns ``(calibration or None, binary threshold or None,
    operating points, p_val, p_test)`` with the probabilities calibrated when
    ``--calibrate``: thresholds and test metrics then live on the calibrated scale the
    export serves (temperature keeps every ranking and the arg-max, so AUC and accuracy
    are unchanged; the threshold's value moves with the scale).
    """
    from cxr_tf.evaluation.calibration import (apply_temperature, calibration_summary, operating_points,
                                               parse_rule, plot_reliability_diagram)
    from cxr_tf.evaluation.thresholds import choose_threshold

    cal = None
    counts = np.bincount(np.asarray(y_val).astype(int), minlength=len(class_names)) if not multilabel else None
    enough = len(y_val) >= MIN_CALIBRATION_IMAGES and (multilabel or counts.min() >= 5)
    if getattr(cfg, "calibrate", False) and not enough:
        log(f"calibration skipped: {len(y_val)} validation images (needs >= {MIN_CALIBRATION_IMAGES}, >= 5 per "
            "class); a temperature fitted on fewer overfits them")
    if getattr(cfg, "calibrate", False) and enough:
        cal = calibration_summary(y_val, p_val, y_test, p_test, multilabel=multilabel, seed=cfg.seed)
        t = cal["temperature"]
        p_val_c, p_test_c = (apply_temperature(p, t, multilabel) for p in (p_val, p_test))
        plot_reliability_diagram(y_test, {"before": p_test, f"after T={t:.2f}": p_test_c},
                                 run.plots / "reliability.png", multilabel=multilabel,
                                 title="Reliability on the test split (T fitted on validation)")
        run.write_json("calibration.json", cal)
        log(f"calibration: T={t:.3f} (fitted on validation); test ECE {cal['ece_before']['value']:.3f} -> "
            f"{cal['ece_after']['value']:.3f}")
        p_val, p_test = p_val_c.astype(np.float32), p_test_c.astype(np.float32)
    rule = getattr(cfg, "operating_rule", "youden")
    method, target = parse_rule(rule)
    op = operating_points(y_val, p_val, class_names, rule=rule, multilabel=multilabel)
    run.write_json("operating_points.json", op)
    threshold = None
    if len(class_names) == 2 and not multilabel:
        threshold = float(choose_threshold(np.asarray(y_val) == 1, p_val[:, 1], method=method, target=target))
    return cal, threshold, op, p_val, p_test


def write_run_model_card(run, export_path: str | None = None, extra: dict | None = None) -> str:
    """``MODEL_CARD.md`` in the run folder, from the run's own files (after metrics.json),
    and the same card beside the SavedModel when there is one."""
    import shutil

    from cxr_tf.evaluation.model_card import card_from_run, write_model_card

    dup = Path(str(run)) / "duplicates.json"
    if dup.is_file() and not (Path(str(run)) / "shortcut_audit.json").is_file():
        counts = json.loads(dup.read_text())
        extra = {"shortcut_audit": {k: counts[k] for k in ("pairs", "cross_split_pairs", "patient_leakage_pairs",
                                                           "cross_source_pairs") if k in counts}, **(extra or {})}
    path = write_model_card(run, card_from_run(run, extra=extra))
    if export_path:
        shutil.copy(path, Path(export_path) / "MODEL_CARD.md")
    return path


def export_and_verify(cfg, model, test_ds: CXRDataset, name: str, saved_models_dir: str, n_check: int = 8,
                      extra_metadata: dict | None = None, calibration: dict | None = None,
                      class_thresholds=None) -> dict:
    """Export for TF Serving and check served == offline predictions on real test files."""
    from cxr_tf.data import image_dataset
    from cxr_tf.export import export_for_serving, load_exported

    warm, check_bytes = [], []
    if not test_ds.in_memory and len(test_ds):
        for p in test_ds.items[: max(n_check, 2)]:
            b = Path(p).read_bytes()
            check_bytes.append(b)
        warm = check_bytes[:2]
    extra = dict(extra_metadata or {})
    threshold = extra.pop("threshold", None)
    config = cfg.to_dict()
    # The config's ``classes`` is a Kermany preset name; for any other data it says nothing
    # (a 2-class folder model is not "3class"): the classes are the model's own.
    config["classes"] = list(model.class_names)
    res = export_for_serving(
        model, saved_models_dir, name=name, class_names=model.class_names, image_size=model.image_size,
        metadata={"experiment": cfg.experiment, "config": config, "parameters": model.parameter_counts(), **extra},
        warmup_images=warm or None, multilabel=model.multilabel, threshold=threshold,
        calibration=calibration, class_thresholds=class_thresholds,
    )
    out = {"path": str(res.path), "version": res.version}
    out["sizes"] = dict(res.sizes)
    exported = load_exported(res.path)
    sub = test_ds.subset(np.arange(min(n_check, len(test_ds))))
    x = np.stack([im.numpy() for im, _ in image_dataset(sub, model.image_size)])
    offline = np.asarray(model.predict(x, verbose=0))
    if calibration:  # the export serves calibrated probabilities: compare like with like
        from cxr_tf.evaluation.calibration import apply_temperature

        offline = apply_temperature(offline, calibration["temperature"], model.multilabel)
    # predict_images takes raw float images (any size/range) and preprocesses in-graph,
    # so it is fed what a client has: the decoded pixels, one image per call.
    served_float = np.concatenate([exported.predict_images(raw[None]) for raw in _raw_images(sub)])
    diffs = {"predict_images": float(np.abs(served_float - offline).max())}
    if check_bytes:
        diffs["serving_default"] = float(np.abs(exported.predict_bytes(check_bytes[: len(sub)]) - offline).max())
    out["max_abs_diff_vs_keras"] = diffs

    # one TF Serving config for every model under saved_models_dir (docker: --model_config_file)
    from cxr_tf.export import write_models_config

    names = sorted(p.name for p in Path(saved_models_dir).iterdir()
                   if p.is_dir() and any(v.name.isdigit() for v in p.iterdir()))
    out["models_config"] = str(write_models_config(saved_models_dir, names))
    return out


def _raw_images(ds: CXRDataset):
    """Decoded, unscaled pixels per item: float32 (H, W, 1)."""
    import tensorflow as tf

    from cxr_tf.data.preprocess import decode_image

    for item in ds.items:
        if ds.in_memory:
            a = np.asarray(item, np.float32)
            yield a[..., None] if a.ndim == 2 else a
        else:
            yield decode_image(tf.io.read_file(os.fsencode(str(item)))).numpy()  # non-UTF-8 names: bytes


def print_tensorboard_hint(run) -> None:
    log(f"TensorBoard: tensorboard --logdir {run.tensorboard}")


def save_history_json(run, history: dict) -> None:
    (run / "history.json").write_text(json.dumps({k: [float(x) for x in v] for k, v in history.items()}, indent=1))
