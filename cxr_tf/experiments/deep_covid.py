"""Deep-COVID (seed 003, Minaee et al. 2020): COVID vs non-COVID with only the last layer trained.

The paper fine-tuned the last layer of ImageNet-pretrained ResNet18, ResNet50, SqueezeNet
and DenseNet-121 (Adam lr 1e-4, batch 20 in its code, 100 epochs, 224 px, COVID training
images augmented x5) and reported sensitivity and specificity over a sweep of thresholds
with 95% CIs (normal approximation, n = 100 COVID test images), ROC and PR curves and
per-class probability histograms.

Because the trunk is frozen, its features are computed once (COVID training images with
their augmented copies included) and the last layer is trained on the cached features.
The run measures, on the first model, one epoch of training the same layer through the
frozen trunk, and reports the speed-up.

Trunk weights (``--trunk``): ImageNet weights cannot be downloaded here, and a last layer
on a random trunk measures nothing, so the default ``pretrain`` first trains each
backbone briefly on Kermany pneumonia-vs-normal (in-domain, pediatric), excluding every
Kermany patient in this split's validation and test sets, then freezes it.
``--trunk imagenet`` keeps the paper's setting where weights can be downloaded;
``--trunk none`` uses random trunks; ``--trunk DIR`` loads ``DIR/<backbone>.keras`` (trunks
a previous run saved in its ``trunks/`` folder); ``--trunk preset:NAME`` (or ``run:DIR``,
``ssl:DIR``, a checked URL) goes through the weights resolver (one backbone: ``--models``).

Commands::

    python -m cxr_tf.experiments.deep_covid --data-dir $CXR_DATA_DIR             # 224 px, 4 models
    python -m cxr_tf.experiments.deep_covid --image-size 64 --models resnet18,squeezenet
    python -m cxr_tf.experiments.deep_covid --smoke                               # tiny, for tests

Writes ``runs/deep_covid/<UTC>/``: splits, ``source_mix.csv``, ``trunks/`` (with
``<model>.json``, the pretraining's record), ``cells/<model>/`` (the head's history.csv,
best checkpoint, resume backup, ``result.json`` once evaluated; ``pretrain/``: the trunk
pretraining's history and backup), per model
``<model>/threshold_sweep.csv`` and histograms, ``plots/roc_all.png`` and ``plots/pr_all.png``
(all models on one plot), ``deep_covid.md`` (sweep table with normal and Wilson CIs),
``cam_border.csv``, ``speedup.json``, TensorBoard CAM overlays, and exports
``saved_models/deep_covid_<model>/<version>/`` with the Keras model in ``assets.extra``
(for ``cxr-tf explain``).

Resume and multi-worker: re-running the same command (or ``--run-dir DIR``) reuses finished
models and resumes an interrupted training from its last committed epoch; ``--strategy
multi_worker`` (TF_CONFIG, ``--run-dir`` on every worker) pretrains each trunk on all
workers, the chief alone trains the heads on cached features, evaluates and exports.

Result (experiments/results/deep_covid.md; 2-core AMD EPYC VM, one core, 12 min 44 s):
``--image-size 64 --n-non-covid 2000 --pretrain-images 2000 --pretrain-epochs 3
--export-models squeezenet`` on covid_ieee8023 + covid19_radiography + kermany224, test 56
COVID / 593 non-COVID: AUC ResNet18 0.869, ResNet50 0.806, SqueezeNet 0.642, DenseNet-121
0.887; specificity at sensitivity 98% 0.14-0.22 (paper, ImageNet trunks at 224 px: 0.75-0.93);
cached features 21.6x faster than training through the trunk for 100 epochs. ResNet18 at
``--image-size 128``: AUC 0.928, specificity 0.816 at sensitivity 98% (paper 0.907), 44.5x.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import numpy as np

from cxr_tf.training.config import ExportDirConfig, NormConfig, TrainConfig, opt, parse_config

MODELS = "resnet18,resnet50,squeezenet,densenet121"


@dataclasses.dataclass
class DeepCovidConfig(ExportDirConfig, NormConfig, TrainConfig):
    experiment: str = "deep_covid"
    data_dir: str | None = opt(os.environ.get("CXR_DATA_DIR"), "data root holding covid_ieee8023/ and kermany224/ "
                               "(default: $CXR_DATA_DIR)")
    models: str = opt(MODELS, "comma list of registry names of the trunks to compare")
    seed: int = 3
    split: str = "6:1:3"  # a large test split, as the paper's (100 COVID / 3,000 non-COVID)
    n_covid: int = opt(184, "COVID images drawn (paper: 84 train + 100 test)")
    n_non_covid: int = opt(5000, "non-COVID images drawn (paper: 2,000 train + 3,000 test)")
    covid_copies: int = opt(5, "copies of each COVID training image (original + augmented)")
    augment: str = "light"
    epochs: int = 100
    batch_size: int = 20
    lr: float = 1e-4
    trunk: str = opt("pretrain", "trunk weights: pretrain (on Kermany first) | imagenet | none | DIR with "
                     "<backbone>.keras | preset:NAME | run:DIR")
    pretrain_images: int = opt(2000, "Kermany images for --trunk pretrain")
    pretrain_epochs: int = opt(3, "epochs of --trunk pretrain")
    pretrain_lr: float = opt(1e-3, "learning rate of --trunk pretrain")
    bn_momentum: float = 0.9
    measure_speedup: bool = opt(True, "time cached-feature training against training through the trunk")
    cam_images: int = opt(32, "test images for the CAM border check and TensorBoard overlays")
    cam_method: str = opt("gradcam", "CAM method: gradcam | gradcam++ | scorecam")
    export_models: str = opt("all", "models to export: all | none | comma list")
    balance_sources: bool = opt(False, "source-balanced design: every class from the same sources in the same "
                                "proportions (--n-covid / --n-non-covid caps then not applied)")

    def apply_smoke(self) -> None:
        super().apply_smoke()
        self.n_covid, self.n_non_covid = 20, 40
        self.epochs, self.batch_size = 3, 8
        self.pretrain_images, self.pretrain_epochs = 48, 1
        self.cam_images = 4
        self.covid_copies = 2
        if self.models == MODELS:
            self.models = "tiny_cnn"


def _draw(ds, n_per_class: dict, seed: int):
    rng = np.random.default_rng(seed)
    cls = ds.class_index()
    keep = []
    for c, name in enumerate(ds.class_names):
        idx = rng.permutation(np.flatnonzero(cls == c))
        keep.append(idx[: n_per_class[name]] if n_per_class[name] else idx)
    return ds.subset(np.sort(np.concatenate(keep)))


def pretrain_trunk(cfg, backbone: str, exclude_patients: set, path, log, run=None, strategy=None,
                   sub: str | None = None) -> dict:
    """Train ``backbone`` briefly on Kermany pneumonia-vs-normal; save its trunk to ``path``.

    Trained by the shared trainer (:func:`cxr_tf.training.flow.fit`, no validation, the last
    epoch's weights kept): in ``run`` (a folder; default ``<path>.train/``) it keeps
    history.csv and the resume backup, so a killed pretraining resumes from its last
    committed epoch; under ``--strategy multi_worker`` (model built in ``strategy``'s scope,
    ``sub``: the folder's path inside the run) the workers train it together and only the
    chief saves the trunk.
    """
    import keras
    import tensorflow as tf

    from cxr_tf.data import build_pipeline
    from cxr_tf.datasets.covid import load_kermany_pneumonia_normal
    from cxr_tf.models import build_model
    from cxr_tf.models.weights import save_backbone_weights
    from cxr_tf.training import flow as common
    from cxr_tf.training import sweep
    from cxr_tf.training.loop import compile_classifier
    from cxr_tf.training.run import RunDir

    k = load_kermany_pneumonia_normal(os.path.join(cfg.data_dir, "kermany224"))
    k = k.select_classes({"normal": "normal", "pneumonia": "pneumonia"}, ["normal", "pneumonia"])
    pid = np.array(["kermany224:" + p for p in k.patient_ids])
    k = k.subset(~np.isin(pid, list(exclude_patients)))
    rng = np.random.default_rng(cfg.seed)
    k = k.subset(np.sort(rng.permutation(len(k))[: cfg.pretrain_images]))
    keras.utils.set_random_seed(cfg.seed)
    batch = 32 if not cfg.smoke else 8
    pipe = build_pipeline(k, cfg.image_size, batch, training=True, policy=cfg.augment,
                          balance="oversample", seed=cfg.seed)
    with (strategy or tf.distribute.get_strategy()).scope():
        model = build_model(backbone, num_classes=2, image_size=cfg.image_size, head="gap", freeze_until=0,
                            bn_momentum=cfg.bn_momentum, class_names=k.class_names)
        from cxr_tf.training.config import OptimizerConfig

        compile_classifier(model, OptimizerConfig(lr=cfg.pretrain_lr), pipe.steps, cfg.pretrain_epochs)
    run = run if run is not None else RunDir(f"{path}.train")
    # the pretraining's own settings (no early stopping, the pipeline's oversampling, its batch)
    pcfg = sweep.worker_config(cfg, sub or str(run), epochs=cfg.pretrain_epochs, batch_size=batch, early_stopping=0,
                               balance="oversample")
    history, seconds = common.fit(pcfg, model, k, (pipe, None, None), run, loggers=False, monitor="auc")
    auc = history.get("auc") or [float("nan")]  # the multi-worker loop logs loss and accuracy only
    info = {"images": len(k), "epochs": cfg.pretrain_epochs, "seconds": round(seconds, 1),
            "final_train_auc": float(auc[-1]), "excluded_patients": len(exclude_patients)}
    if common.is_chief(cfg):
        save_backbone_weights(model, str(path))
        log(f"{backbone}: pretrained trunk on {len(k)} Kermany images in {info['seconds']}s "
            f"(train AUC {info['final_train_auc']:.3f}) -> {path}")
    return info


def augmented_copies(x: np.ndarray, copies: int, policy: str, seed: int) -> np.ndarray:
    """``x`` plus ``copies - 1`` augmented versions (the paper's x5 COVID augmentation)."""
    import tensorflow as tf

    from cxr_tf.data import apply_policy

    out = [x]
    for k in range(1, copies):
        out.append(np.concatenate([apply_policy(tf.constant(x[i:i + 64]), policy, tf.constant([seed, k * 1000 + i]))
                                   .numpy() for i in range(0, len(x), 64)]))
    return np.concatenate(out)


def sweep_markdown(sweeps: dict) -> str:
    """Rows at the sensitivity targets (and a few fixed thresholds) per model, both CIs."""
    def ci(r, what, kind):
        return f"[{r[f'{what}_{kind}_lo']:.3f}, {r[f'{what}_{kind}_hi']:.3f}]"

    lines = ["| model | threshold | chosen for | sensitivity | normal CI | Wilson CI | specificity | normal CI | "
             "Wilson CI | TP/FN | TN/FP |", "|" + "---|" * 11]
    for model, df in sweeps.items():
        pick = df[df["target_sensitivity"].notna() | df["threshold"].isin([0.2, 0.5, 0.8])]
        for _, r in pick.sort_values("threshold").iterrows():
            tgt = "" if np.isnan(r["target_sensitivity"]) else f"sens ≥ {r['target_sensitivity']:g}"
            lines.append(f"| {model} | {r['threshold']:.4f} | {tgt} | {r['sensitivity']:.3f} | "
                         f"{ci(r, 'sensitivity', 'normal')} | {ci(r, 'sensitivity', 'wilson')} | "
                         f"{r['specificity']:.3f} | {ci(r, 'specificity', 'normal')} | "
                         f"{ci(r, 'specificity', 'wilson')} | {int(r['TP'])}/{int(r['FN'])} | "
                         f"{int(r['TN'])}/{int(r['FP'])} |")
    return "\n".join(lines)


def run(cfg: DeepCovidConfig) -> dict:
    """Per model: trunk (pretrained here, or given), features, head, evaluation, export.

    Each model is one resumable unit in ``cells/<model>/`` (the head's history.csv, best
    checkpoint and resume backup; ``pretrain/`` with the trunk pretraining's; ``result.json``
    once evaluated), trained by the shared trainer: the trunk pretraining by
    :func:`cxr_tf.training.flow.fit`, the head on cached features with its resume
    callbacks (:func:`cxr_tf.training.features.resumable_callbacks`). Re-running the same
    command reopens the run folder (or give ``--run-dir``): finished models are reused, a
    finished trunk pretraining is not repeated, an interrupted training resumes from its
    last committed epoch. ``--strategy multi_worker``: the workers pretrain each trunk
    together (the multi-worker loop); the head on cached in-memory features, the evaluation
    and the export are the chief's alone (the head trains in seconds), the other workers
    stop after the pretrainings.
    """
    from cxr_tf.training import flow as common
    from cxr_tf.training import sweep

    t0 = time.time()
    strategy = common.setup_runtime(cfg)
    import keras
    import pandas as pd

    from cxr_tf.data import as_arrays
    from cxr_tf.datasets.covid import load_covid_experiment_data
    from cxr_tf.errors import CXRConfigError
    from cxr_tf.evaluation import (choose_threshold, classification_metrics, plot_pr, plot_probability_histograms,
                                   plot_roc, threshold_sweep)
    from cxr_tf.evaluation.shortcuts import lead_figure, report_source_mix, within_source_auc
    from cxr_tf.evaluation.shortcuts import markdown as within_markdown
    from cxr_tf.explain import cam_check
    from cxr_tf.models import build_model, list_backbones
    from cxr_tf.models.weights import RESOLVER_PREFIXES
    from cxr_tf.training.features import resumable_callbacks
    from cxr_tf.training.resume import load_model_weights
    from cxr_tf.training.run import create_run_dir

    names = [m.strip() for m in cfg.models.split(",") if m.strip()]
    bad = [m for m in names if m not in list_backbones()]
    if bad:
        raise CXRConfigError(f"--models: unknown backbones {bad}; registered: {list_backbones()}")
    run_dir = create_run_dir(cfg, reuse=True)  # the same command reopens the run: finished models are reused
    chief = common.is_chief(cfg)
    common.log(f"run folder: {run_dir}; models: {names}; trunk: {cfg.trunk}"
               + (" (reopened: same config as before; finished models are reused, an interrupted one resumes)"
                  if run_dir.reused else ""))
    # the balanced design also needs ieee8023's own non-COVID images (adult, same collection)
    ds = load_covid_experiment_data(cfg, binary=True, ieee_all_findings=cfg.balance_sources)
    ds = common.take_subset(cfg, ds)  # --max-images / --fraction: whole patients, stratified
    if cfg.balance_sources:
        from cxr_tf.datasets.covid import balance_sources

        ds = balance_sources(ds, cfg.seed)
        design = "source-balanced (" + ", ".join(ds.balanced_sources) + ")"
        if cfg.smoke:  # keep the smoke run tiny; a uniform draw per class keeps the balance in expectation
            ds = _draw(ds, {"non_covid": cfg.n_covid, "covid": cfg.n_covid}, cfg.seed)
        common.log(f"design: {design}; class caps not applied")
    else:
        ds = _draw(ds, {"non_covid": cfg.n_non_covid, "covid": cfg.n_covid}, cfg.seed)
        design = "mixed (as the paper)"
    common.log(ds.summary())
    ds = common.check_items(cfg, ds, run_dir)
    split = common.make_split(cfg, ds, run_dir)
    warns = report_source_mix(ds, split, run_dir)
    parts = {s: ds.subset(split == s) for s in ("train", "val", "test")}
    held_out = set(ds.patient_ids[split != "train"])
    (run_dir / "trunks").mkdir(exist_ok=True)
    if chief:  # multi-worker: only the chief trains heads on cached features
        arrays = {s: as_arrays(d, cfg.image_size) for s, d in parts.items()}
        x_tr, y_tr = arrays["train"]
        is_cov = y_tr[:, 1] == 1
        x_cov = augmented_copies(x_tr[is_cov], cfg.covid_copies, cfg.augment, cfg.seed)
        x_train = np.concatenate([x_tr[~is_cov], x_cov])
        y_train = np.concatenate([y_tr[~is_cov], np.tile(y_tr[is_cov], (cfg.covid_copies, 1))])
        common.log(f"train: {int((~is_cov).sum())} non-COVID + {int(is_cov.sum())} COVID x{cfg.covid_copies} "
                   f"= {len(x_train)} images; val {len(arrays['val'][0])}; test {len(arrays['test'][0])}")
    elif cfg.trunk != "pretrain":
        common.log(f"--trunk {cfg.trunk}: nothing to train together; the chief trains the heads")

    sweeps, curves, rows, cam_rows, info, within_tables = {}, {}, [], [], {}, []
    speedup = None
    for k, name in enumerate(names):
        sub = f"cells/{name}"
        done = sweep.chief_path(cfg, run_dir, sub) / "result.json"  # every worker skips the same models
        if done.is_file():
            if chief:
                r = json.loads(done.read_text())
                rows.append(r["row"])
                cam_rows.append(r["cam"])
                ws = pd.DataFrame(r["within_source"])
                within_tables.append(ws)
                if r.get("export"):
                    info[name] = r["export"]
                speedup = r.get("speedup") or speedup
                sweeps[name] = pd.read_csv(run_dir / name / "threshold_sweep.csv")
                pred = np.load(sweep.CellRun(run_dir, name) / "test_predictions.npz")
                curves[name] = (pred["y_true"] == 1, pred["y_prob"][:, 1])
            common.log(f"{name}: finished before, reusing {done}")
            continue
        cell = sweep.CellRun(run_dir, name)
        keras.utils.set_random_seed(cfg.seed)
        trunk_info = {}
        if cfg.trunk == "pretrain":
            weights = str(run_dir / "trunks" / f"{name}.keras")
            trunk_done = sweep.chief_path(cfg, run_dir, "trunks") / f"{name}.json"  # the pretraining's commit point
            if trunk_done.is_file():
                trunk_info = json.loads(trunk_done.read_text())
                common.log(f"{name}: trunk pretrained before, reusing {weights}")
            else:
                pre = sweep.CellRun(run_dir, f"{name}/pretrain")
                trunk_info = pretrain_trunk(cfg, name, held_out, weights, common.log, run=pre, strategy=strategy,
                                            sub=f"{sub}/pretrain")
                if chief:
                    run_dir.write_json(f"trunks/{name}.json", trunk_info)  # the commit point: trunk saved
                    common.finish_run(pre)
        elif cfg.trunk == "none":
            weights = None
            common.log(f"warning: {name} with a random frozen trunk: only the last layer learns")
        elif cfg.trunk == "imagenet":
            weights = "imagenet"
        elif cfg.trunk.startswith(RESOLVER_PREFIXES):
            weights = cfg.trunk  # the resolver names a wrong backbone (CXRArchitectureError)
        else:
            weights = os.path.join(cfg.trunk, f"{name}.keras")
            if not os.path.isfile(weights):
                raise CXRConfigError(f"--trunk {cfg.trunk}: {weights} not found")
        if not chief:
            common.log(f"{name}: done here; the chief trains the head, evaluates and exports")
            keras.backend.clear_session()
            continue
        clf = build_model(name, num_classes=2, image_size=cfg.image_size, head="gap", freeze_until=-1,
                          weights=weights, class_names=ds.class_names, bn_momentum=cfg.bn_momentum)
        feat_model = keras.Model(clf.input, clf.get_layer("head_gap").output)
        t = time.time()
        f_train = feat_model.predict(x_train, batch_size=64, verbose=0)
        f_val = feat_model.predict(arrays["val"][0], batch_size=64, verbose=0)
        f_test = feat_model.predict(arrays["test"][0], batch_size=64, verbose=0)
        feat_s = time.time() - t
        inp = keras.Input((f_train.shape[1],))
        head = keras.Model(inp, keras.layers.Dense(2, activation="softmax", name="predictions", dtype="float32")(inp))
        head.compile(keras.optimizers.Adam(cfg.lr), "categorical_crossentropy", metrics=[keras.metrics.AUC(name="auc")])
        cell.write_json("config.json", {**cfg.to_dict(), "model": name, "trunk_weights": weights})
        t = time.time()
        # resumable: history.csv, best head by validation AUC, backup committed every epoch
        head.fit(f_train, y_train, validation_data=(f_val, arrays["val"][1]), epochs=cfg.epochs,
                 batch_size=cfg.batch_size, shuffle=True, verbose=0, callbacks=resumable_callbacks(cell, "val_auc"))
        head_s = time.time() - t
        best_epoch = _best_epoch(cell / "history.csv")
        if (cell.checkpoints / "best.weights.h5").is_file():
            load_model_weights(head, cell.checkpoints / "best.weights.h5")
        clf.get_layer("predictions").set_weights(head.get_weights())
        if cfg.measure_speedup and k == 0:
            speedup = measure_through_trunk(cfg, clf, x_train, y_train, feat_s, head_s, common.log)
            clf.get_layer("predictions").set_weights(head.get_weights())
        p_val = head.predict(f_val, verbose=0)
        p_test = head.predict(f_test, verbose=0)
        # the assembled classifier predicts what the head on cached features predicts
        n_chk = min(8, len(p_test))
        diff = float(np.abs(clf.predict(arrays["test"][0][:n_chk], verbose=0) - p_test[:n_chk]).max())
        y_val, y_test = parts["val"].class_index(), parts["test"].class_index()
        out = run_dir / name
        out.mkdir(exist_ok=True)
        sw = threshold_sweep(y_test == 1, p_test[:, 1])
        sw.to_csv(out / "threshold_sweep.csv", index=False)
        sweeps[name] = sw
        curves[name] = (y_test == 1, p_test[:, 1])
        plot_probability_histograms(y_test, p_test, ds.class_names, str(out / "probability_histograms.png"),
                                    title=f"{name}: predicted P(covid) on test")
        t_val = choose_threshold(y_val == 1, p_val[:, 1], method="sensitivity", target=0.98)
        m = classification_metrics(y_test, p_test, ds.class_names, threshold=t_val, n_boot=500)
        # Within-source evaluation: the same test predictions scored inside each collection that
        # holds both classes, where the source cannot tell COVID from the rest.
        ws = within_source_auc(y_test == 1, p_test[:, 1], parts["test"].meta["source"].to_numpy(),
                               min_per_class=3 if cfg.smoke else 10, n_boot=500, seed=cfg.seed)
        ws.insert(0, "model", name)
        ws.to_csv(out / "within_source.csv", index=False)
        within_tables.append(ws)
        lead = lead_figure(ws)
        pc = m["per_class"]["covid"]
        at98 = sw[sw["target_sensitivity"] == 0.98]
        rows.append({
            "model": name, "auc": m["macro_auc"]["value"], "auc_ci": m["macro_auc"]["bootstrap_ci"],
            "val_threshold_sens98": t_val, "test_sensitivity_at_val_threshold": pc["sensitivity"]["value"],
            "test_specificity_at_val_threshold": pc["specificity"]["value"],
            "test_threshold_sens98": float(at98["threshold"].iloc[0]) if len(at98) else None,
            "test_specificity_at_sens98": float(at98["specificity"].iloc[0]) if len(at98) else None,
            "within_source": {r["source"]: [round(r["auc"], 4), round(r["auc_lo"], 4), round(r["auc_hi"], 4)]
                              for _, r in ws[ws["evaluation"] == "within-source"].iterrows()},
            "lead_evaluation": None if lead is None else f"{lead['evaluation']}:{lead['source']}",
            "head_best_epoch": best_epoch, "feature_seconds": round(feat_s, 1), "head_seconds": round(head_s, 1),
            "assembled_vs_cached_max_diff": diff, **{f"pretrain_{a}": b for a, b in trunk_info.items()},
        })
        cam = cam_check(clf, arrays["test"][0][: cfg.cam_images], run_dir, name, cfg.cam_method)
        cam_rows.append({"model": name, **cam})
        if cfg.export_models == "all" or name in cfg.export_models.split(","):
            # the export stores the model's config: cxr-tf explain rebuilds it on the exported variables
            exp = common.export_and_verify(cfg, clf, parts["test"], f"deep_covid_{name}", cfg.saved_models_dir,
                                           extra_metadata={"threshold": t_val, "run_dir": str(run_dir)})
            info[name] = {"export": exp["path"], "served_vs_offline": exp["max_abs_diff_vs_keras"]}
        np.savez_compressed(cell / "test_predictions.npz", y_true=y_test, y_prob=p_test)
        cell.write_json("result.json", sweep.plain({"row": rows[-1], "cam": cam_rows[-1], "within_source": ws.to_dict(
            "records"), "export": info.get(name), "speedup": speedup if k == 0 else None}))  # the commit point
        common.finish_run(cell)
        common.log(f"{name}: test AUC {rows[-1]['auc']:.3f}; specificity at sensitivity 98% (test) "
                   f"{rows[-1]['test_specificity_at_sens98']}; at the validation threshold: sens "
                   f"{pc['sensitivity']['value']:.3f} spec {pc['specificity']['value']:.3f}")
        del clf, feat_model, head
        keras.backend.clear_session()

    if not chief:
        common.log("all trunks trained; the chief writes the report")
        return {"models": names, "chief": False}
    plot_roc(curves, path=str(run_dir.plots / "roc_all.png"), title="Deep-COVID: COVID vs non-COVID (test)")
    plot_pr(curves, path=str(run_dir.plots / "pr_all.png"), title="Deep-COVID: COVID vs non-COVID (test)")
    summary_df = pd.DataFrame(rows)
    summary_df.to_csv(run_dir / "summary.csv", index=False)
    pd.DataFrame(cam_rows).to_csv(run_dir / "cam_border.csv", index=False)
    within = pd.concat(within_tables, ignore_index=True) if within_tables else pd.DataFrame()
    within.to_csv(run_dir / "within_source.csv", index=False)
    within_md = [f"### {m}\n\n" + within_markdown(g.drop(columns="model")) for m, g in within.groupby("model", sort=False)] \
        if len(within) else ["no source holds both classes in the test split"]
    disagree = [r["model"] for r in rows if r["lead_evaluation"] and r["lead_evaluation"].startswith("within")]
    if speedup:
        run_dir.write_json("speedup.json", speedup)
    wall = round(time.time() - t0, 1)
    md = ["# Deep-COVID (seed 003): COVID vs non-COVID, last layer only\n",
          f"Test: {int((parts['test'].class_index() == 1).sum())} COVID / "
          f"{int((parts['test'].class_index() == 0).sum())} non-COVID images; {cfg.image_size} px; trunk: "
          f"{cfg.trunk}; head: Adam lr {cfg.lr}, batch {cfg.batch_size}, {cfg.epochs} epochs on cached features "
          "(best epoch by validation AUC); design: "
          f"{design}.\n",
          "## Within-source evaluation (both classes from one collection, held-out patients)\n",
          ("**The within-source AUC disagrees with the mixed test for " + ", ".join(disagree) + ": the mixed "
           "figure is confounded by the source; lead with the within-source one.**\n" if disagree else
           "Within-source and mixed AUCs agree within their CIs.\n"),
          *within_md, "",
          "## Threshold sweep (test), 95% CIs: normal approximation (as the paper) and Wilson\n",
          sweep_markdown(sweeps), "",
          "## Summary\n", summary_df.to_string(index=False), "",
          "## Source mix warnings\n", *(f"- {w}" for w in warns or ["none"]), "",
          "## CAM border-band share (outer 10%; uniform 0.36)\n", pd.DataFrame(cam_rows).to_string(index=False), "",
          f"## Cached features vs training through the frozen trunk\n\n{json.dumps(speedup, indent=1)}\n",
          f"Wall time: {wall} s. Exports: {json.dumps(info)}"]
    (run_dir / "deep_covid.md").write_text("\n".join(md) + "\n")
    summary = {"models": names, "summary": rows, "cam_border": cam_rows, "speedup": speedup, "exports": info,
               "design": design,
               "within_source": within.to_dict("records"),
               "wall_seconds": wall, "shortcut_warnings": warns}
    run_dir.write_json("metrics.json", summary)
    common.log("\n" + sweep_markdown(sweeps))
    common.log(f"wrote {run_dir / 'deep_covid.md'}; wall {wall}s")
    common.print_tensorboard_hint(run_dir)
    return summary


def _best_epoch(history_csv) -> int:
    """1-based epoch of the best ``val_auc`` in ``history.csv`` (the first of equals; 0: none)."""
    from cxr_tf.training.resume import read_history_csv

    vals = np.asarray(read_history_csv(history_csv).get("val_auc", []), float)
    return int(np.nanargmax(vals)) + 1 if np.isfinite(vals).any() else 0


def measure_through_trunk(cfg, clf, x_train, y_train, feat_s: float, head_s: float, log) -> dict:
    """Time 2 epochs of training the last layer through the frozen trunk (the 2nd: no tracing)."""
    import keras

    clf.compile(keras.optimizers.Adam(cfg.lr), "categorical_crossentropy")
    times = []

    class _T(keras.callbacks.Callback):
        def on_epoch_begin(self, e, logs=None):
            self.t = time.time()

        def on_epoch_end(self, e, logs=None):
            times.append(time.time() - self.t)

    clf.fit(x_train, y_train, epochs=2, batch_size=cfg.batch_size, verbose=0, callbacks=[_T()])
    per_epoch_trunk = times[-1]
    per_epoch_cached = head_s / cfg.epochs
    through = per_epoch_trunk * cfg.epochs
    cached = feat_s + head_s
    res = {"model": clf.backbone, "epochs": cfg.epochs, "train_images": int(len(x_train)),
           "through_trunk_seconds_per_epoch": round(per_epoch_trunk, 2),
           "cached_seconds_per_epoch": round(per_epoch_cached, 4),
           "feature_extraction_seconds": round(feat_s, 1),
           "through_trunk_total_seconds_estimated": round(through, 1),
           "cached_total_seconds": round(cached, 1), "speedup": round(through / cached, 1)}
    log(f"speed-up of cached features ({clf.backbone}): {res['speedup']}x "
        f"({through:.0f}s through the trunk for {cfg.epochs} epochs vs {cached:.0f}s = features {feat_s:.0f}s "
        f"+ head {head_s:.0f}s)")
    return res


def parse(argv=None) -> DeepCovidConfig:
    return parse_config(DeepCovidConfig, argv, description=__doc__.split("\n")[0])


def main(argv=None) -> int:
    from cxr_tf.errors import run_main

    return run_main(lambda: run(parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
