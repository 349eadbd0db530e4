"""Batch size x learning rate grid (seed 004, SPEC S4), logged to TensorBoard HParams.

Every cell is a full training with the same patient-level split, seed, epochs and
initial weights; only the batch size and the learning rate change. The seed found the
best batch at 8-16 and chose batch 32, lr 1e-4 (transfer learning at about a tenth of
the base rate).

Outputs in ``runs/batch_lr_grid/<stamp>/``: ``splits.csv``, ``cells/b<batch>_lr<lr>/``
(a finished cell is never re-run: re-running the command resumes the grid),
``tensorboard/`` with the HParams dashboard (``hparams_config`` at the root, one run
per cell with its hyperparameters and final metrics) next to each cell's curves,
``grid.csv``, ``plots/heatmap_val_auc.png`` (validation AUC; best cell marked; the
linear-scaling line lr proportional to batch drawn through the best cell),
``report.md`` and ``metrics.json``.

Commands::

    python -m cxr_tf.experiments.batch_lr_grid --data-dir $CXR_DATA_DIR/kermany224
    # what we ran on 2 CPU cores (experiments/results/batch_lr_grid.md):
    python -m cxr_tf.experiments.batch_lr_grid --data-dir $CXR_DATA_DIR/kermany224 \\
        --backbone tiny_cnn --head gap --freeze-until 0 --image-size 64 --epochs 8 --bn-momentum 0.9

Result (one core of the 2-core AMD EPYC VM, 14 min, all 5,216 kermany224 images): validation
AUC 0.80-0.82 for lr 1e-2 and 1e-3 at every batch size, 0.78-0.80 at 1e-4, 0.74-0.75 at 1e-5;
best batch 32 / lr 1e-2 (0.824) within noise of three other cells: the learning rate matters,
the batch size is not resolved.

Defaults: batch {8, 16, 32, 64} x lr {1e-2, 1e-3, 1e-4, 1e-5} on the seed's ResNet50
(frozen to 144, extra-FC head, 224 px).
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time

import numpy as np
import pandas as pd

from cxr_tf.training.task import ClassifierConfig
from cxr_tf.training.config import opt, parse_config


@dataclasses.dataclass
class BatchLrGridConfig(ClassifierConfig):
    experiment: str = "batch_lr_grid"
    weights: str = "none"  # its committed results train from scratch; --weights takes any other source
    batches: str = opt("8,16,32,64", "comma list of batch sizes of the grid")
    lrs: str = opt("1e-2,1e-3,1e-4,1e-5", "comma list of learning rates of the grid")
    early_stopping: int = 0  # every cell trains the same number of epochs
    n_boot: int = opt(200, "bootstrap resamples for confidence intervals")
    export: bool = False

    def apply_smoke(self) -> None:
        super().apply_smoke()
        self.backbone, self.head, self.freeze_until = "tiny_cnn", "gap", 0
        self.image_size, self.epochs = 32, 1
        self.batches, self.lrs = "8,16", "1e-2,1e-3"
        self.synthetic_n, self.max_images, self.n_boot, self.bn_momentum = 90, 0, 20, 0.9

    def validate(self) -> None:
        super().validate()
        from cxr_tf.errors import CXRConfigError

        try:
            b, lr = self.batch_list, self.lr_list
        except ValueError:
            raise CXRConfigError(f"--batches / --lrs must be comma-separated numbers; got {self.batches!r}, {self.lrs!r}") from None
        if not b or not lr or min(b) < 1 or min(lr) <= 0:
            raise CXRConfigError(f"--batches must be integers >= 1 and --lrs > 0; got {self.batches!r}, {self.lrs!r}")

    @property
    def batch_list(self) -> list[int]:
        from cxr_tf.training.sweep import parse_list

        return sorted(set(parse_list(self.batches, int)))

    @property
    def lr_list(self) -> list[float]:
        from cxr_tf.training.sweep import parse_list

        return sorted(set(parse_list(self.lrs, float)), reverse=True)


def parse(argv=None) -> BatchLrGridConfig:
    return parse_config(BatchLrGridConfig, argv, description=__doc__.split("\n")[0])


def cell_name(batch: int, lr: float) -> str:
    return f"b{batch}_lr{lr:.0e}"


HP_METRICS = ("val_macro_auc", "test_macro_auc", "test_accuracy", "final_train_loss")


def write_hparams_config(logdir, batches, lrs) -> None:
    """The HParams dashboard's experiment config (domains and metrics) at the log root."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    with tf.summary.create_file_writer(str(logdir)).as_default():
        hp.hparams_config(
            hparams=[hp.HParam("batch_size", hp.Discrete(list(batches))), hp.HParam("learning_rate", hp.Discrete(list(lrs)))],
            metrics=[hp.Metric(f"hparams/{m}", display_name=m) for m in HP_METRICS],
        )


def write_hparams_cell(logdir, batch: int, lr: float, values: dict) -> None:
    """One HParams session: the cell's hyperparameters and its final metrics."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    w = tf.summary.create_file_writer(str(logdir))
    with w.as_default():
        hp.hparams({"batch_size": batch, "learning_rate": lr}, trial_id=cell_name(batch, lr))
        for m in HP_METRICS:
            if values.get(m) is not None and np.isfinite(values[m]):
                tf.summary.scalar(f"hparams/{m}", float(values[m]), step=1)
    w.flush()


def _lr_to_row(lr, lrs) -> np.ndarray:
    """Fractional heatmap row of learning rates ``lr`` (rows: ``lrs`` descending, log-spaced
    between neighbours); NaN outside the grid's range."""
    lr = np.atleast_1d(np.asarray(lr, float))
    if len(lrs) == 1:
        return np.where(np.isclose(lr, lrs[0], rtol=1e-9), 0.0, np.nan)
    log_lrs = np.log10(lrs)  # descending
    return np.interp(-np.log10(lr), -log_lrs, np.arange(len(lrs)), left=np.nan, right=np.nan)


def linear_scaling_line(batches, lrs, best_batch: int, best_lr: float, n: int = 50) -> dict:
    """The linear-scaling rule through the best cell: ``lr = best_lr * batch / best_batch``.

    Returns the line in data coordinates at the grid's batch sizes (``batch_size``,
    ``learning_rate``; ``lr_per_batch`` is the constant ratio, so the line has slope 1 in
    log-log space) and the polyline drawn over the heatmap in its cell-index coordinates
    (``x``: column, ``y``: row, ``None`` where the line leaves the grid's lr range).
    """
    batches = sorted(float(b) for b in batches)
    lrs = sorted((float(v) for v in lrs), reverse=True)
    ratio = float(best_lr) / float(best_batch)
    xs = np.linspace(0, len(batches) - 1, n) if len(batches) > 1 else np.zeros(1)
    bx = np.exp(np.interp(xs, np.arange(len(batches)), np.log(batches)))
    ys = _lr_to_row(ratio * bx, lrs)
    return {
        "lr_per_batch": ratio,
        "through": {"batch_size": int(best_batch), "learning_rate": float(best_lr)},
        "batch_size": [int(b) for b in batches],
        "learning_rate": [ratio * b for b in batches],
        "x": [round(float(x), 4) for x in xs],
        "y": [None if not np.isfinite(y) else round(float(y), 4) for y in ys],
    }


def heatmap(grid: pd.DataFrame, path, value: str = "val_macro_auc") -> dict | None:
    """Heatmap of ``value`` over batch x lr; best cell boxed; lr proportional to batch through it.

    Returns the best cell (``batch_size``, ``learning_rate``, ``value``) with the drawn
    line under ``linear_scaling`` (:func:`linear_scaling_line`), or None when no cell
    has a finite value.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted(grid["batch_size"].unique())
    lrs = sorted(grid["learning_rate"].unique(), reverse=True)
    z = np.full((len(lrs), len(batches)), np.nan)
    for _, r in grid.iterrows():
        z[lrs.index(r["learning_rate"]), batches.index(r["batch_size"])] = r[value]
    fig, ax = plt.subplots(figsize=(1.3 * len(batches) + 2.5, 1.0 * len(lrs) + 1.8))
    im = ax.imshow(z, cmap="viridis", aspect="auto")
    fig.colorbar(im, ax=ax, label=value)
    for i in range(len(lrs)):
        for j in range(len(batches)):
            if np.isfinite(z[i, j]):
                ax.text(j, i, f"{z[i, j]:.3f}", ha="center", va="center",
                        color="white" if z[i, j] < np.nanmean(z) else "black", fontsize=9)
    best = None
    if np.isfinite(z).any():
        bi, bj = np.unravel_index(np.nanargmax(z), z.shape)
        best = {"batch_size": int(batches[bj]), "learning_rate": float(lrs[bi]), value: float(z[bi, bj])}
        ax.add_patch(plt.Rectangle((bj - 0.5, bi - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
        # linear scaling rule through the best cell, in the grid's log-spaced index coordinates
        line = linear_scaling_line(batches, lrs, batches[bj], lrs[bi])
        ys = np.array([np.nan if y is None else y for y in line["y"]])
        ax.plot(line["x"], ys, "r--", marker="o" if len(ys) == 1 else None, linewidth=1.5,
                label="lr ∝ batch (linear scaling)")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), fontsize=8)
        best["linear_scaling"] = line
    ax.set_xticks(range(len(batches)), [str(b) for b in batches])
    ax.set_yticks(range(len(lrs)), [f"{lr:.0e}" for lr in lrs])
    ax.set_xlabel("batch size")
    ax.set_ylabel("learning rate")
    ax.set_title(f"{value} (best boxed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return best


def run(cfg: BatchLrGridConfig) -> dict:
    from cxr_tf.training import flow as common, sweep

    t0 = time.time()
    run_dir, ds = sweep.start(cfg)
    split = common.make_split(cfg, ds, run_dir)
    write_hparams_config(run_dir.tensorboard, cfg.batch_list, cfg.lr_list)

    rows = []
    for batch in cfg.batch_list:
        for lr in cfg.lr_list:
            name = cell_name(batch, lr)
            res = sweep.train_cell(sweep.cell_config(cfg, batch_size=batch, lr=lr), ds, split, run_dir, name,
                                   n_boot=cfg.n_boot)
            hist = res["history"]
            vals = {"val_macro_auc": res["validation"]["macro_auc"], "test_macro_auc": res["test"]["macro_auc"]["value"],
                    "test_accuracy": res["test"]["accuracy"]["value"],
                    "final_train_loss": hist["loss"][-1] if hist.get("loss") else float("nan")}
            write_hparams_cell(run_dir.tensorboard / name, batch, lr, vals)
            rows.append({"batch_size": batch, "learning_rate": lr, **vals, "epochs": len(hist.get("loss", [])),
                         "steps_per_epoch": res["n"]["train"] // batch, "seconds": res["wall_seconds"]})
            common.log(f"{name}: val AUC {vals['val_macro_auc']:.3f}, test AUC {vals['test_macro_auc']:.3f}")
    grid = pd.DataFrame(rows)
    grid.to_csv(run_dir / "grid.csv", index=False)
    best = heatmap(grid, run_dir.plots / "heatmap_val_auc.png", "val_macro_auc")
    heatmap(grid, run_dir.plots / "heatmap_test_auc.png", "test_macro_auc")
    wall = time.time() - t0
    md = _markdown(cfg, grid, best, wall, len(ds))
    (run_dir / "report.md").write_text(md)
    out = {"grid": grid.to_dict(orient="records"), "best_by_val_auc": best, "wall_seconds": round(wall, 1)}
    run_dir.write_json("metrics.json", out)
    common.log("summary:\n" + md)
    common.print_tensorboard_hint(run_dir)
    return out


def _markdown(cfg, grid: pd.DataFrame, best: dict | None, wall: float, n: int) -> str:
    batches = sorted(grid["batch_size"].unique())
    lrs = sorted(grid["learning_rate"].unique(), reverse=True)
    out = []
    for value in ("val_macro_auc", "test_macro_auc"):
        lines = [f"{value}:", "", "| lr \\ batch | " + " | ".join(str(b) for b in batches) + " |",
                 "|---|" + "---|" * len(batches)]
        for lr in lrs:
            cells = []
            for b in batches:
                v = grid.loc[(grid["batch_size"] == b) & (grid["learning_rate"] == lr), value]
                s = f"{float(v.iloc[0]):.3f}" if len(v) and math.isfinite(float(v.iloc[0])) else "-"
                if best and b == best["batch_size"] and lr == best["learning_rate"] and value == "val_macro_auc":
                    s = f"**{s}**"
                cells.append(s)
            lines.append(f"| {lr:.0e} | " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return (f"# Batch size x learning rate grid\n\nData: {cfg.data_dir or 'synthetic'} ({n} images; one patient-level "
            f"split {cfg.split}); model {cfg.backbone} (head {cfg.head}, freeze_until {cfg.freeze_until}), "
            f"{cfg.image_size} px, {cfg.epochs} epochs per cell, Adam, seed {cfg.seed}.\n\n" + "\n\n".join(out)
            + (f"\n\nBest by validation AUC: batch {best['batch_size']}, lr {best['learning_rate']:.0e} "
               f"(val AUC {best['val_macro_auc']:.3f}). Linear-scaling line through it (dashed on the heatmap): "
               f"lr = {best['linear_scaling']['lr_per_batch']:.3g} x batch, i.e. "
               + ", ".join(f"batch {b}: lr {lr:.1e}" for b, lr in zip(best["linear_scaling"]["batch_size"],
                                                                   best["linear_scaling"]["learning_rate"]))
               + "." if best else "")
            + f"\n\nWall time {wall:.0f} s. Heatmap: ![validation AUC heatmap](plots/heatmap_val_auc.png); HParams: "
              "`tensorboard --logdir tensorboard` -> HPARAMS tab.\n")


def main(argv=None) -> int:
    from cxr_tf.errors import run_main

    return run_main(lambda: run(parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
