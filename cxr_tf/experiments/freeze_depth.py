"""Freeze depth: the same ResNet50 frozen up to each listed layer index (seed 004, SPEC S4).

The seed froze ``keras.applications.ResNet50`` (ImageNet) up to layer 144
(``conv5_block1_1_bn``: only conv5 and the head train) and found it better than
freezing up to 114 (``conv4_block4_1_bn``), which trains more parameters and overfit.
Here every freeze point is trained at each learning rate (around 1e-3: transfer
learning uses about a tenth of the base rate) with the same patient-level split, seed
and initial weights.

Reported per cell: trainable / non-trainable parameter counts, the train - validation
gap per epoch (AUC and loss: overfitting), final test metrics, and overlaid learning
curves (``plots/learning_curves.png``; TensorBoard runs ``tensorboard/f<idx>_lr<lr>/``
side by side). Re-running the same command reopens the same run folder and reuses every
finished cell (:mod:`cxr_tf.training.sweep`).

Pretrained weights: ``--weights imagenet`` (Keras' loader; needs a download or the file
in ``~/.keras/models``), ``--weights PATH`` (a Keras ResNet50 no-top weights file) or
``--weights run:DIR`` (the backbone of one of your earlier cxr_tf runs, e.g. a ResNet50
trained on another CXR source) or ``--weights preset:NAME`` (a pretrained preset's trunk). Freezing random weights only freezes noise, so
``--weights none`` is refused unless ``--allow-random-frozen``.

Commands::

    python -m cxr_tf.experiments.freeze_depth --data-dir $CXR_DATA_DIR/kermany224 --weights imagenet
    python -m cxr_tf.experiments.pneumonia_freeze --compare-freeze 114,144 --data-dir ...   # same thing
    # what we ran on 2 CPU cores (experiments/results/freeze_depth.md): ResNet50 pretrained on
    # covid19_radiography (COVID vs normal adults, a source disjoint from Kermany), then
    python -m cxr_tf.experiments.freeze_depth --data-dir $CXR_DATA_DIR/kermany224 \\
        --weights run:runs/pretrain/pneumonia_freeze/<stamp> --image-size 64 --max-images 1500 \\
        --epochs 6 --lrs 3e-4,1e-3,3e-3 --bn-momentum 0.9 --augment light
"""
from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np
import pandas as pd

from cxr_tf.experiments.pneumonia_freeze import PneumoniaFreezeConfig
from cxr_tf.training.config import opt, parse_config


@dataclasses.dataclass
class FreezeDepthConfig(PneumoniaFreezeConfig):
    experiment: str = "freeze_depth"
    freeze_points: str = opt("114,144", "comma list of freeze_until indices to compare")
    lrs: str = opt("1e-3,3e-4,1e-4", "comma list of learning rates, one training per freeze point and lr")
    weights: str = "imagenet"
    early_stopping: int = 0  # the per-epoch gap is the point: train every epoch
    n_boot: int = opt(200, "bootstrap resamples for confidence intervals")
    export: bool = False

    def apply_smoke(self) -> None:
        super().apply_smoke()
        self.image_size, self.epochs, self.lrs = 32, 2, "1e-3"
        self.synthetic_n, self.n_boot, self.bn_momentum = 60, 20, 0.9

    def validate(self) -> None:
        super().validate()
        from cxr_tf.errors import CXRConfigError

        try:
            pts, lrs = self.freeze_list, self.lr_list
        except ValueError:
            raise CXRConfigError(f"--freeze-points / --lrs must be comma-separated numbers; got "
                                 f"{self.freeze_points!r}, {self.lrs!r}") from None
        if not pts or min(pts) < 0 or not lrs or min(lrs) <= 0:
            raise CXRConfigError("--freeze-points must be layer indices >= 0 and --lrs > 0")
        if self.weights == "none" and max(pts) > 0 and not self.allow_random_frozen:
            raise CXRConfigError("--weights none freezes randomly initialised layers; give --weights imagenet|PATH|"
                                 "run:DIR|preset:NAME, or --allow-random-frozen to study random features on purpose")

    @property
    def freeze_list(self) -> list[int]:
        from cxr_tf.training.sweep import parse_list

        return parse_list(self.freeze_points, int)

    @property
    def lr_list(self) -> list[float]:
        from cxr_tf.training.sweep import parse_list

        return sorted(set(parse_list(self.lrs, float)), reverse=True)


def parse(argv=None) -> FreezeDepthConfig:
    return parse_config(FreezeDepthConfig, argv, description=__doc__.split("\n")[0])


def cell_name(freeze: int, lr: float) -> str:
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


def run(cfg: FreezeDepthConfig) -> dict:
    from cxr_tf.training import flow as common, sweep

    t0 = time.time()
    run_dir, ds = sweep.start(cfg)
    split = common.make_split(cfg, ds, run_dir)
    rows, curves = [], {}
    for freeze in cfg.freeze_list:
        for lr in cfg.lr_list:
            name = cell_name(freeze, lr)
            res = sweep.train_cell(sweep.cell_config(cfg, freeze_until=freeze, lr=lr), ds, split, run_dir, name,
                                   n_boot=cfg.n_boot)
            g = gaps(res["history"])
            g.to_csv(run_dir / "cells" / name / "gaps.csv", index=False)
            curves[name] = g
            last = g.iloc[-1] if len(g) else {}
            rows.append({"freeze_until": freeze, "learning_rate": lr,
                         "trainable": res["parameters"]["trainable"], "non_trainable": res["parameters"]["non_trainable"],
                         **sweep.summary_row(res),
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
    md = _markdown(cfg, table, long, wall, len(ds))
    (run_dir / "report.md").write_text(md)
    out = {"cells": table.to_dict(orient="records"), "wall_seconds": round(wall, 1)}
    run_dir.write_json("metrics.json", out)
    common.log("summary:\n" + md)
    common.print_tensorboard_hint(run_dir)
    return out


def _markdown(cfg, table: pd.DataFrame, long: pd.DataFrame, wall: float, n: int) -> str:
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


def main(argv=None) -> int:
    from cxr_tf.errors import run_main

    return run_main(lambda: run(parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
