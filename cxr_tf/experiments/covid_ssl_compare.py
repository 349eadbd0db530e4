"""COVID-19 / pneumonia / normal: every zoo model on one split and one budget (seed 000, SPEC S0).

The seed fine-tuned an SSL-pretrained UNet+CBAM encoder ("UNet + Gen + CBAM") and compared
it with MobileNet, MobileNetV2, ResNet50 and DenseNet121 on 607 images per class (train
1,160 / val 290 / test 363), reporting per class (one-vs-rest) accuracy, specificity,
sensitivity, AUC and the averaged accuracy. This experiment trains every registered zoo
model on the same patient-level split with the same budget and writes that table, with
95% CIs (Wilson for proportions, bootstrap for AUC), as markdown and CSV.

The model list is registry names. ``unet_cbam_encoder`` (the SSL encoder) joins the
default list when it is registered; its pretrained weights come in with
``--init unet_cbam_encoder=ssl:PATH`` (``--init NAME=PATH`` works for any backbone; a
bare ``ssl:PATH`` applies to the SSL encoder), which is passed to the backbone builder
as ``weights=PATH``.

Commands::

    python -m cxr_tf.experiments.covid_ssl_compare --data-dir $CXR_DATA_DIR          # seed setting (224 px)
    python -m cxr_tf.experiments.covid_ssl_compare --data-dir $CXR_DATA_DIR --models resnet18,squeezenet \\
        --init unet_cbam_encoder=ssl:runs/ssl_pretrain/<UTC>/ssl_encoder
    python -m cxr_tf.experiments.covid_ssl_compare --smoke --data-dir $CXR_DATA_DIR  # tiny, for tests

Writes ``runs/covid_ssl_compare/<UTC>/``: config, splits, ``source_mix.csv`` (the
shortcut table), per-model ``<model>/metrics.json``, history.csv and plots, ``cells/<model>/`` (each model's
training: checkpoints, resume backup, ``result.json`` once evaluated), ``comparison.md`` /
``comparison.csv`` (the seed-000 table), ``within_source.csv`` (COVID vs the rest inside
one collection), ``duplicates.csv/.png/.json`` (the near-duplicate audit of the split),
``cam_border.csv`` (Score-CAM border-band share per model over test images, with the CAM
grid, whether it resolves the border, and its cost) and TensorBoard logs with CAM overlays.
Seed 000 explains with Score-CAM, so that is the default ``--cam-method``.

Resume and multi-worker: re-running the same command (or ``--run-dir DIR``) reuses finished
models and resumes an interrupted one from its last committed epoch; ``--strategy
multi_worker`` (TF_CONFIG, ``--run-dir`` on every worker) trains every model on all workers,
the chief alone evaluates, explains and writes the tables.

Result (experiments/results/covid_ssl_compare.md, re-run 2026-12-04 on the 2-core AMD EPYC VM):
64 px, 607 images per class, 8 epochs, batch 16, lr 1e-3, every model from random init but
the SSL encoder (pretrained on 1,000 NIH images): averaged accuracy SSL UNet+CBAM encoder
0.937 (the same encoder from random init: 0.945), ResNet18 0.930, ResNet50 0.923, DenseNet121
0.919, MobileNetV2 0.904, MobileNet 0.893, SqueezeNet 0.551 (did not learn), macro AUCs
0.965-0.993 with mostly overlapping CIs; the seed (ImageNet / SSL, 224 px): 0.961-0.986. SSL
did not help at this scale. Scored inside covid19_radiography alone (36 COVID / 17 normal) the
COVID AUC falls from 0.972-0.997 to 0.799-0.990, beyond the within-source CI for six of eight
models: the mixed figure is partly the source. Score-CAM border shares 0.18-0.28 (uniform 0.36).
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import numpy as np

from cxr_tf.training.config import TrainConfig, TrunkConfig, opt, parse_config

ZOO = ("mobilenet", "mobilenet_v2", "resnet50", "densenet121", "resnet18", "squeezenet")
SSL_BACKBONE = "unet_cbam_encoder"
TABLE_METRICS = ("accuracy", "specificity", "sensitivity", "auc")


@dataclasses.dataclass
class CovidCompareConfig(TrunkConfig, TrainConfig):
    experiment: str = "covid_ssl_compare"
    data_dir: str | None = opt(os.environ.get("CXR_DATA_DIR"), "data root holding covid_ieee8023/ etc. (default: "
                               "$CXR_DATA_DIR)")
    models: str = opt("", "comma list of registry names (empty: the zoo, + unet_cbam_encoder if registered)")
    init: str = opt("", "NAME=PATH[,NAME=PATH] initial weights; ssl:PATH for the SSL encoder (else random init)")
    weights: str = opt("none", "weights for every keras.applications model: none | imagenet")
    per_class: int = opt(607, "images per class (the seed: 607)")
    head: str = "gap"
    freeze_until: int = 0
    bn_momentum: float = 0.9
    augment: str = "light"
    epochs: int = 20
    # every model gets the whole budget (as before the shared trainer, which stops early by default)
    early_stopping: int = opt(0, "stop after this many epochs without validation improvement (0: off)")
    cam_images: int = opt(32, "test images for the CAM border check and TensorBoard overlays; Score-CAM costs "
                              "32 masked forward passes per image (Faster Score-CAM, max_N=32), so lower this "
                              "for the big zoo models at large sizes (cam_seconds in cam_border.csv says what "
                              "it cost)")
    cam_method: str = opt("scorecam", "CAM method: scorecam (seed 000's; the linear-output twin) | gradcam | "
                                      "gradcam++")

    def apply_smoke(self) -> None:
        super().apply_smoke()
        self.per_class = min(self.per_class, 30)
        self.epochs = 1
        self.batch_size = 8
        self.cam_images = 4
        if not self.models:
            self.models = "tiny_cnn"


def model_list(cfg: CovidCompareConfig) -> list[str]:
    """The registry names to train (checked against the registry)."""
    from cxr_tf.errors import CXRConfigError
    from cxr_tf.models import list_backbones

    known = list_backbones()
    if cfg.models:
        names = [m.strip() for m in cfg.models.split(",") if m.strip()]
    else:
        names = list(ZOO) + ([SSL_BACKBONE] if SSL_BACKBONE in known else [])

    def registered(name: str) -> bool:  # get_backbone also knows parametrised families (unet_cbam_encoder_d3w16)
        from cxr_tf.errors import CXRModelError
        from cxr_tf.models import get_backbone

        try:
            get_backbone(name)
        except CXRModelError:
            return False
        return True

    bad = [m for m in names if not registered(m)]
    if bad:
        raise CXRConfigError(f"--models: unknown backbones {bad}; registered: {known}")
    return names


def parse_init(spec: str) -> dict[str, str]:
    """``"unet_cbam_encoder=ssl:p.keras,resnet18=r.keras"`` / ``"ssl:p.keras"`` -> {backbone: path}.

    ``NAME=preset:P`` / ``NAME=run:DIR`` / ``NAME=URL#sha256=..`` pass to the weights resolver."""
    from cxr_tf.errors import CXRConfigError

    out = {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        name, _, path = part.rpartition("=") if "=" in part else (SSL_BACKBONE, "", part)
        if path.startswith(("preset:", "run:", "https://", "http://")):
            if "=" not in part:
                raise CXRConfigError(f"--init {part}: say which model it is for, NAME={part}")
            out[name] = path  # checked by the weights resolver when the model is built
            continue
        bare = path[4:] if path.startswith("ssl:") else path
        if not name or not bare:
            raise CXRConfigError(f"--init entries look like NAME=PATH or ssl:PATH; got {part!r}")
        if not os.path.exists(bare):
            raise CXRConfigError(f"--init {name}: weights file {bare} not found")
        # the SSL encoder keeps its "ssl:" prefix: build_model then reads the encoder's depth and
        # width from the artifact's metadata (a d3w16 encoder builds unet_cbam_encoder_d3w16)
        out[name] = f"ssl:{bare}" if name == SSL_BACKBONE else bare
    return out


def per_class_rows(model: str, metrics: dict) -> list[dict]:
    """Long-format rows (model, class, metric, value, CI) for the CSV."""
    rows = []
    for cls, pc in metrics["per_class"].items():
        for key in TABLE_METRICS:
            st = pc[key]
            ci = st.get("bootstrap_ci") if key == "auc" else st.get("wilson_ci")
            rows.append({"model": model, "class": cls, "metric": key, "value": st["value"],
                         "ci_lo": ci[0] if ci else None, "ci_hi": ci[1] if ci else None,
                         "ci": "bootstrap" if key == "auc" else "wilson", "n": pc["support"]})
    rows.append({"model": model, "class": "all", "metric": "averaged_accuracy", "value": metrics["averaged_accuracy"],
                 "ci_lo": None, "ci_hi": None, "ci": "", "n": metrics["n"]})
    return rows


def comparison_markdown(results: dict[str, dict], class_names: list[str]) -> str:
    """The seed-000 table: per class acc / spec / sens / AUC with 95% CIs, then averaged accuracy."""
    from cxr_tf.evaluation import fmt_ci

    abbrev = {"accuracy": "acc", "specificity": "spec", "sensitivity": "sens", "auc": "AUC"}
    head = ["model"] + [f"{c} {abbrev[k]}" for c in class_names for k in TABLE_METRICS] + ["averaged acc"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, m in results.items():
        cells = [model]
        for c in class_names:
            pc = m["per_class"][c]
            for k in TABLE_METRICS:
                cells.append(fmt_ci(pc[k], "bootstrap_ci" if k == "auc" else "wilson_ci"))
        cells.append(f"{m['averaged_accuracy']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(cfg: CovidCompareConfig) -> dict:
    """Train, evaluate and explain every model; write the comparison.

    Each model is one resumable training in ``cells/<model>/`` (history.csv, best
    checkpoint, resume backup, ``result.json`` once evaluated), trained by the shared
    trainer (:func:`cxr_tf.training.flow.fit`; the multi-worker loop under ``--strategy
    multi_worker``). Re-running the same command reopens the run folder (or give
    ``--run-dir``): finished models are reused, an interrupted one resumes from its last
    committed epoch. Multi-worker: every worker trains every model; only the chief
    evaluates and writes the per-model files and the comparison.
    """
    from cxr_tf.training import flow as common
    from cxr_tf.training import sweep

    t0 = time.time()
    strategy = common.setup_runtime(cfg)
    import shutil

    import keras
    import pandas as pd

    from cxr_tf.data import as_arrays, build_pipeline
    from cxr_tf.datasets.covid import load_covid_experiment_data
    from cxr_tf.evaluation import evaluate_predictions
    from cxr_tf.evaluation.shortcuts import lead_figure, report_source_mix, within_source_auc
    from cxr_tf.evaluation.shortcuts import markdown as within_markdown
    from cxr_tf.explain import cam_check, cam_sample
    from cxr_tf.models import build_model
    from cxr_tf.training.loop import compile_classifier
    from cxr_tf.training.run import create_run_dir

    names = model_list(cfg)
    init = parse_init(cfg.init)
    from cxr_tf.explain import METHODS

    if cfg.cam_method not in METHODS:  # before any model trains, not after the first one
        from cxr_tf.errors import CXRConfigError

        raise CXRConfigError(f"--cam-method must be one of {METHODS}; got {cfg.cam_method!r}")
    if SSL_BACKBONE in names and SSL_BACKBONE not in init:
        common.log(f"warning: {SSL_BACKBONE} has no --init {SSL_BACKBONE}=ssl:DIR, so it trains from random "
                   "weights (the row is then not the seed's SSL-pretrained model)")
    run_dir = create_run_dir(cfg, reuse=True)  # the same command reopens the run: finished models are reused
    chief = common.is_chief(cfg)
    common.log(f"run folder: {run_dir}; models: {names}"
               + (" (reopened: same config as before; finished models are reused, an interrupted one resumes)"
                  if run_dir.reused else ""))
    ds = common.take_subset(cfg, load_covid_experiment_data(cfg))  # --max-images / --fraction: whole patients
    common.log(ds.summary())
    ds = common.check_items(cfg, ds, run_dir)
    split = common.make_split(cfg, ds, run_dir)
    warns = report_source_mix(ds, split, run_dir)
    train_ds, val_ds, test_ds = (ds.subset(split == s) for s in ("train", "val", "test"))
    val = build_pipeline(val_ds, cfg.image_size, cfg.batch_size, training=False)
    test = build_pipeline(test_ds, cfg.image_size, cfg.batch_size, training=False)
    cam_idx = cam_sample(test_ds.class_index(), cfg.cam_images)
    cam_classes = ", ".join(f"{c} {n}" for c, n in zip(ds.class_names, np.bincount(
        test_ds.class_index()[cam_idx], minlength=ds.num_classes)))
    if chief:  # multi-worker: the chief explains, the others only train
        x_cam = as_arrays(test_ds.subset(cam_idx), cfg.image_size)[0]
        common.log(f"CAM border check on {len(cam_idx)} test images ({cam_classes})")

    results, rows, cam_rows, timing, within_tables = {}, [], [], {}, []
    for name in names:
        sub = f"cells/{name}"
        done = sweep.chief_path(cfg, run_dir, sub) / "result.json"  # every worker skips the same models
        if done.is_file():
            if chief:
                r = json.loads(done.read_text())
                results[name], timing[name] = r["metrics"], r["timing"]
                ws = pd.DataFrame(r["within_source"])
                cam = r["cam"]
                within_tables.append(ws)
                rows += per_class_rows(name, results[name])
                cam_rows.append({"model": name, **cam, "classes": cam_classes})
            common.log(f"{name}: finished before, reusing {done}")
            continue
        cell = sweep.CellRun(run_dir, name)  # logs to tensorboard/<name>, as before
        keras.utils.set_random_seed(cfg.seed)  # same init stream and batches for every model
        train = common.train_pipeline(cfg, train_ds)
        weights = init.get(name) or (None if cfg.weights == "none" or name not in ZOO[:4] else cfg.weights)
        with strategy.scope():
            model = build_model(name, num_classes=ds.num_classes, image_size=cfg.image_size, head=cfg.head,
                                dropout=cfg.dropout, freeze_until=cfg.freeze_until, class_names=ds.class_names,
                                weights=weights, bn_momentum=cfg.bn_momentum)
            compile_classifier(model, cfg.optimizer_config(), train.steps, cfg.epochs, cfg.label_smoothing)
        cell.write_json("config.json", {**cfg.to_dict(), "model": name, "model_weights": weights or "random"})
        history, fit_s = common.fit(sweep.worker_config(cfg, sub), model, train_ds, (train, val, test), cell,
                                    loggers=False)
        if not chief:
            common.log(f"{name}: training done; the chief evaluates and reports")
            del model
            keras.backend.clear_session()
            continue
        common.restore_best(model, cell)
        out = run_dir / name
        out.mkdir(exist_ok=True)
        if (cell / "history.csv").is_file():  # the per-epoch log beside the model's metrics, as before
            shutil.copy(cell / "history.csv", out / "history.csv")
        prob = np.asarray(model.predict(test.dataset, verbose=0))
        m = evaluate_predictions(test_ds.class_index(), prob, ds.class_names, str(out),
                                 title=f"{name}: test split", config=cfg.to_dict(),
                                 meta=test_ds.meta)  # subgroup table where the source gives sex / age / view
        model.save(out / "model.keras")  # for cxr-tf explain --model .../model.keras
        results[name] = m
        # COVID one-vs-rest scored inside each collection holding COVID and other images
        # (covid19_radiography: COVID vs normal, one source), beside the mixed test.
        cov = ds.class_names.index("covid")
        ws = within_source_auc(test_ds.class_index() == cov, prob[:, cov], test_ds.meta["source"].to_numpy(),
                               min_per_class=3 if cfg.smoke else 10, n_boot=500, seed=cfg.seed)
        ws.insert(0, "model", name)
        within_tables.append(ws)
        rows += per_class_rows(name, m)
        cam = cam_check(model, x_cam, run_dir, name, cfg.cam_method)
        cam_rows.append({"model": name, **cam, "classes": cam_classes})
        timing[name] = {"fit_seconds": round(fit_s, 1), "parameters": model.parameter_counts(),
                        "weights": weights or "random"}
        cell.write_json("result.json", sweep.plain({"metrics": m, "within_source": ws.to_dict("records"), "cam": cam,
                                              "timing": timing[name]}))  # the commit point: a finished model
        common.finish_run(cell)
        common.log(f"{name}: averaged accuracy {m['averaged_accuracy']:.3f}, macro AUC "
                   f"{m['macro_auc']['value']:.3f}, fit {fit_s:.0f}s, CAM border share "
                   f"{cam['border_share_mean']:.2f} (uniform {cam['uniform']:.2f}; CAM grid {cam['cam_grid']}"
                   + ("" if cam["resolves_border"] else ": too coarse to separate border from centre") + ")")
        del model
        keras.backend.clear_session()

    if not chief:
        common.log("all models trained; the chief writes the comparison")
        return {"models": names, "chief": False}

    table = comparison_markdown(results, ds.class_names)
    pd.DataFrame(rows).to_csv(run_dir / "comparison.csv", index=False)
    pd.DataFrame(cam_rows).to_csv(run_dir / "cam_border.csv", index=False)
    within = pd.concat(within_tables, ignore_index=True)
    within.to_csv(run_dir / "within_source.csv", index=False)
    disagree = [m for m, g in within.groupby("model", sort=False)
                if (lead_figure(g.drop(columns="model")) or {}).get("disagrees_with_mixed")]
    within_md = ["## Within-source evaluation: COVID vs the rest inside one collection (held-out patients)\n",
                 ("**Disagrees with the mixed test for " + ", ".join(disagree) + ": the mixed figure is confounded "
                  "by the source; lead with the within-source one.**\n" if disagree
                  else "Within-source and mixed COVID AUCs agree within their CIs.\n")]
    within_md += [f"### {m}\n\n" + within_markdown(g.drop(columns="model")) + "\n"
                  for m, g in within.groupby("model", sort=False)]
    wall = round(time.time() - t0, 1)
    md = [f"# COVID-19 / pneumonia / normal: model comparison (seed 000 table)\n",
          f"Test split: {len(test_ds)} images, patient-level split {cfg.split} (seed {cfg.seed}); "
          f"{cfg.image_size} px, {cfg.epochs} epochs, batch {cfg.batch_size}, lr {cfg.lr}; "
          "95% CIs: Wilson (proportions), bootstrap (AUC).\n", table, "",
          *within_md,
          "## Source mix warnings\n", *(f"- {w}" for w in warns or ["none"]), "",
          f"## CAM border-band share ({cfg.cam_method}, outer 10%; uniform = 0.36)\n",
          pd.DataFrame(cam_rows)[["model", "layer", "cam_grid", "resolves_border", "n", "border_share_mean",
                                  "fraction_above_uniform", "cam_seconds"]]
          .to_markdown(index=False, floatfmt=".3f") if _has_tabulate() else pd.DataFrame(cam_rows).to_string(),
          "", f"CAM images: {len(cam_idx)} test images spread over the classes ({cam_classes}). A CAM grid under "
          "3 cells a side cannot separate border from centre (`resolves_border` false): its share is then the "
          "upsampling, not evidence; check such models at a larger image size.", "",
          f"Wall time: {wall} s. Per model: {json.dumps(timing)}"]
    (run_dir / "comparison.md").write_text("\n".join(md) + "\n")
    summary = {"models": names, "results": {k: {"averaged_accuracy": v["averaged_accuracy"],
                                                 "macro_auc": v["macro_auc"]["value"]} for k, v in results.items()},
               "cam_border": cam_rows, "timing": timing, "wall_seconds": wall, "shortcut_warnings": warns,
               "within_source": within.to_dict("records")}
    run_dir.write_json("metrics.json", summary)
    common.log("comparison table:\n" + table)
    common.log(f"wrote {run_dir / 'comparison.md'} and comparison.csv; wall {wall}s")
    common.print_tensorboard_hint(run_dir)
    return summary


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def parse(argv=None) -> CovidCompareConfig:
    return parse_config(CovidCompareConfig, argv, description=__doc__.split("\n")[0])


def main(argv=None) -> int:
    from cxr_tf.errors import run_main

    return run_main(lambda: run(parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
