"""Augmentation ablation with patient-level k-fold cross-validation (seed 004, SPEC S4).

The five cases of the seed, every one trained on the SAME folds:

====  =======================================  ==========================================
case  class mix of the training batches        augmentation (``cxr_tf.data.augment``)
====  =======================================  ==========================================
1     natural (imbalanced: the data's mix)      none
2     natural                                  ``moderate`` (rotation 20, shift 0.1, shear
                                               8, crop/pad 0.1, brightness 0.05,
                                               contrast 0.1)
3     natural                                  ``strong`` (the SPEC S2 geometry: rotation
                                               45, shift 0.15/0.2, shear 16, crop/pad
                                               0.25, plus brightness, contrast, gamma)
4     class-balanced: oversampling, ~1:1:1      ``moderate``
5     class-balanced: oversampling, ~1:1:1      ``strong``
====  =======================================  ==========================================

"Class-balanced by augmentation" (the seed) = every class is drawn with equal
probability (``--balance oversample``: minority images are repeated, and each repeat is
a different random augmentation). ``--moderate-policy`` / ``--strong-policy`` swap the
policies (any ``name+extra`` of :data:`cxr_tf.data.augment.EXTRAS`: clahe, bc, elastic,
mixup, cutmix).

Cross-validation: ``--folds`` (default 5) patient-disjoint folds stratified by class
(:func:`cxr_tf.datasets.kfold_with_validation`); fold i tests on its held-out fifth
and splits the remaining patients train:val 8:1 (the best epoch is chosen on
validation AUC). Every image is tested exactly once per case.

Outputs in ``runs/augmentation_ablation/<stamp>/``: ``folds.csv`` (the folds, shared by
every case), ``cells/case<c>_fold<i>/`` (one training each; a finished one is never
re-run: re-running the same command resumes), ``tensorboard/case<c>_fold<i>/``
(all runs side by side), ``results.csv`` (per case and fold), ``summary.csv`` and
``report.md`` (mean and std of macro AUC, accuracy and per-class recall; paired t-test
and Wilcoxon signed-rank test across folds between cases), ``plots/ablation.png``.

Commands::

    python -m cxr_tf.experiments.augmentation_ablation --data-dir $CXR_DATA_DIR/kermany224
    # what we ran on 2 CPU cores (experiments/results/augmentation_ablation.md):
    python -m cxr_tf.experiments.augmentation_ablation --data-dir $CXR_DATA_DIR/kermany224 \\
        --backbone tiny_cnn --head gap --freeze-until 0 --weights none --image-size 64 \\
        --epochs 6 --batch-size 32 --lr 1e-3 --bn-momentum 0.9 --early-stopping 0

Result (all 5,216 kermany224 images, one core of the 2-core AMD EPYC VM, 18 min): macro AUC
none 0.881 > moderate 0.866 > strong 0.830 on the natural mix, balanced + moderate 0.868,
balanced + strong 0.821 (strong vs moderate p <= 0.01 in both mixes); balancing lifts viral
recall 0.32 -> 0.44-0.48.

Defaults are the seed's model (ResNet50 frozen to 144, extra-FC head, Adam 1e-4, batch
32, 224 px); on 2 CPU cores that is days for 25 trainings, so our committed run used a
small CNN at 64 px on a patient-level subset (see the results file for the numbers,
hardware and wall time).
"""
from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np
import pandas as pd

from cxr_tf.training.task import ClassifierConfig
from cxr_tf.training.config import opt, parse_config

CASES = {
    1: ("none", "none"),
    2: ("none", "moderate"),
    3: ("none", "strong"),
    4: ("oversample", "moderate"),
    5: ("oversample", "strong"),
}


@dataclasses.dataclass
class AugmentationAblationConfig(ClassifierConfig):
    experiment: str = "augmentation_ablation"
    weights: str = "none"  # its committed results train from scratch; --weights takes any other source
    folds: int = opt(5, "patient-level cross-validation folds (every image tested once per case)")
    val_fraction: float = opt(1 / 9, "share of each fold's training patients held out for validation (1/9: train:val "
                              "8:1)")
    cases: str = opt("1,2,3,4,5", "comma list of the seed's cases 1-5 to run (class mix x augmentation)")
    moderate_policy: str = opt("moderate", "augmentation policy used as the cases' 'moderate'")
    strong_policy: str = opt("strong", "augmentation policy used as the cases' 'strong'")
    n_boot: int = opt(200, "bootstrap resamples for confidence intervals")
    export: bool = False

    def apply_smoke(self) -> None:
        super().apply_smoke()
        self.backbone, self.head, self.freeze_until = "tiny_cnn", "gap", 0
        self.image_size, self.epochs, self.folds = 32, 1, 2
        self.synthetic_n, self.max_images, self.n_boot = 90, 0, 20
        self.lr, self.bn_momentum = 1e-3, 0.9

    def validate(self) -> None:
        super().validate()
        from cxr_tf.errors import CXRConfigError

        bad = [c for c in self.case_list if c not in CASES]
        if bad:
            raise CXRConfigError(f"--cases: unknown case(s) {bad}; the cases are {sorted(CASES)}")
        if self.folds < 2:
            raise CXRConfigError(f"--folds must be >= 2; got {self.folds}")
        from cxr_tf.data.augment import get_policy

        for p in (self.moderate_policy, self.strong_policy):
            try:
                get_policy(p)
            except ValueError as e:
                raise CXRConfigError(str(e)) from None

    @property
    def case_list(self) -> list[int]:
        from cxr_tf.training.sweep import parse_list

        return parse_list(self.cases, int)

    def case_settings(self, case: int) -> dict:
        balance, policy = CASES[case]
        policy = {"moderate": self.moderate_policy, "strong": self.strong_policy}.get(policy, policy)
        return {"balance": balance, "augment": policy}


def parse(argv=None) -> AugmentationAblationConfig:
    return parse_config(AugmentationAblationConfig, argv, description=__doc__.split("\n")[0])


def paired_tests(results: pd.DataFrame, metric: str = "macro_auc") -> pd.DataFrame:
    """Paired tests across folds between every two cases (same folds, so pair by fold)."""
    from scipy import stats

    wide = results.pivot(index="fold", columns="case", values=metric)
    rows = []
    cases = list(wide.columns)
    for i, a in enumerate(cases):
        for b in cases[i + 1:]:
            pair = wide[[a, b]].dropna()
            d = (pair[b] - pair[a]).to_numpy()
            t = stats.ttest_rel(pair[b], pair[a]) if len(d) > 1 and np.ptp(d) > 0 else None
            w = stats.wilcoxon(d) if len(d) > 1 and np.any(d != 0) else None
            rows.append({"case_a": a, "case_b": b, "metric": metric, "folds": len(d),
                         "mean_diff_b_minus_a": float(d.mean()) if len(d) else float("nan"),
                         "t_test_p": float(t.pvalue) if t is not None else float("nan"),
                         "wilcoxon_p": float(w.pvalue) if w is not None else float("nan")})
    return pd.DataFrame(rows)


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and std across folds of every metric column, per case."""
    metrics = [c for c in results.columns if c not in ("case", "fold", "balance", "augment", "seconds")]
    g = results.groupby("case")
    out = g[["balance", "augment"]].first()
    for m in metrics:
        out[f"{m}_mean"] = g[m].mean()
        out[f"{m}_std"] = g[m].std(ddof=1)
    out["folds"] = g.size()
    return out.reset_index()


def plot(results: pd.DataFrame, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["macro_auc", "accuracy"] + [c for c in results.columns if c.startswith("recall_")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.4), squeeze=False)
    cases = sorted(results["case"].unique())
    for ax, m in zip(axes[0], metrics):
        data = [results.loc[results["case"] == c, m].to_numpy() for c in cases]
        ax.boxplot(data, tick_labels=[str(c) for c in cases], showmeans=True)
        for k, d in enumerate(data, start=1):
            ax.scatter(np.full(len(d), k) + np.linspace(-0.08, 0.08, len(d)), d, s=10, alpha=0.7)
        ax.set_title(m)
        ax.set_xlabel("case")
    fig.suptitle("augmentation ablation: per-fold test metrics")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(cfg, summary: pd.DataFrame, tests: pd.DataFrame, wall: float, n: dict) -> str:
    recall_cols = [c[:-5] for c in summary.columns if c.startswith("recall_") and c.endswith("_mean")]
    head = ["case", "class mix", "augmentation", "macro AUC", "accuracy"] + [r.replace("recall_", "recall ") for r in recall_cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in summary.iterrows():
        cells = [str(r["case"]), "balanced (oversample)" if r["balance"] == "oversample" else "natural", r["augment"]]
        for m in ["macro_auc", "accuracy"] + recall_cols:
            cells.append(f"{r[m + '_mean']:.3f} ± {r[m + '_std']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    t = ["| cases | mean diff (b - a), macro AUC | paired t p | Wilcoxon p |", "|---|---|---|---|"]
    for _, r in tests.iterrows():
        t.append(f"| {r['case_a']} vs {r['case_b']} | {r['mean_diff_b_minus_a']:+.3f} | {r['t_test_p']:.3f} | {r['wilcoxon_p']:.3f} |")
    return (f"# Augmentation ablation ({cfg.folds}-fold patient-level CV)\n\n"
            f"Data: {cfg.data_dir or 'synthetic'} ({n['images']} images, {n['patients']} patients, "
            f"classes {n['classes']}); model {cfg.backbone} (head {cfg.head}, freeze_until {cfg.freeze_until}), "
            f"{cfg.image_size} px, {cfg.epochs} epochs, batch {cfg.batch_size}, lr {cfg.lr}. "
            f"Mean ± std over folds of the held-out fold's metrics.\n\n" + "\n".join(lines)
            + "\n\nPaired tests across folds (same folds for every case):\n\n" + "\n".join(t)
            + f"\n\nWall time: {wall:.0f} s. Plot: ![ablation](plots/ablation.png) "
              f"TensorBoard: `tensorboard --logdir tensorboard`.\n")


def run(cfg: AugmentationAblationConfig) -> dict:
    from cxr_tf.training import flow as common, sweep

    t0 = time.time()
    run_dir, ds = sweep.start(cfg)
    from cxr_tf.datasets import kfold_with_validation, save_splits
    from cxr_tf.datasets.splits import portable_item_names

    folds = kfold_with_validation(ds, cfg.folds, cfg.val_fraction, cfg.seed)
    table = pd.DataFrame({"item": portable_item_names(ds), "patient": ds.patient_ids,
                          "label": np.array(ds.class_names)[ds.class_index()]})
    for i, s in enumerate(folds):
        table[f"fold{i}"] = s
    table.to_csv(run_dir / "folds.csv", index=False)

    rows = []
    for case in cfg.case_list:
        settings = cfg.case_settings(case)
        for i, split in enumerate(folds):
            name = f"case{case}_fold{i}"
            cell_cfg = sweep.cell_config(cfg, **settings)
            cell = sweep.CellRun(run_dir, name)
            save_splits(cell / "splits.csv", ds, split)  # before training: an interrupted cell has it too
            res = sweep.train_cell(cell_cfg, ds, split, run_dir, name, n_boot=cfg.n_boot)
            if not (cell / "splits.csv").exists():  # train_cell starts a cell anew when its config changed
                save_splits(cell / "splits.csv", ds, split)
            rows.append({"case": case, "fold": i, **settings, **sweep.summary_row(res), "seconds": res["wall_seconds"]})
            common.log(f"{name}: test macro AUC {rows[-1]['macro_auc']:.3f}, accuracy {rows[-1]['accuracy']:.3f}")
    results = pd.DataFrame(rows)
    results.to_csv(run_dir / "results.csv", index=False)
    summary = summarise(results)
    summary.to_csv(run_dir / "summary.csv", index=False)
    tests = pd.concat([paired_tests(results, m) for m in ("macro_auc", "accuracy")], ignore_index=True)
    tests.to_csv(run_dir / "paired_tests.csv", index=False)
    plot(results, run_dir.plots / "ablation.png")
    _write_tb_summary(run_dir, summary)
    n = {"images": len(ds), "patients": int(pd.Series(ds.patient_ids).nunique()), "classes": ", ".join(ds.class_names)}
    wall = time.time() - t0
    md = _markdown(cfg, summary, tests[tests["metric"] == "macro_auc"], wall, n)
    (run_dir / "report.md").write_text(md)
    out = {"cases": summary.to_dict(orient="records"), "paired_tests": tests.to_dict(orient="records"),
           "data": n, "wall_seconds": round(wall, 1)}
    run_dir.write_json("metrics.json", out)
    common.log("summary:\n" + md)
    common.print_tensorboard_hint(run_dir)
    return out


def _write_tb_summary(run_dir, summary: pd.DataFrame) -> None:
    import tensorflow as tf

    for _, r in summary.iterrows():
        w = tf.summary.create_file_writer(str(run_dir.tensorboard / f"case{r['case']}_mean"))
        with w.as_default():
            for m in ("macro_auc", "accuracy"):
                tf.summary.scalar(f"cv/{m}_mean", float(r[f"{m}_mean"]), step=0)
                tf.summary.scalar(f"cv/{m}_std", float(r[f"{m}_std"]), step=0)
        w.flush()


def main(argv=None) -> int:
    from cxr_tf.errors import run_main

    return run_main(lambda: run(parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
