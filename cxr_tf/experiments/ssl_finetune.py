"""Does SSL pretraining help? Label-efficiency curve: SSL-initialised encoder vs scratch.

The same UNet encoder (``unet_cbam_encoder_d{depth}w{width}``) + GAP + softmax head is
trained twice per point: initialised from an SSL artifact (``--init ssl:<folder>``,
written by ``cxr_tf.experiments.ssl_pretrain``) and from random weights; same patient-level
split, same training subset, same number of optimizer steps, same seed. Points: fractions
of the training patients' labels (default 1%, 10%, 100%). Test AUC and accuracy with 95%
CIs (``cxr_tf.evaluation``: bootstrap for AUC, Wilson for accuracy) and a plot.

Commands::

    python -m cxr_tf.experiments.ssl_finetune --data-dir $CXR_DATA_DIR/pneumoniamnist \\
        --init ssl:runs/ssl_pretrain/<stamp>/ssl_encoder
    python -m cxr_tf.experiments.ssl_finetune --data-dir $CXR_DATA_DIR/kermany224 --init ssl:DIR
    python -m cxr_tf.experiments.ssl_finetune --smoke     # tests: a tiny pretrain first, synthetic data

Writes ``runs/ssl_finetune/<UTC timestamp>/``: config, splits, one sub-folder per
(fraction, arm) with TensorBoard, history and best checkpoint, ``results.csv``,
``results.md``, ``metrics.json`` and ``plots/label_efficiency.png``.

Resume: re-running the same command (or ``--run-dir DIR``) reopens the run; finished points
(``point.json``) are reused and an interrupted one resumes at its last committed epoch
(:mod:`cxr_tf.training.resume`); ``--smoke``'s pretraining sits in ``<run>/pretrain`` and is
reused too. ``--strategy multi_worker`` (TF_CONFIG, ``--run-dir``) trains every point with
the shared custom loop (:mod:`cxr_tf.training.distributed`); only the chief evaluates and writes.

Results (2-core AMD EPYC VM, run pinned to 1 core, TF 2.21; details and the exact commands in
``experiments/results/ssl.md``): kermany224 normal vs pneumonia, 64 px, depth-3 width-16
encoder pretrained 2 epochs, 60 steps x 32 images per point, one seed, 340 s wall in all.
Test AUC / accuracy, SSL vs scratch: 1% labels 0.941 / 0.871 vs 0.946 / 0.775; 10% 0.970 /
0.938 vs 0.977 / 0.884; 100% 0.989 / 0.948 vs 0.955 / 0.777 (accuracy gains at every point,
AUC gain only at 100%).
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import time

import numpy as np

from cxr_tf.training.config import HeadConfig, TrainConfig, opt, parse_config
from cxr_tf.training.task import TaskDataConfig


@dataclasses.dataclass
class SSLFinetuneConfig(HeadConfig, TaskDataConfig, TrainConfig):
    experiment: str = "ssl_finetune"
    classes: str = "pneumonia"
    init: str = opt("", "SSL encoder to fine-tune, ssl:<ssl_pretrain run folder> (required for the ssl arm "
                    "unless --smoke)")
    preset: str = opt("preset:cxr_pneumonia_unet128", "trunk of the preset arm: preset:NAME (a supervised preset of "
                      "the same encoder; its head is replaced)")
    arms: str = opt("ssl,scratch", "comma list of arms: ssl (SSL-initialised), scratch (random init), preset "
                    "(--preset's trunk)")
    seeds: str = opt("", "comma list of training seeds (label subset, initialisation, batches) per point; the "
                     "split keeps --seed (empty: --seed only)")
    fractions: str = opt("0.01,0.1,1.0", "comma list of shares of the training patients whose labels are used")
    steps_per_epoch: int = opt(50, "optimizer steps per epoch, the same budget for every point and arm")
    image_size: int = 64
    batch_size: int = 32
    epochs: int = 6
    lr: float = 1e-3
    head: str = "gap"
    freeze_until: int = 0
    bn_momentum: float = 0.9
    augment: str = "none"
    early_stopping: int = 0
    synthetic_n: int = 600
    synthetic_difficulty: float = 0.3

    def apply_smoke(self) -> None:
        super().apply_smoke()
        self.image_size = 32
        self.batch_size = 8
        self.steps_per_epoch = 3
        self.epochs = 1
        self.synthetic_n = 96
        self.fractions = "0.25,1.0"

    def validate(self) -> None:
        super().validate()
        from cxr_tf.errors import CXRConfigError

        bad = [a for a in self.arm_list() if a not in ARMS]
        if bad or not self.arm_list():
            raise CXRConfigError(f"--arms must be a comma list of {', '.join(ARMS)}; got {self.arms!r}")
        if "preset" in self.arm_list() and not self.preset.startswith("preset:"):
            raise CXRConfigError(f"--preset must be preset:NAME; got {self.preset!r}")
        self.seed_list()
        fr = self.fraction_list()
        if not fr or any(not 0 < f <= 1 for f in fr):
            raise CXRConfigError(f"--fractions must be in (0, 1]; got {self.fractions!r}")
        if "ssl" in self.arm_list() and not self.smoke and not self.init.startswith("ssl:"):
            raise CXRConfigError(f"--init must be ssl:<folder written by ssl_pretrain>; got {self.init!r}")

    def seed_list(self) -> list[int]:
        try:
            return [int(x) for x in self.seeds.split(",") if x.strip()] or [self.seed]
        except ValueError:
            from cxr_tf.errors import CXRConfigError

            raise CXRConfigError(f"--seeds must be integers like 0,1,2; got {self.seeds!r}") from None

    def arm_list(self) -> list[str]:
        return [a.strip() for a in self.arms.split(",") if a.strip()]

    def fraction_list(self) -> list[float]:
        try:
            return [float(f) for f in self.fractions.split(",") if f.strip()]
        except ValueError:
            from cxr_tf.errors import CXRConfigError

            raise CXRConfigError(f"--fractions must be numbers like 0.01,0.1,1; got {self.fractions!r}") from None


def parse(argv=None) -> SSLFinetuneConfig:
    return parse_config(SSLFinetuneConfig, list(sys.argv[1:] if argv is None else argv),
                        description=__doc__.split("\n")[0])


def label_subset(ds, fraction: float, seed: int, min_per_class: int = 2) -> np.ndarray:
    """Indices of a patient-level subset holding ``fraction`` of the patients (at least
    ``min_per_class`` patients of every class; by patient, never splitting one)."""
    rng = np.random.default_rng(seed)
    pid = ds.meta["patient_id"].to_numpy()
    cls = ds.class_index()
    patients = np.unique(pid)
    if fraction >= 1.0:
        return np.arange(len(ds))
    first_cls = {p: c for p, c in zip(pid[::-1], cls[::-1])}  # a patient's class: its first image's
    chosen = set(rng.choice(patients, max(1, math.ceil(fraction * len(patients))), replace=False).tolist())
    for c in range(ds.num_classes):
        have = [p for p in chosen if first_cls[p] == c]
        pool = [p for p in patients if first_cls[p] == c and p not in chosen]
        need = max(0, min_per_class - len(have))
        if need and pool:
            chosen |= set(rng.choice(pool, min(need, len(pool)), replace=False).tolist())
    return np.flatnonzero(np.isin(pid, list(chosen)))


def _smoke_init(cfg, run_dir) -> str:
    """--smoke without --init: a tiny pretraining on synthetic CXRs first (in ``<run>/pretrain``:
    a re-run of the same command reuses it, or resumes it when it was killed)."""
    from cxr_tf.ssl import pretrain

    folder = run_dir / "pretrain"
    encoder = folder / "ssl_encoder"
    if (folder / "metrics.json").is_file() and (encoder / "ssl_encoder.json").is_file():
        from cxr_tf.training import flow as common

        common.log(f"smoke pretraining: done before, reusing {encoder}")
        return f"ssl:{encoder}"
    pre = pretrain.parse(["--smoke", "--run-dir", str(folder), "--image-size", str(cfg.image_size),
                          "--seed", str(cfg.seed)])
    return "ssl:" + pretrain.run(pre)["encoder"]


ARMS = ("ssl", "scratch", "preset")
ARM_LABELS = {"ssl": "SSL init", "scratch": "scratch", "preset": "preset trunk"}


def train_point(cfg, arm, backbone, init, train_sub, val_ds, test_ds, run_dir, class_names, seed=None,
                strategy=None):
    """Train one (fraction, arm) and return ``(test metrics, fit seconds)``.

    ``run_dir`` is the point's folder: a killed training resumes there from its last
    committed epoch (:mod:`cxr_tf.training.resume`). Under ``--strategy multi_worker`` the
    shared custom loop trains (:func:`cxr_tf.training.distributed.fit_distributed`); a
    non-chief worker returns ``(None, seconds)`` after training (only the chief evaluates).
    """
    import contextlib

    import keras

    from cxr_tf.data import build_pipeline
    from cxr_tf.evaluation import classification_metrics
    from cxr_tf.models import build_model
    from cxr_tf.training import flow as common
    from cxr_tf.training import resume
    from cxr_tf.training.loop import compile_classifier

    seed = cfg.seed if seed is None else seed
    multi = cfg.strategy == "multi_worker"
    keras.utils.set_random_seed(seed)  # every arm: the same head init and batches
    weights = {"ssl": init, "preset": cfg.preset}.get(arm)
    with strategy.scope() if multi else contextlib.nullcontext():
        model = build_model(backbone, num_classes=len(class_names), image_size=cfg.image_size, head=cfg.head,
                            dropout=cfg.dropout, freeze_until=cfg.freeze_until, class_names=class_names,
                            weights=weights, bn_momentum=cfg.bn_momentum)
    train = build_pipeline(train_sub, cfg.image_size, cfg.batch_size, training=True, policy=cfg.augment,
                           balance=cfg.balance if cfg.balance == "oversample" else "none", seed=seed,
                           epoch_size=cfg.steps_per_epoch * cfg.batch_size)
    val = build_pipeline(val_ds, cfg.image_size, cfg.batch_size, training=False)
    test = build_pipeline(test_ds, cfg.image_size, cfg.batch_size, training=False)
    with strategy.scope() if multi else contextlib.nullcontext():
        compile_classifier(model, cfg.optimizer_config(), train.steps, cfg.epochs, cfg.label_smoothing)
    # the shared trainer (resume; multi_worker: the custom loop); no class weights and no
    # sample-image logger, as before (points are many)
    _, fit_s = common.fit(cfg, model, None, (train, val, test), run_dir, loggers=False,
                          distributed={"strategy": strategy, "class_weights": False})
    if not common.is_chief(cfg):
        return None, fit_s
    common.restore_best(model, run_dir)
    prob = np.asarray(model.predict(test.dataset, verbose=0))
    m = classification_metrics(test_ds.class_index(), prob, class_names, seed=seed)
    resume.finish(run_dir)
    return m, fit_s


def plot_curve(rows, path, title):
    """Test AUC and accuracy against the share of labels, one line per arm (mean over
    seeds; error bars: the 95% CI of a single seed, or the range over seeds)."""
    from cxr_tf.evaluation.plots import _new_figure, _save

    fig = _new_figure(9, 3.6)
    colors = {"ssl": "tab:blue", "scratch": "tab:orange", "preset": "tab:green"}
    for k, key in enumerate(("auc", "accuracy")):
        ax = fig.add_subplot(1, 2, k + 1)
        for arm in ARMS:
            pts = [r for r in rows if r["arm"] == arm]
            if not pts:
                continue
            fracs = sorted({r["fraction"] for r in pts})
            x, y, lo, hi = [], [], [], []
            for f in fracs:
                rs = [r for r in pts if r["fraction"] == f]
                v = float(np.mean([r[key] for r in rs]))
                if len(rs) > 1:
                    a, b = min(r[key] for r in rs), max(r[key] for r in rs)
                else:
                    a = rs[0][f"{key}_lo"] if rs[0][f"{key}_lo"] is not None else v
                    b = rs[0][f"{key}_hi"] if rs[0][f"{key}_hi"] is not None else v
                x.append(100 * f)
                y.append(v)
                lo.append(max(0.0, v - a))
                hi.append(max(0.0, b - v))
            ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, color=colors[arm], label=ARM_LABELS[arm])
        ax.set_xscale("log")
        ax.set_xlabel("% of training labels")
        ax.set_ylabel("test AUC" if key == "auc" else "test accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return _save(fig, path)


def run(cfg: SSLFinetuneConfig) -> dict:
    from cxr_tf.training import flow as common

    t0 = time.time()
    strategy = common.setup_runtime(cfg)  # seeds, determinism, the strategy
    import pandas as pd

    from cxr_tf.evaluation import write_metrics_json
    from cxr_tf.training.run import RunDir, create_run_dir

    # A re-run of the same command (or --run-dir DIR) reopens the run: finished points are
    # reused, an interrupted one resumes at its last committed epoch.
    run_dir = create_run_dir(cfg, reuse=True)
    chief = common.is_chief(cfg)
    common.log(f"run folder: {run_dir}" + (" (resuming: same config as before; finished points are reused)"
                                           if run_dir.reused else ""))
    init = cfg.init or (_smoke_init(cfg, run_dir) if "ssl" in cfg.arm_list() else "")
    from cxr_tf.models.unet_cbam import resolve_ssl_path, ssl_backbone_name

    backbone = ssl_backbone_name(init) if init else "unet_cbam_encoder"
    meta = resolve_ssl_path(init)[1] if init else {}
    if meta and int(meta.get("image_size", cfg.image_size)) != cfg.image_size:
        common.log(f"note: SSL encoder pretrained at {meta['image_size']} px, fine-tuned at {cfg.image_size} px")
    # The split is drawn on the whole data set, the one ssl_pretrain's "@train" sources
    # reproduce; --max-images / --fraction then keep whole patients of it, each in its
    # split (a split drawn on the subset could put pretraining images into the test set).
    full = dataclasses.replace(cfg, max_images=0, fraction=0.0)
    full.given = getattr(cfg, "given", frozenset())
    ds = common.load_experiment_data(full, cfg.classes)
    ds = common.check_items(cfg, ds, run_dir)
    split = common.make_split(cfg, ds, run_dir)
    if cfg.max_images or cfg.fraction:
        from cxr_tf.datasets import patient_subset, save_splits

        # the same share of each split (whole patients, class-stratified), so none runs empty
        share = min(cfg.fraction or 1.0, cfg.max_images / len(ds) if cfg.max_images else 1.0)
        keep = np.zeros(len(ds), bool)
        for s in ("train", "val", "test"):
            part = np.flatnonzero(split == s)
            kept = patient_subset(ds.subset(part), fraction=share, seed=cfg.seed).patient_ids
            keep[part[np.isin(ds.patient_ids[part], kept)]] = True
        common.log(f"subset (--max-images {cfg.max_images} / --fraction {cfg.fraction}): {keep.sum()} of {len(ds)} "
                   "images, the same share of each split")
        ds, split = ds.subset(keep), split[keep]
        save_splits(run_dir / "splits.csv", ds, split)
    common.log(ds.summary())
    train_ds, val_ds, test_ds = (ds.subset(split == s) for s in ("train", "val", "test"))
    rows = []
    backbones = {"ssl": backbone, "scratch": backbone}
    if "preset" in cfg.arm_list():
        from cxr_tf.models.presets import load_preset

        pb = load_preset(cfg.preset).backbone
        if init and pb != backbone:
            from cxr_tf.errors import CXRConfigError

            raise CXRConfigError(f"--preset {cfg.preset} is a {pb}, the SSL encoder a {backbone}: the arms would "
                                 "compare architectures, not initialisations")
        backbones = {a: pb for a in backbones} | {"preset": pb}
    seeds = cfg.seed_list()
    for fraction in cfg.fraction_list():
        for seed in seeds:
            idx = label_subset(train_ds, fraction, seed)
            sub = train_ds.subset(idx)
            tag = f"{fraction:g}" + (f"_seed{seed}" if len(seeds) > 1 else "")
            sub.meta[["patient_id"]].assign(item=[str(i) for i in sub.meta["item"]]).to_csv(
                run_dir / f"train_subset_{tag}.csv", index=False)
            for arm in cfg.arm_list():
                point = RunDir(run_dir / (f"frac{tag}_{arm}"))
                common.log(f"fraction {fraction:g}, seed {seed} ({len(sub)} images, "
                           f"{sub.meta['patient_id'].nunique()} patients), {arm}")
                # finished: the chief's point.json (every worker decides alike: none trains alone)
                from cxr_tf.training.distributed import chief_run_dir

                done_dir = chief_run_dir(cfg, point)
                done = done_dir / "point.json"
                if done.is_file() and (done_dir / "metrics.json").is_file():
                    common.log(f"  done before, reusing {done_dir / 'metrics.json'}")
                    m = json.loads((done_dir / "metrics.json").read_text())
                    fit_s = json.loads(done.read_text())["fit_seconds"]
                else:
                    m, fit_s = train_point(cfg, arm, backbones[arm], init, sub, val_ds, test_ds, point,
                                           ds.class_names, seed=seed, strategy=strategy)
                    if not chief:  # a non-chief worker trains only (the chief writes the results)
                        continue
                    write_metrics_json(str(point / "metrics.json"), m)
                    point.write_json("point.json", {"fit_seconds": fit_s})  # the point is finished
                auc, acc = m["macro_auc"], m["accuracy"]
                a_ci, c_ci = auc.get("bootstrap_ci") or [None, None], acc.get("wilson_ci") or [None, None]
                rows.append({"dataset": ds.name, "fraction": fraction, "seed": seed, "arm": arm,
                             "train_images": len(sub), "train_patients": int(sub.meta["patient_id"].nunique()),
                             "test_images": len(test_ds),
                             "auc": auc["value"], "auc_lo": a_ci[0], "auc_hi": a_ci[1],
                             "accuracy": acc["value"], "accuracy_lo": c_ci[0], "accuracy_hi": c_ci[1],
                             "fit_seconds": round(fit_s, 1)})
                common.log(f"  test AUC {auc['value']:.3f} {a_ci}, accuracy {acc['value']:.3f} {c_ci}")
                # after every point, so a run stopped by a time limit keeps what it measured
                pd.DataFrame(rows).to_csv(run_dir / "results.csv", index=False)
                (run_dir / "results.md").write_text(results_markdown(pd.DataFrame(rows)))
    if not chief:
        common.log("worker done (training); the chief writes the results")
        return {"experiment": cfg.experiment, "chief": False, "wall_seconds": round(time.time() - t0, 1)}
    table = pd.DataFrame(rows)
    table.to_csv(run_dir / "results.csv", index=False)
    md = results_markdown(table)
    (run_dir / "results.md").write_text(md)
    plot_curve(rows, str(run_dir.plots / "label_efficiency.png"), f"{ds.name}: {' vs '.join(ARM_LABELS[a] for a in cfg.arm_list())} ({backbones[cfg.arm_list()[0]]})")
    summary = {"experiment": cfg.experiment, "backbone": backbone, "init": init, "points": rows,
               "wall_seconds": round(time.time() - t0, 1)}
    write_metrics_json(str(run_dir / "metrics.json"), summary)
    common.finish_run(run_dir)
    common.log("\n" + md)
    return summary


def results_markdown(table) -> str:
    """Per-point rows (95% CIs of that training's test metrics) and, with several seeds, the
    mean and standard deviation over seeds per (labels, arm)."""
    def ci(v, lo, hi):
        return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None and not np.isnan(lo) else f"{v:.3f}"

    has_seed = "seed" in table.columns
    lines = ["| labels | arm | seed | train images (patients) | test AUC [95% CI] | test accuracy [95% CI] | fit s |",
             "|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {100 * r.fraction:g}% | {r.arm} | {r.seed if has_seed else ''} | {r.train_images} "
                     f"({r.train_patients}) | {ci(r.auc, r.auc_lo, r.auc_hi)} | "
                     f"{ci(r.accuracy, r.accuracy_lo, r.accuracy_hi)} | {r.fit_seconds} |")
    out = "\n".join(lines) + "\n"
    if has_seed and table["seed"].nunique() > 1:
        g = table.groupby(["fraction", "arm"], sort=True)
        lines = ["", "Mean (standard deviation) over seeds:", "",
                 "| labels | arm | seeds | test AUC | test accuracy |", "|---|---|---|---|---|"]
        for (f, arm), d in g:
            lines.append(f"| {100 * f:g}% | {arm} | {len(d)} | {d['auc'].mean():.3f} ({d['auc'].std(ddof=1):.3f}) | "
                         f"{d['accuracy'].mean():.3f} ({d['accuracy'].std(ddof=1):.3f}) |")
        out += "\n".join(lines) + "\n"
    return out


def main(argv=None) -> int:
    from cxr_tf.errors import run_main

    return run_main(lambda: run(parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
