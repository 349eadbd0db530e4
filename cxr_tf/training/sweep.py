"""Many trainings in one run folder: k-fold cases, grids, freeze comparisons (:func:`compare_freeze`).

A *cell* is one training (one case x fold, one grid point, ...). Every cell lives in
``<run>/cells/<name>/`` (its config, checkpoints, history.csv, resume backup, and
``result.json`` when finished) and logs to ``<run>/tensorboard/<name>/``, so
``tensorboard --logdir <run>/tensorboard`` shows every cell side by side.

Resumable at three levels: re-running the same command (same config, up to
``--run-dir`` / ``--resume`` / ``--runs-dir`` / ``--on-error`` / ``--cache-dir``)
reopens the newest run folder of that experiment with that config, finished or not,
instead of starting a new one (a different config gets a new folder; ``--run-dir DIR``
names the folder, ``--resume`` picks the newest *unfinished* match); in it, a finished
cell (``result.json`` written with the same config) is never trained again; an
interrupted cell resumes from its last committed epoch (:mod:`cxr_tf.training.resume`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_tf.datasets import CXRDataset
from cxr_tf.training import flow as common
from cxr_tf.training.run import RunDir, _comparable


class CellRun(RunDir):
    """A cell's folder; its TensorBoard logs go under the parent run's ``tensorboard/<name>``."""

    def __init__(self, parent: RunDir, name: str):
        self.parent = parent
        self.name = name
        super().__init__(parent / "cells" / name)
        self.tensorboard.mkdir(parents=True, exist_ok=True)

    @property
    def tensorboard(self) -> Path:
        return self.parent.tensorboard / self.name

    @property
    def finished(self) -> bool:
        return (self.path / "result.json").exists()


def worker_config(cfg, sub: str, **changes):
    """A copy of ``cfg`` (``changes`` applied) for a training in ``<run>/<sub>`` (a cell, a
    model of a comparison), keeping the non-field attributes (the chief's run folder). Under
    ``--strategy multi_worker`` every worker then restores the chief's backup of THAT training
    (:func:`cxr_tf.training.distributed.chief_run_dir` maps ``<own run>/<sub>`` onto
    ``<chief run>/<sub>``), so the trainings of one run never share a checkpoint."""
    import copy

    out = copy.copy(cfg)
    for k, v in changes.items():
        setattr(out, k, v)
    return out


def plain(obj):
    """``obj`` with numpy scalars / arrays as Python numbers / lists, NaN kept (Python's JSON
    writes it): a cell's result.json reads back as the values it was written from."""
    def conv(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"not JSON serializable: {type(o).__name__}")

    return json.loads(json.dumps(obj, default=conv))


def chief_path(cfg, run, sub: str) -> Path:
    """``<run>/<sub>`` in the chief's run folder (this run's own on a single worker): where
    every worker looks for a finished training, so all of them skip the same ones."""
    return Path(cfg.__dict__.get("_chief_run_dir") or str(run)) / sub


def start(cfg):
    """A sweep's beginning: runtime, run folder, checked data, optional patient subset."""
    strategy = common.setup_runtime(cfg)
    from cxr_tf.training.run import create_run_dir

    run_dir = create_run_dir(cfg, reuse=True)
    run_dir.strategy = strategy  # every cell's model is built under it (multi-worker: all workers train it)
    if run_dir.reused:
        done = sorted(p.parent.name for p in (run_dir.path / "cells").glob("*/result.json"))
        common.log(f"run folder: {run_dir} (resuming: same config as before; {len(done)} finished cell(s) "
                   "will be reused; --run-dir DIR for another folder)")
    else:
        common.log(f"run folder: {run_dir}")
    ds = common.load_experiment_data(cfg, cfg.classes)
    ds = common.check_items(cfg, ds, run_dir)
    common.log(ds.summary())
    return run_dir, ds


def _same_config(path: Path, cfg_d: dict) -> bool:
    return path.exists() and _comparable(json.loads(path.read_text())) == _comparable(cfg_d)


def train_cell(cfg, ds: CXRDataset, split: np.ndarray, parent: RunDir, name: str, n_boot: int = 200) -> dict:
    """Train and evaluate one cell (``split``: "train" / "val" / "test" per item).

    The model is selected on validation AUC and scored on the ``test`` items. Returns
    the cell's result (also written to ``cells/<name>/result.json``): config, test
    metrics, per-epoch history, parameter counts, timings.
    """
    cell = CellRun(parent, name)
    cfg_d = cfg.to_dict()
    # multi-worker: every worker asks the chief's folder, so all of them skip the same cells
    done = chief_path(cfg, parent, f"cells/{name}")
    if (done / "result.json").exists() and _same_config(done / "config.json", cfg_d):
        common.log(f"cell {name}: done before, reusing {done / 'result.json'}")
        return json.loads((done / "result.json").read_text())
    if (cell / "config.json").exists() and not _same_config(cell / "config.json", cfg_d):
        common.log(f"cell {name}: config changed, training it again")
        shutil.rmtree(cell.path)
        shutil.rmtree(cell.tensorboard, ignore_errors=True)
        cell = CellRun(parent, name)
    cell.write_json("config.json", cfg_d)

    import keras

    from cxr_tf.evaluation import classification_metrics
    from cxr_tf.training.loop import compile_classifier

    keras.backend.clear_session()
    keras.utils.set_random_seed(cfg.seed)  # the same initial weights for every cell of a comparison
    t0 = time.time()
    strategy = getattr(parent, "strategy", None)
    (train_ds, val_ds, test_ds), pipes = common.build_pipelines(cfg, ds, split, strategy)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = build_classifier(cfg, ds)
        compile_classifier(model, cfg.optimizer_config(), pipes[0].steps, cfg.epochs, cfg.label_smoothing)
    params = model.parameter_counts()
    common.log(f"cell {name}: {len(train_ds)} train / {len(val_ds)} val / {len(test_ds)} test images; "
               f"trainable {params['trainable']:,}")
    # worker_config: under multi-worker each cell restores its own checkpoint, never another cell's
    history, fit_s = common.fit(worker_config(cfg, f"cells/{name}"), model, train_ds, pipes, cell, loggers=False)
    common.restore_best(model, cell)
    y_val, p_val = common.evaluate_split(model, pipes[1], val_ds)
    y_test, p_test = common.evaluate_split(model, pipes[2], test_ds)
    val_m = classification_metrics(y_val, p_val, ds.class_names, n_boot=0)
    test_m = classification_metrics(y_test, p_test, ds.class_names, n_boot=n_boot)
    result = {
        "name": name,
        "config": cfg_d,
        "n": {"train": len(train_ds), "val": len(val_ds), "test": len(test_ds)},
        "parameters": params,
        "history": {k: [float(v) for v in vals] for k, vals in history.items()},
        "validation": {"accuracy": val_m["accuracy"]["value"], "macro_auc": val_m["macro_auc"]["value"]},
        "test": test_m,
        "fit_seconds": round(fit_s, 1),
        "wall_seconds": round(time.time() - t0, 1),
    }
    np.savez_compressed(cell / "test_predictions.npz", y_true=y_test, y_prob=p_test)
    cell.write_json("result.json", result)  # the commit point: a finished cell
    common.finish_run(cell)
    return result


def build_classifier(cfg, ds: CXRDataset):
    """The experiment's classifier; ``--weights`` takes every form of the one resolver
    (``none | imagenet | PATH | preset:NAME | run:DIR | ssl:DIR | URL#sha256=``)."""
    from cxr_tf.models import build_model

    model = build_model(
        cfg.backbone, num_classes=ds.num_classes, image_size=cfg.image_size, head=cfg.head, dropout=cfg.dropout,
        freeze_until=cfg.freeze_until, class_names=ds.class_names, weights=cfg.weights, bn_momentum=cfg.bn_momentum,
    )
    if model.weights_loaded:
        common.log(f"weights: {model.weights_loaded} from {cfg.weights}")
    return model


def cell_config(cfg, **changes):
    """A copy of ``cfg`` with ``changes`` (a cell's own settings); non-field attributes (the
    chief's run folder under multi-worker, the flags given) are kept."""
    out = dataclasses.replace(cfg, **changes)
    out.__dict__.update({k: v for k, v in cfg.__dict__.items() if k not in out.__dict__})
    return out


def summary_row(result: dict) -> dict:
    """Flat numbers of one cell for tables: macro AUC, accuracy, per-class recall."""
    m = result["test"]
    row = {"macro_auc": m["macro_auc"]["value"], "accuracy": m["accuracy"]["value"],
           "averaged_accuracy": m["averaged_accuracy"]}
    for c, pc in m["per_class"].items():
        row[f"recall_{c}"] = pc["sensitivity"]["value"]
    row["val_macro_auc"] = result["validation"]["macro_auc"]
    # an AUC is undefined (None in metrics.json) when a split holds one class: NaN in tables
    return {k: (float("nan") if v is None else v) for k, v in row.items()}


def parse_list(text: str, cast=float) -> list:
    """``"8,16,32"`` -> ``[8, 16, 32]``."""
    return [cast(t) for t in str(text).replace(" ", "").split(",") if t]


# ---- freeze comparison (seed 004): freeze_depth and pneumonia_freeze --compare-freeze

def check_freeze_points(cfg, freeze_points, lrs) -> None:
    """Freeze points are layer indices >= 0, learning rates > 0, and random layers are not
    frozen unless ``--allow-random-frozen`` (freezing random weights only freezes noise)."""
    from cxr_tf.errors import CXRConfigError

    if not freeze_points or min(freeze_points) < 0 or not lrs or min(lrs) <= 0:
        raise CXRConfigError("freeze points must be layer indices >= 0 and learning rates > 0")
    if cfg.weights == "none" and max(freeze_points) > 0 and not cfg.allow_random_frozen:
        raise CXRConfigError("--weights none freezes randomly initialised layers; give --weights imagenet|PATH|"
                             "run:DIR|preset:NAME, or --allow-random-frozen to study random features on purpose")


def freeze_cell_name(freeze: int, lr: float) -> str:
    return f"f{freeze}_lr{lr:.0e}"


def gaps(history: dict) -> pd.DataFrame:
    """Per-epoch train - validation gap of AUC and loss (positive AUC gap = overfitting)."""
    n = len(history.get("loss", []))
    df = pd.DataFrame({"epoch": np.arange(1, n + 1)})
    for k in ("auc", "loss", "accuracy"):
        if k in history and f"val_{k}" in history:
            df[f"train_{k}"] = history[k]
            df[f"val_{k}"] = history[f"val_{k}"]
            df[f"gap_{k}"] = np.asarray(history[k]) - np.asarray(history[f"val_{k}"])
    return df


def plot_curves(results: dict, path) -> None:
    """Overlaid train (solid) and validation (dashed) AUC and loss for every cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (name, g) in enumerate(results.items()):
        c = colors[k % len(colors)]
        for ax, m in zip(axes[:2], ("auc", "loss")):
            if f"train_{m}" in g:
                ax.plot(g["epoch"], g[f"train_{m}"], "-", color=c, label=f"{name} train")
                ax.plot(g["epoch"], g[f"val_{m}"], "--", color=c, label=f"{name} val")
                ax.set_title(m)
        if "gap_auc" in g:
            axes[2].plot(g["epoch"], g["gap_auc"], "-o", color=c, label=name)
    axes[2].axhline(0, color="gray", linewidth=0.8)
    axes[2].set_title("train - val AUC (overfitting gap)")
    for ax in axes:
        ax.set_xlabel("epoch")
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare_freeze(cfg, freeze_points, lrs, n_boot: int = 200) -> dict:
    """The same classifier frozen up to each of ``freeze_points`` (layer indices), trained at
    each of ``lrs`` with one patient-level split, seed and initial weights, one cell each.

    Writes ``freeze_depth.csv`` (trainable / non-trainable counts, test metrics, final and
    max train - validation AUC gap per cell), ``gaps_per_epoch.csv``, ``plots/learning_curves.png``
    and ``report.md`` into the run folder; freezing random weights is refused unless
    ``--allow-random-frozen``.
    """
    check_freeze_points(cfg, freeze_points, lrs)
    t0 = time.time()
    run_dir, ds = start(cfg)
    split = common.make_split(cfg, ds, run_dir)
    rows, curves = [], {}
    for freeze in freeze_points:
        for lr in lrs:
            name = freeze_cell_name(freeze, lr)
            res = train_cell(cell_config(cfg, freeze_until=freeze, lr=lr), ds, split, run_dir, name, n_boot=n_boot)
            g = gaps(res["history"])
            g.to_csv(run_dir / "cells" / name / "gaps.csv", index=False)
            curves[name] = g
            last = g.iloc[-1] if len(g) else {}
            rows.append({"freeze_until": freeze, "learning_rate": lr,
                         "trainable": res["parameters"]["trainable"], "non_trainable": res["parameters"]["non_trainable"],
                         **summary_row(res),
                         "final_gap_auc": float(last.get("gap_auc", np.nan)),
                         "max_gap_auc": float(g["gap_auc"].max()) if "gap_auc" in g else float("nan"),
                         "final_gap_loss": float(last.get("gap_loss", np.nan)),
                         "seconds": res["wall_seconds"]})
            common.log(f"{name}: trainable {rows[-1]['trainable']:,}, test AUC {rows[-1]['macro_auc']:.3f}, "
                       f"final train-val AUC gap {rows[-1]['final_gap_auc']:+.3f}")
    table = pd.DataFrame(rows)
    table.to_csv(run_dir / "freeze_depth.csv", index=False)
    long = pd.concat([g.assign(cell=n) for n, g in curves.items()], ignore_index=True)
    long.to_csv(run_dir / "gaps_per_epoch.csv", index=False)
    plot_curves(curves, run_dir.plots / "learning_curves.png")
    wall = time.time() - t0
    md = _freeze_markdown(cfg, table, long, wall, len(ds))
    (run_dir / "report.md").write_text(md)
    out = {"cells": table.to_dict(orient="records"), "wall_seconds": round(wall, 1)}
    run_dir.write_json("metrics.json", out)
    common.log("summary:\n" + md)
    common.print_tensorboard_hint(run_dir)
    return out


def _freeze_markdown(cfg, table: pd.DataFrame, long: pd.DataFrame, wall: float, n: int) -> str:
    head = "| freeze_until | lr | trainable | non-trainable | test macro AUC | test accuracy | val macro AUC | final train-val AUC gap | max gap |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(f"| {int(r['freeze_until'])} | {r['learning_rate']:.0e} | {int(r['trainable']):,} | "
                     f"{int(r['non_trainable']):,} | "
                     f"{r['macro_auc']:.3f} | {r['accuracy']:.3f} | {r['val_macro_auc']:.3f} | "
                     f"{r['final_gap_auc']:+.3f} | {r['max_gap_auc']:+.3f} |")
    ep = ["| cell | " + " | ".join(f"epoch {e}" for e in sorted(long["epoch"].unique())) + " |",
          "|---|" + "---|" * long["epoch"].nunique()]
    if "gap_auc" in long:
        for name, g in long.groupby("cell", sort=False):
            ep.append(f"| {name} | " + " | ".join(f"{v:+.3f}" for v in g["gap_auc"]) + " |")
    return (f"# Freeze depth ({cfg.backbone})\n\nData: {cfg.data_dir or 'synthetic'} ({n} images, patient-level split "
            f"{cfg.split}); weights {cfg.weights}; head {cfg.head}; {cfg.image_size} px, {cfg.epochs} epochs, batch "
            f"{cfg.batch_size}, augmentation {cfg.augment}, seed {cfg.seed}.\n\n" + "\n".join(lines)
            + "\n\nTrain - validation AUC gap per epoch (overfitting):\n\n" + "\n".join(ep)
            + f"\n\nWall time {wall:.0f} s. Curves: ![learning curves](plots/learning_curves.png); TensorBoard: "
              "`tensorboard --logdir tensorboard`.\n")
