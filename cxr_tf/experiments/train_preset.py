"""Train the project's own pretrained CXR preset from public data (issue 17).

A normal / pneumonia classifier trained on several public collections whose licences allow
sharing derived weights, then saved as a preset folder (``cxr_tf.models.presets``: config,
float16 weights, metadata with thresholds, calibration, per-source data counts and licences,
metrics with 95% CIs, the command and commit, ``splits.csv`` and ``MODEL_CARD.md``).

Sources (``--sources``), each split by patient on its own, its test patients never trained on:

* ``kermany224``: Kermany pediatric CXRs, CC BY 4.0. The split is the one
  ``pneumonia_freeze --data-dir kermany224`` draws (3-class strata, ``--seed``), so the
  preset's kermany224 test patients are that experiment's test patients too.
* ``nih1000_64``: NIH ChestX-ray14 adults (unrestricted use), 64 px upsampled: "No Finding"
  -> normal, any of Pneumonia / Consolidation / Infiltration -> pneumonia, other findings
  left out. The published ``valid`` rows (and every image of their patients) are the test split.
* ``covid_ieee8023``: only the images the collection lists as CC BY (3.0 / 4.0), frontal:
  "No Finding" -> normal, every other finding (COVID-19 and other pneumonias) -> pneumonia.

``covid19_radiography`` (Kaggle terms) is never trained on: it is the external check
(``--external``): specificity on its normals and sensitivity on its COVID images at the
preset's own threshold, with CIs.

The trainer is the task layer, ``cxr_tf.training.task.ClassifierTask`` (one flow: split audit, resume, TensorBoard,
calibration, operating point, export, model card), with this module's data as its ``load_data`` hook.

Commands::

    # the embedded preset (what ships in cxr_tf/presets/), ~10 min on 2 CPU cores
    python -m cxr_tf.experiments.train_preset --data-dir $CXR_DATA_DIR --preset-out cxr_tf/presets
    # into the user cache instead ($CXR_TF_HOME/presets), e.g. another backbone
    python -m cxr_tf.experiments.train_preset --data-dir $CXR_DATA_DIR --backbone mobilenet_v2 \\
        --preset-name cxr_pneumonia_mnv2_128
    python -m cxr_tf.experiments.train_preset --smoke --data-dir $CXR_DATA_DIR   # tests

Results: ``experiments/results/presets.md`` (the measured tables and wall times).
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from cxr_tf.training.config import opt, parse_config
from cxr_tf.training.task import ClassifierConfig, ClassifierTask

from cxr_tf.datasets.pneumonia_sources import CLASSES, LICENCES, LOADERS, SOURCES, load_external  # noqa: F401

FP16_TOLERANCE = 1e-3  # issue 17: float16 storage only if the loaded model matches float32 within this


@dataclasses.dataclass
class TrainPresetConfig(ClassifierConfig):
    experiment: str = "train_preset"
    classes: str = "pneumonia"
    backbone: str = "unet_cbam_encoder_d3w16"
    image_size: int = 128
    freeze_until: int = 0
    head: str = "gap"
    weights: str = "none"
    lr: float = 1e-3
    batch_size: int = 32
    epochs: int = 10
    schedule: str = "cosine"
    warmup_epochs: int = 1
    bn_momentum: float = 0.9
    augment: str = opt("light+bc+gamma", "augmentation: light geometry plus brightness / contrast / gamma jitter "
                       "(intensity differs between collections)")
    early_stopping: int = 0
    sources: str = opt(",".join(SOURCES), "comma list of training sources under --data-dir: "
                       "kermany224, nih1000_64, covid_ieee8023")
    external: str = opt("covid19_radiography", "comma list of collections never trained on, evaluated at the "
                        "preset's threshold (empty: none)")
    preset_name: str = opt("cxr_pneumonia_unet128", "name of the preset folder written")
    preset_out: str = opt("", "parent folder of the preset (empty: the user cache $CXR_TF_HOME/presets; "
                          "cxr_tf/presets embeds it in the package)")
    export_name: str = opt("", "SavedModel folder name under --saved-models-dir (empty: the preset name)")
    from_run: str = opt("", "skip training: write the preset from this finished train_preset run folder (same "
                        "--sources / --seed as it was trained with)")

    def apply_smoke(self) -> None:
        super().apply_smoke()
        self.image_size = 32
        self.max_images = self.max_images or 240
        self.preset_out = self.preset_out or str(Path(self.runs_dir) / "presets")

    def validate(self) -> None:
        super().validate()
        from cxr_tf.errors import CXRConfigError

        if not self.data_dir:
            raise CXRConfigError("--data-dir is required: the folder holding kermany224/, nih_chestxray14/ and "
                                 "covid_ieee8023/ (e.g. $CXR_DATA_DIR)")
        bad = [s for s in self.source_list() if s not in SOURCES]
        if bad or not self.source_list():
            raise CXRConfigError(f"--sources: unknown {bad}; choose from {list(SOURCES)}")
        if self.classes != "pneumonia":
            raise CXRConfigError("train_preset trains normal / pneumonia (--classes pneumonia)")

    def source_list(self) -> list[str]:
        return [s.strip() for s in self.sources.split(",") if s.strip()]

    def external_list(self) -> list[str]:
        return [s.strip() for s in self.external.split(",") if s.strip()]


def parse(argv=None) -> TrainPresetConfig:
    return parse_config(TrainPresetConfig, list(sys.argv[1:] if argv is None else argv),
                        description=__doc__.split("\n")[0])


# ----------------------------------------------------------------------------- the sources
def training_data(cfg: TrainPresetConfig, run_dir=None):
    """The combined dataset (``meta['assigned_split']``, ``meta['source']``) of ``--sources``."""
    from cxr_tf.datasets import concat
    from cxr_tf.training import flow as common

    root = Path(cfg.data_dir)
    parts = []
    for name in cfg.source_list():
        ds = LOADERS[name](root, cfg.seed)
        if cfg.max_images or cfg.fraction:  # --smoke / quick runs: whole patients, the same share of each source
            from cxr_tf.datasets import patient_subset

            share = min(cfg.fraction or 1.0, cfg.max_images / (len(cfg.source_list()) * len(ds)) if cfg.max_images
                        else 1.0)
            ds = patient_subset(ds, fraction=share, seed=cfg.seed) if share < 1.0 else ds
        parts.append(ds)
        splits = {str(k): int(v) for k, v in zip(*np.unique(ds.meta["assigned_split"], return_counts=True))}
        common.log(f"source {name}: {len(ds)} images, {ds.class_counts()}, split {splits}")
    ds = concat(parts, name="+".join(cfg.source_list()))
    return ds


def predict_calibrated(model, ds, image_size: int, temperature: float | None, batch_size: int = 64) -> np.ndarray:
    from cxr_tf.data import build_pipeline
    from cxr_tf.evaluation.calibration import apply_temperature

    pipe = build_pipeline(ds, image_size, batch_size, training=False)
    prob = np.asarray(model.predict(pipe.dataset, verbose=0))
    return apply_temperature(prob, temperature) if temperature else prob


def binary_stats(y: np.ndarray, p: np.ndarray, threshold: float, seed: int = 0) -> dict:
    """AUC (bootstrap CI, when both classes are present) and sensitivity / specificity
    (Wilson CIs) at ``threshold`` on the pneumonia probability."""
    from cxr_tf.evaluation import classification_metrics
    from cxr_tf.evaluation.metrics import proportion_stat

    y = np.asarray(y).astype(int)
    out = {"images": int(len(y)), "normal": int((y == 0).sum()), "pneumonia": int((y == 1).sum())}
    pred = p[:, 1] >= threshold
    for key, mask, hit in (("sensitivity", y == 1, pred), ("specificity", y == 0, ~pred)):
        st = proportion_stat(int(hit[mask].sum()), int(mask.sum()))
        if st["value"] is not None:
            out[key] = {"value": st["value"], "ci95": st["wilson_ci"]}
    if out["normal"] and out["pneumonia"]:
        auc = classification_metrics(y, p, CLASSES, threshold=threshold, n_boot=500, seed=seed)["macro_auc"]
        out["auc"] = {"value": auc["value"], **({"ci95": auc["bootstrap_ci"]} if auc.get("bootstrap_ci") else {})}
    return out


def drop_near_duplicates(ext, seen, cfg):
    """``ext`` without the images within the pHash threshold of any image of ``seen``."""
    from cxr_tf.datasets.duplicates import DEFAULT_THRESHOLD, default_cache_dir, hamming_pairs, hash_items

    cache = Path(cfg.cache_dir) / "duplicates" if cfg.cache_dir else default_cache_dir()
    h = np.concatenate([hash_items(ext, cache), hash_items(seen, cache)])
    i, j, _ = hamming_pairs(h, cfg.duplicate_threshold or DEFAULT_THRESHOLD)
    n = len(ext)
    cross = (i < n) & (j >= n)  # i < j always: an external image paired with a seen one
    bad = np.zeros(n, bool)
    bad[i[cross]] = True
    return ext.subset(~bad), int(bad.sum())


def inference_speed(model, image_size: int, batch: int = 32, repeats: int = 5) -> float:
    """Images per second of ``model.predict`` at ``batch`` on this machine (median of repeats)."""
    x = np.random.default_rng(0).random((batch, image_size, image_size, 1), dtype=np.float32)
    model.predict(x, verbose=0, batch_size=batch)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model.predict(x, verbose=0, batch_size=batch)
        times.append(time.perf_counter() - t)
    return float(batch / np.median(times))


def _fmt(s: dict | None) -> str:
    if not s:
        return "n/a"
    ci = s.get("ci95")
    return f"{s['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def portable_command(cfg: TrainPresetConfig) -> str:
    """The command that reproduces the preset, without this machine's paths."""
    args = ["python -m cxr_tf.experiments.train_preset --data-dir $CXR_DATA_DIR"]
    if cfg.preset_out:
        args.append(f"--preset-out {cfg.preset_out if not Path(cfg.preset_out).is_absolute() else 'DIR'}")
    skip = {"data_dir", "preset_out", "runs_dir", "saved_models_dir", "run_dir", "from_run", "cache_dir", "resume"}
    for name in sorted(getattr(cfg, "given", ())):
        if name not in skip:
            args.append(f"--{name.replace('_', '-')} {getattr(cfg, name)}")
    return " ".join(args)


def build_preset(cfg: TrainPresetConfig, summary: dict, ds_all) -> dict:
    """The finished run -> the preset folder, its own metrics per source and external ones."""
    import pandas as pd

    from cxr_tf.training import flow as common
    from cxr_tf.models import presets as P
    from cxr_tf.models.classifier import CXRClassifier

    run = Path(summary["run_dir"])
    cal = summary.get("calibration") or {}
    temperature = cal.get("temperature")
    threshold = float(summary["threshold"])
    meta = P.metadata_from_run(run, cfg.preset_name)
    training, per_source = [], {}
    src = ds_all.meta["source"].to_numpy()
    assigned = ds_all.meta["assigned_split"].to_numpy()
    for name in cfg.source_list():
        m = src == name
        counts = {s: int(((assigned == s) & m).sum()) for s in ("train", "val", "test")}
        training.append({"source": name, "images": counts["train"], "licence": LICENCES[name],
                         "validation_images": counts["val"], "held_out_test_images": counts["test"],
                         "classes": {c: int(((ds_all.class_index() == i) & m & (assigned == "train")).sum())
                                     for i, c in enumerate(CLASSES)}})
    meta.training_data = training
    # no machine paths in what ships: the command as a user types it, items relative to --data-dir
    meta.command = portable_command(cfg)
    meta.extra.pop("run_dir", None)
    meta.extra["run_config"] = {k: v for k, v in (meta.extra.get("run_config") or {}).items()
                                if k not in ("data_dir", "runs_dir", "saved_models_dir", "run_dir", "cache_dir",
                                             "preset_out", "from_run")}
    meta.description = (f"normal / pneumonia CXR classifier ({cfg.backbone}, {cfg.image_size} px) trained on "
                        f"{', '.join(cfg.source_list())} (test patients held out); cxr_tf's own preset")
    model = CXRClassifier.from_config(json.loads((run / "model.json").read_text())["config"])
    model.load_weights(str(run / "checkpoints" / "best.weights.h5"))
    parent = Path(cfg.preset_out) if cfg.preset_out else P.presets_home()
    test_ds = ds_all.subset(assigned == "test")
    p32 = predict_calibrated(model, test_ds, cfg.image_size, None)
    # float16 storage halves the file, but only ships when the loaded preset reproduces the
    # float32 checkpoint's probabilities within FP16_TOLERANCE on every test image; else float32
    for dtype in ("float16", "float32"):
        folder = P.save_preset(model, parent / cfg.preset_name, meta, weights_dtype=dtype, overwrite=True,
                               extra_files={"splits.csv": run / "splits.csv"})
        preset = P.load_preset(str(folder))
        shipped = preset.build()
        diff = float(np.abs(p32 - predict_calibrated(shipped, test_ds, cfg.image_size, None)).max())
        common.log(f"{dtype} preset vs float32 checkpoint on {len(test_ds)} test images: max |diff| {diff:.2e}")
        if dtype == "float16":
            fp16_diff = diff
        if diff <= FP16_TOLERANCE:
            break
    p_test = predict_calibrated(shipped, test_ds, cfg.image_size, temperature)
    y_test = test_ds.class_index()
    metrics = {"all test splits (held-out patients)": binary_stats(y_test, p_test, threshold, cfg.seed)}
    tsrc = test_ds.meta["source"].to_numpy()
    for name in cfg.source_list():
        m = tsrc == name
        if m.any():
            metrics[f"{name} test split"] = per_source[name] = binary_stats(y_test[m], p_test[m], threshold, cfg.seed)
    external = {}
    seen_ds = ds_all.subset(assigned != "test")
    for name in cfg.external_list():
        ext = load_external(name, Path(cfg.data_dir))
        if cfg.max_images:
            ext = ext.subset(np.random.default_rng(cfg.seed).permutation(len(ext))[:cfg.max_images])
        # "never trained on" must hold image by image: public collections re-publish each other
        # (covid19_radiography's normals include Kermany files), so drop near-duplicates of
        # anything the preset trained or validated on
        ext, n_dup = drop_near_duplicates(ext, seen_ds, cfg)
        common.log(f"external {name}: {n_dup} images dropped as near-duplicates of the preset's train / val images")
        p = predict_calibrated(shipped, ext, cfg.image_size, temperature)
        y = ext.class_index()
        external[name] = {**binary_stats(y, p, threshold, cfg.seed), "dropped_near_duplicates": n_dup}
        metrics[f"{name} (external: never trained on, its near-duplicates of training images removed; COVID-19 counted as pneumonia)"] = external[name]
        pd.DataFrame({"item": ext.item_names, "label": np.array(CLASSES)[y], "p_pneumonia": p[:, 1],
                      "decision": np.where(p[:, 1] >= threshold, "pneumonia", "normal")}).to_csv(
            run / f"external_{name}.csv", index=False)
    speed = inference_speed(shipped, cfg.image_size)
    size_mb = (folder / P.WEIGHTS_FILE).stat().st_size / 1e6
    meta = preset.metadata
    meta.metrics = {k: {m: v for m, v in s.items() if isinstance(v, dict)} for k, s in metrics.items()}
    meta.limitations = [
        "Research and teaching only; not a medical device and not for clinical decisions.",
        "Most normals and most pneumonias are pediatric (Kermany); adult data are few (NIH at 64 px, "
        "CC BY ieee8023 images), so check specificity on your own adult normals before relying on it.",
        "Sources differ in resolution and age: a model can learn the source. Per-source test metrics are in "
        "metadata.json; the external collection's figures are the honest transfer estimate.",
        "COVID-19 was never a class: the external COVID images are scored as pneumonia.",
        "Fine-tuning it on pediatric-only data (e.g. pneumonia_freeze on Kermany) keeps the in-domain accuracy "
        "but loses its specificity on adult normals (measured 0.03-0.43 vs 0.94: experiments/results/presets.md); "
        "use this head as it is for adults, or fine-tune on data that includes adult normals.",
    ]
    meta.extra.update({"fp16_vs_fp32_max_abs_diff": fp16_diff, "shipped_vs_fp32_max_abs_diff": diff, "weights_mb": round(size_mb, 2),
                       "cpu_images_per_second_batch32": round(speed, 1),
                       "parameters": model.count_params(), "external": external,
                       "threshold_rule": f"{cfg.operating_rule} on the validation split (calibrated scale)",
                       "train_patients_file": "splits.csv"})
    (folder / P.METADATA_FILE).write_text(json.dumps(meta.to_dict(), indent=2) + "\n")
    (folder / P.CARD_FILE).write_text(P.model_card(meta, json.loads((folder / P.CONFIG_FILE).read_text())))
    P.read_preset(folder)  # still valid after the metadata update (sha256 of the weights unchanged)
    common.log(f"preset {cfg.preset_name}: {folder} ({size_mb:.2f} MB weights, {speed:.0f} img/s at batch 32)")
    for k, s in metrics.items():
        common.log(f"  {k}: AUC {_fmt(s.get('auc'))}, sensitivity {_fmt(s.get('sensitivity'))}, "
                   f"specificity {_fmt(s.get('specificity'))}")
    out = {"preset": str(folder), "metrics": metrics, "weights_mb": size_mb, "images_per_second": speed,
           "fp16_max_abs_diff": fp16_diff}
    (run / "preset.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    return out


class PresetTask(ClassifierTask):
    """The classifier task with this experiment's data: several sources, each split by patient."""

    def load_data(self, run_dir):
        self.ds = training_data(self.cfg, run_dir)
        return self.ds

    def assigned_split(self, ds):
        return ds.meta["assigned_split"].to_numpy()


def run(cfg: TrainPresetConfig) -> dict:

    if cfg.from_run:
        from cxr_tf.errors import CXRConfigError

        metrics = Path(cfg.from_run) / "metrics.json"
        if not metrics.is_file():
            raise CXRConfigError(f"--from-run {cfg.from_run}: no metrics.json (not a finished train_preset run)")
        summary = {**json.loads(metrics.read_text()), "run_dir": str(Path(cfg.from_run))}
        return {**summary, "preset": build_preset(cfg, summary, training_data(cfg))}

    cfg.export_name = cfg.export_name or cfg.preset_name
    task = PresetTask(cfg)
    summary = task.run()
    if "run_dir" not in summary:  # a non-chief worker
        return summary
    return {**summary, "preset": build_preset(cfg, summary, task.ds)}


def main(argv=None) -> int:
    from cxr_tf.errors import run_main

    return run_main(lambda: run(parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
