"""The task layer: one classifier training flow, from data to a verified export.

:class:`ClassifierTask` owns the flow every classification experiment shares:

    runtime (seeds, precision, strategy) -> run folder -> data -> checked items ->
    patient-level split (audited, saved) -> tf.data pipelines -> model built and compiled
    under the strategy -> fit (Keras fit or the multi-worker loop; resume after a kill,
    TensorBoard, best checkpoint, early stopping) -> best weights -> calibration and
    operating points on validation -> test metrics, plots, report -> SavedModel export
    (served == Keras checked) -> model card.

An experiment is its config (a :class:`ClassifierConfig` subclass with its defaults) plus
the hooks where it truly differs (keras-hub's ``Task``, big_vision's config files):
``load_data`` (several sources, a fixed split), ``build_model``, ``export_name``. Sweeps of
many such trainings in one run folder are :mod:`cxr_tf.training.sweep`.
"""
from __future__ import annotations

import dataclasses
import json
import re
import time

from cxr_tf.training import flow as common
from cxr_tf.training.config import ExportConfig, ModelConfig, TrainConfig, opt

# With the default --weights auto a classifier starts from this embedded preset (cxr_tf/presets/,
# trained by cxr_tf.experiments.train_preset): its backbone and input size then replace
# resnet50 / --image-size unless given.
DEFAULT_PRESET = "preset:cxr_pneumonia_unet128"
# --freeze-until auto with a preset trunk: freeze the first two encoder stages (as the seed
# froze ResNet50 up to conv5), train the last stage, the bottleneck and the head.
PRESET_FREEZE = {"unet_cbam_encoder_d3w16": "enc3_conv1"}


@dataclasses.dataclass
class TaskDataConfig:
    """Which labelling of a Kermany folder or the embedded synthetic CXRs is learnt."""

    SECTION = "data"
    classes: str = opt("3class", "Kermany/synthetic task: 3class (bacterial/viral/normal) | pneumonia "
                       "(normal/pneumonia) (a CSV manifest: its labels unless --classes is given; class folders: "
                       "their names)")
    synthetic_n: int = opt(900, "images of the embedded synthetic dataset (without --data-dir)")
    synthetic_difficulty: float = opt(1.0, "lesion subtlety of the synthetic set (lower = easier)")


@dataclasses.dataclass
class ClassifierConfig(ExportConfig, ModelConfig, TaskDataConfig, TrainConfig):
    """A classifier trained by :class:`ClassifierTask`: the shared sections, the model and
    export sections, and the Kermany / synthetic task fields."""

    experiment: str = "classifier"
    backbone: str = opt("auto", "model registry name (resnet50, resnet18, densenet121, tiny_cnn, "
                        "unet_cbam_encoder_d3w16, ...); auto: the preset's with a preset:, else resnet50")
    freeze_until: str = opt("auto", "freeze backbone layers before this index or layer name (0: train all); auto: "
                            "144 (= conv5_block1_1_bn, the seed's) for resnet50 with pretrained weights, the first two "
                            "encoder stages of a preset trunk, 0 with --weights none")
    weights: str = opt("auto", "backbone weights: auto (the embedded preset " + DEFAULT_PRESET + ") | none (from "
                       "scratch) | imagenet (the seed's; needs a download) | PATH | preset:NAME | run:DIR | ssl:DIR | "
                       "https://...#sha256=...")

    def apply_smoke(self) -> None:
        super().apply_smoke()
        self.synthetic_n = min(self.synthetic_n, 96)
        self.batch_size = 8

    def validate(self) -> None:
        super().validate()
        from cxr_tf.errors import CXRConfigError

        if self.classes not in ("3class", "pneumonia"):
            raise CXRConfigError(f"--classes must be 3class or pneumonia; got {self.classes!r}")
        self.resolve_auto()

    def resolve_auto(self) -> None:
        """``auto`` weights / backbone / freeze / size -> concrete values (logged by the run).

        Freezing randomly initialised layers only freezes noise: ``--weights none`` with an
        explicit ``--freeze-until`` > 0 is an error unless ``--allow-random-frozen``.
        """
        from cxr_tf.errors import CXRConfigError

        given = getattr(self, "given", frozenset())
        if self.weights in ("auto", ""):
            # the embedded preset where its architecture is asked for (or no backbone is named);
            # another --backbone trains from scratch (and says so in the run's log)
            from cxr_tf.models.presets import list_presets

            name = DEFAULT_PRESET.split(":", 1)[1]
            ok = name in list_presets() and (self.backbone == "auto" or self.backbone == _preset_backbone(name))
            self.weights = DEFAULT_PRESET if ok else "none"
        preset = None
        if str(self.weights).startswith("preset:"):
            from cxr_tf.models.presets import load_preset

            preset = load_preset(self.weights)
            if self.backbone == "auto":
                self.backbone = preset.backbone
            elif self.backbone != preset.backbone:
                raise CXRConfigError(f"--backbone {self.backbone} but {self.weights} holds a {preset.backbone} trunk; "
                                     "drop --backbone (auto) or choose other --weights")
            if "image_size" not in given:
                self.image_size = preset.image_size
        if self.backbone == "auto":
            self.backbone = "resnet50"
        fu = str(self.freeze_until).strip()
        if fu == "auto":
            if self.weights == "none":
                fu = "0"
            elif preset is not None:
                fu = PRESET_FREEZE.get(preset.backbone, "0")
            else:
                fu = "144" if self.backbone == "resnet50" else "0"
        elif self.weights == "none" and fu not in ("0", "") and not self.allow_random_frozen:
            raise CXRConfigError(f"--freeze-until {fu} with --weights none freezes randomly initialised layers (noise); "
                                 f"use the default pretrained preset (drop --weights), --weights imagenet|PATH|"
                                 "preset:NAME, --freeze-until 0, or --allow-random-frozen to do it on purpose")
        self.freeze_until = int(fu) if fu.lstrip("-").isdigit() else fu


def _preset_backbone(name: str) -> str | None:
    from cxr_tf.models.presets import load_preset

    return load_preset(name).backbone


def _classes_tag(class_names) -> str:
    """The export name's class part: the Kermany preset the classes are, else the class names.

    ``--classes`` only selects Kermany's labelling; a folder or manifest has its own classes,
    and a 2-class folder model named "3class" would mislead whoever serves it.
    """
    from cxr_tf.datasets.sources import KERMANY_3CLASS, KERMANY_PNEUMONIA

    lower = [str(c).lower() for c in class_names]
    for tag, names in (("3class", KERMANY_3CLASS), ("pneumonia", KERMANY_PNEUMONIA)):
        if lower == names:
            return tag
    return "-".join(re.sub(r"[^a-z0-9]+", "", c) or "x" for c in lower)



class ClassifierTask:
    """Train, evaluate, calibrate, report and export one classifier (see the module doc).

    Hooks (override in a subclass, or pass ``data``):

    * :meth:`load_data` -> the :class:`~cxr_tf.datasets.CXRDataset` (default: ``--data-dir``
      or the embedded synthetic CXRs, ``--classes`` view);
    * :meth:`assigned_split` -> a fixed per-item split, or None for the patient-level split;
    * :meth:`build_model` -> the (uncompiled) classifier, called under the strategy scope;
    * :meth:`export_name` -> the SavedModel folder name when ``--export-name`` is empty.

    ``data``: a function ``data(cfg, run_dir) -> CXRDataset`` used instead of ``--data-dir``
    (e.g. several sources combined); when its ``meta`` has an ``assigned_split`` column,
    that per-item split is used (audited and saved as usual).
    """

    def __init__(self, cfg: ClassifierConfig, data=None):
        self.cfg = cfg
        self._data = data

    # ---- hooks
    def load_data(self, run_dir):
        if self._data is not None:
            return self._data(self.cfg, run_dir)
        return common.load_experiment_data(self.cfg, self.cfg.classes)

    def assigned_split(self, ds):
        if self._data is not None and "assigned_split" in ds.meta:
            return ds.meta["assigned_split"].to_numpy()
        return None

    def build_model(self, ds):
        from cxr_tf.models import build_model

        cfg = self.cfg
        return build_model(
            cfg.backbone, num_classes=ds.num_classes, image_size=cfg.image_size, head=cfg.head,
            dropout=cfg.dropout, freeze_until=cfg.freeze_until, class_names=ds.class_names,
            weights=None if cfg.weights == "none" else cfg.weights, bn_momentum=cfg.bn_momentum,
        )

    def export_name(self, ds) -> str:
        return f"pneumonia_{_classes_tag(ds.class_names)}_{self.cfg.backbone}"

    # ---- the flow
    def run(self) -> dict:
        cfg = self.cfg
        t0 = time.time()
        strategy = common.setup_runtime(cfg)
        from cxr_tf.evaluation import evaluate_predictions, plot_training_curves
        from cxr_tf.training.loop import compile_classifier
        from cxr_tf.training.run import create_run_dir
        from cxr_tf.training.strategy import describe

        run_dir = create_run_dir(cfg)
        common.log(f"run folder: {run_dir}")
        ds = self.load_data(run_dir)
        common.log(ds.summary())
        ds = common.check_items(cfg, ds, run_dir)
        assigned = self.assigned_split(ds)
        split = common.make_split(cfg, ds, run_dir, split=assigned)
        overlap = common.preset_overlap(cfg.weights, ds, split)
        (train_ds, val_ds, test_ds), pipes = common.build_pipelines(cfg, ds, split, strategy)

        with strategy.scope():
            model = self.build_model(ds)
            compile_classifier(model, cfg.optimizer_config(), pipes[0].steps, cfg.epochs, cfg.label_smoothing)
        common.log(f"weights: {cfg.weights}" + (f" ({model.weights_loaded} loaded)" if model.weights_loaded else "")
                   + f"; backbone {cfg.backbone}, {cfg.image_size} px, freeze_until {cfg.freeze_until}")
        if cfg.weights == "none" and cfg.freeze_until not in (0, "0"):
            common.log(f"warning: --weights none with --freeze-until {cfg.freeze_until} (--allow-random-frozen): the "
                       "frozen layers keep their random initialisation")
        params = model.parameter_counts()
        common.log(f"{model.name}: freeze_until={cfg.freeze_until} -> trainable {params['trainable']:,}, "
                   f"non-trainable {params['non_trainable']:,}; {describe(strategy)}")
        run_dir.write_json("model.json", {"config": model.get_config(), "parameters": params,
                                          "backbone_layers": model.backbone_layer_names})

        history, fit_s = common.fit(cfg, model, train_ds, pipes, run_dir)
        common.save_history_json(run_dir, history)
        if not common.is_chief(cfg):  # multi-worker: evaluation, report and export are the chief's
            common.log("training done; the chief evaluates, reports and exports")
            return {"epochs_run": len(history.get("loss", [])), "chief": False}
        common.restore_best(model, run_dir)

        y_val, p_val = common.evaluate_split(model, pipes[1], val_ds)
        y_test, p_test = common.evaluate_split(model, pipes[2], test_ds)
        # temperature scaling and the operating point(s), both fitted on validation, reported on test
        calibration, threshold, op, p_val, p_test = common.calibrate_and_choose(
            cfg, run_dir, ds.class_names, y_val, p_val, y_test, p_test)
        from cxr_tf.evaluation import classification_metrics

        val_metrics = classification_metrics(y_val, p_val, ds.class_names, threshold=threshold, n_boot=200)
        metrics = evaluate_predictions(
            y_test, p_test, ds.class_names, str(run_dir), title=f"{cfg.experiment}: test split",
            config=cfg.to_dict(), threshold=threshold, meta=test_ds.meta,  # subgroups where sex / age / view exist
        )
        plot_training_curves(str(run_dir / "history.csv"), str(run_dir.plots / "training_curves.png"))
        from cxr_tf.evaluation import best_epoch

        best = best_epoch(str(run_dir / "history.csv")) if (run_dir / "history.csv").is_file() else None
        common.write_tensorboard_summaries(run_dir, metrics, ds.class_names, step=len(history.get("loss", [])),
                                           weights_epoch=best)

        export = None
        if cfg.export:
            name = cfg.export_name or self.export_name(ds)
            export = common.export_and_verify(cfg, model, test_ds, name, cfg.saved_models_dir,
                                              extra_metadata={"threshold": threshold, "run_dir": str(run_dir),
                                                              "operating_points": op},
                                              calibration=calibration)
            common.log(f"exported {export['path']} (max |served - offline| = {export['max_abs_diff_vs_keras']})")

        summary = {
            **metrics,
            "split": "test",
            "threshold": threshold,
            "calibration": calibration and {k: calibration[k] for k in ("method", "temperature", "fit_on")},
            "operating_points": op,
            "validation": {k: val_metrics[k] for k in ("accuracy", "macro_auc", "averaged_accuracy") if k in val_metrics},
            "parameters": params,
            "epochs_run": len(history.get("loss", [])),
            "fit_seconds": round(fit_s, 1),
            "wall_seconds": round(time.time() - t0, 1),
            "export": export,
            **({"preset_overlap": overlap} if overlap else {}),
        }
        from cxr_tf.evaluation import write_metrics_json

        write_metrics_json(str(run_dir / "metrics.json"), summary)
        common.write_run_model_card(run_dir, export and export["path"])
        common.finish_run(run_dir)
        with open(run_dir / "report.md", "a") as f:
            f.write(f"\n## Run\n\n- parameters: {json.dumps(params)}\n- fit: {fit_s:.0f} s, wall: {summary['wall_seconds']} s\n"
                    f"- export: {export and export['path']}\n- model card: [MODEL_CARD.md](MODEL_CARD.md)\n"
                    + (f"- calibration: T = {calibration['temperature']:.3f} fitted on validation; test ECE "
                       f"{calibration['ece_before']['value']:.3f} -> {calibration['ece_after']['value']:.3f}; "
                       "probabilities and thresholds above are calibrated\n\n![reliability](plots/reliability.png)\n"
                       if calibration else "")
                    + "\n### training curves\n\n![training curves](plots/training_curves.png)\n")
        common.log(f"test: accuracy {_v(metrics, 'accuracy'):.3f}, macro AUC {_v(metrics, 'macro_auc'):.3f}; "
                   f"report {run_dir / 'report.md'}")
        common.print_tensorboard_hint(run_dir)
        return {**summary, "run_dir": str(run_dir)}  # for callers (train_preset); not in metrics.json


def _v(m: dict, key: str) -> float:
    v = m.get(key)
    v = v.get("value") if isinstance(v, dict) else v
    return float("nan") if v is None else float(v)


