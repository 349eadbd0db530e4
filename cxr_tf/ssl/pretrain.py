"""Self-supervised restoration pretraining (Models Genesis): the pool, the training, the encoder.

The machinery of the ``ssl_pretrain`` experiment (:mod:`cxr_tf.experiments.ssl_pretrain`,
its commands and results), here so that other experiments (``ssl_finetune --smoke`` pretrains
a tiny encoder first) use it without importing an experiment.

Training goes through the shared trainer: Keras ``fit`` with the standard callbacks and the
resume backup (:mod:`cxr_tf.training.resume`; ``--run-dir`` / ``--resume`` continue a killed
run at its last committed epoch), or under ``--strategy multi_worker`` the custom loop of
:func:`cxr_tf.training.distributed.fit_distributed` with the restoration loss per example
and the best epoch by validation SSIM (only the chief evaluates and writes the encoder).
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np

from cxr_tf.training.config import TrainConfig, opt, parse_config
from cxr_tf.training.precision import jit_compile_arg

#: Sources ``--sources auto`` takes from $CXR_DATA_DIR when present. kermany224 (a
#: downstream set) contributes only its training patients. PneumoniaMNIST is a re-split
#: of the same Kermany images (its images can be kermany224 test images and vice versa),
#: and kermany_originals are full-size copies of Kermany images: both left out. For a
#: PneumoniaMNIST evaluation pretrain with ``pneumoniamnist@train`` instead of kermany224.
AUTO_SOURCES = ("kermany224@train", "nih_chestxray14/nih1000_64", "covid19_radiography", "covid_ieee8023/images_256")
DESCRIPTION = "Self-supervised restoration pretraining (SPEC S0, Models Genesis): UNet+CBAM restorer."
NORMALISATION = "per-image min-max to [0, 1] (cxr_tf.data.preprocess.scale_per_image), gray, resize with pad"


@dataclasses.dataclass
class SSLPretrainConfig(TrainConfig):
    experiment: str = "ssl_pretrain"
    sources: str = opt("auto", "auto | comma list of paths (relative to $CXR_DATA_DIR), each optionally suffixed "
                       "@train")
    classes: str = opt("pneumonia", "class view used only to reproduce the downstream split for @train sources")
    max_images: int = opt(0, "subsample the unlabelled pool to at most N images (0: all)")
    fraction: float = opt(0.0, "subsample the unlabelled pool to about this share (0-1] of its images (0: all)")
    val_images: int = opt(256, "images held out for SSIM / PSNR")
    image_size: int = 64
    batch_size: int = 16
    epochs: int = 10
    lr: float = 1e-3
    early_stopping: int = 0
    depth: int = opt(4, "U-Net depth (down-sampling stages)")
    width: int = opt(32, "filters of the first U-Net stage (doubled per stage)")
    use_cbam: bool = opt(True, "CBAM attention blocks in the U-Net")
    cbam_ratio: int = opt(8, "CBAM channel-reduction ratio")
    loss: str = opt("ssim", "reconstruction loss: ssim | ms_ssim | mse | l1_ssim")
    # Models Genesis (official defaults)
    flip_rate: float = opt(0.4, "Models Genesis: probability of a flip")
    local_rate: float = opt(0.5, "Models Genesis: probability of local pixel shuffling")
    nonlinear_rate: float = opt(0.9, "Models Genesis: probability of the non-linear intensity transform")
    paint_rate: float = opt(0.9, "Models Genesis: probability of in- or out-painting")
    inpaint_rate: float = opt(0.2, "Models Genesis: share of painting that is in-painting (the rest out-painting)")
    synthetic_n: int = opt(600, "images of the embedded synthetic pool (without data)")
    encoder_dir: str = opt("", "also copy the trained encoder to this folder")
    export_from: str = opt("", "a run folder: write its encoder from checkpoints/best (e.g. of a stopped run)")

    def apply_smoke(self) -> None:
        super().apply_smoke()
        self.image_size = 32
        self.depth = min(self.depth, 2)
        self.width = min(self.width, 4)
        self.batch_size = 8
        self.max_images = 48
        self.val_images = 16
        self.synthetic_n = 64
        if self.sources == "auto":
            self.sources = "synthetic"

    def validate(self) -> None:
        super().validate()
        from cxr_tf.errors import CXRConfigError
        from cxr_tf.ssl.losses import LOSSES

        if self.loss not in LOSSES:
            raise CXRConfigError(f"--loss must be one of {LOSSES}; got {self.loss!r}")
        if self.image_size % 2**self.depth:
            raise CXRConfigError(f"--image-size {self.image_size} must be divisible by 2**depth = {2 ** self.depth}")
        self.genesis().validate()

    def genesis(self):
        from cxr_tf.ssl.transforms import GenesisConfig

        return GenesisConfig(flip_rate=self.flip_rate, local_rate=self.local_rate, nonlinear_rate=self.nonlinear_rate,
                             paint_rate=self.paint_rate, inpaint_rate=self.inpaint_rate)


def parse(argv=None) -> SSLPretrainConfig:
    return parse_config(SSLPretrainConfig, list(sys.argv[1:] if argv is None else argv), description=DESCRIPTION)


# ----------------------------------------------------------------------------- the pool
def _resolve(spec: str) -> Path:
    p = Path(spec).expanduser()
    root = os.environ.get("CXR_DATA_DIR")
    if not p.exists() and root and (Path(root) / spec).exists():
        p = Path(root) / spec
    return p


def _unlabeled_files(path: Path):
    """Every image file under ``path`` as a one-class dataset (labels are not used)."""
    import pandas as pd

    from cxr_tf.datasets import CXRDataset
    from cxr_tf.datasets.sources import IMAGE_EXTENSIONS
    from cxr_tf.errors import CXRDatasetError

    files = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise CXRDatasetError(path, "no image files found for the SSL pool")
    meta = pd.DataFrame({"item": files, "patient_id": [Path(f).stem for f in files], "source": path.name})
    return CXRDataset(files, np.ones((len(files), 1), np.float32), ["unlabeled"], meta, name=path.name)


def load_source(cfg: SSLPretrainConfig, spec: str, run):
    """One ``--sources`` entry -> a checked dataset (``@train``: training patients only)."""
    from cxr_tf.datasets import detect_format, patient_split
    from cxr_tf.errors import CXRDatasetError
    from cxr_tf.training import flow as common

    train_only = spec.endswith("@train")
    path = _resolve(spec[: -len("@train")] if train_only else spec)
    if not path.exists():
        raise CXRDatasetError(path, "SSL source not found")
    fmt = detect_format(path)
    if fmt in ("kermany", "npz", "csv") or train_only:
        # the whole source: "@train" must reproduce the fine-tuning split, which is drawn
        # from all of it (the pool's own --max-images / --fraction apply below, to the pool)
        sub = dataclasses.replace(cfg, data_dir=str(path), format="auto", max_images=0, fraction=0.0)
        ds = common.load_experiment_data(sub, cfg.classes)
        # the same checks and the same patient split as the fine-tuning experiment
        from cxr_tf.data import prepare_items

        ds, _ = prepare_items(ds, cache_dir=cfg.cache_dir, on_error=cfg.on_error)
        if train_only:
            fr = common.parse_split(cfg.split)
            ds = ds.subset(patient_split(ds, fr, seed=cfg.seed) == "train")
    else:
        from cxr_tf.data import prepare_items

        ds, skipped = prepare_items(_unlabeled_files(path), cache_dir=cfg.cache_dir, on_error="skip")
        if skipped:
            common.log(f"{path}: skipped {len(skipped)} unreadable files")
    return ds


def image_pool(cfg: SSLPretrainConfig, run):
    """``(train images, val images, table)``: unbatched tf.data of ``(H, W, 1)`` in [0, 1]."""
    import pandas as pd

    from cxr_tf.data import image_dataset
    from cxr_tf.training import flow as common

    if cfg.sources == "auto":
        specs = [s for s in AUTO_SOURCES if _resolve(s.split("@")[0]).exists()]
        if not specs:
            common.log("no CXR source under $CXR_DATA_DIR: using synthetic CXRs")
            specs = ["synthetic"]
    else:
        specs = [s.strip() for s in cfg.sources.split(",") if s.strip()]
    parts, rows = [], []
    for spec in specs:
        if spec == "synthetic":
            from cxr_tf.datasets.synthetic import make_synthetic_cxr

            ds = make_synthetic_cxr(n=cfg.synthetic_n, image_size=cfg.image_size, seed=cfg.seed)
        else:
            ds = load_source(cfg, spec, run)
        common.log(f"SSL source {spec}: {len(ds)} images")
        parts.append(ds)
        items = [f"{ds.name}[{i}]" for i in range(len(ds))] if ds.in_memory else [str(p) for p in ds.items]
        rows.append(pd.DataFrame({"source": spec, "item": items}))
    table = pd.concat(rows, ignore_index=True)
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(table))
    if cfg.fraction:
        order = order[: max(1, int(round(cfg.fraction * len(order))))]
    if cfg.max_images:
        order = order[: cfg.max_images]
    n_val = min(cfg.val_images, max(1, len(order) // 5))
    table["use"] = "unused"
    table.loc[order[n_val:], "use"] = "train"
    table.loc[order[:n_val], "use"] = "val"
    table.to_csv(run / "pool.csv", index=False)

    def images(use):
        ds_list, offset = [], 0
        for ds in parts:
            sel = (table["use"].to_numpy()[offset : offset + len(ds)] == use)
            offset += len(ds)
            if sel.any():
                ds_list.append(image_dataset(ds.subset(sel), cfg.image_size).map(lambda x, y: x))
        d = ds_list[0]
        for other in ds_list[1:]:
            d = d.concatenate(other)
        return d

    counts = table.groupby(["source", "use"]).size().unstack(fill_value=0)
    common.log("SSL pool:\n" + counts.to_string())
    n_train = int((table["use"] == "train").sum())
    return images("train").cache(), images("val").cache(), n_train, n_val, counts


# ----------------------------------------------------------------------------- callbacks
def _metric_fns():
    import keras

    from cxr_tf.ssl.losses import psnr, ssim

    return [keras.metrics.MeanMetricWrapper(ssim, name="ssim"), keras.metrics.MeanMetricWrapper(psnr, name="psnr")]


def restoration_grid(original: np.ndarray, corrupted: np.ndarray, restored: np.ndarray) -> np.ndarray:
    """Rows original / corrupted / restored, one column per image: ``(3H, nW, 1)``."""
    rows = [np.concatenate(list(a[..., :1]), axis=1) for a in (original, corrupted, restored)]
    return np.clip(np.concatenate(rows, axis=0), 0, 1)


def make_grid_logger(val_pairs, log_dir: str, n: int = 8):
    import keras
    import tensorflow as tf

    x, y = next(iter(val_pairs))
    x, y = np.asarray(x)[:n], np.asarray(y)[:n]

    class RestorationGridLogger(keras.callbacks.Callback):
        """Each epoch: original / corrupted / restored validation images in TensorBoard."""

        def __init__(self):
            super().__init__()
            self.writer = tf.summary.create_file_writer(log_dir + "/validation")

        def on_epoch_end(self, epoch, logs=None):
            r = np.asarray(self.model.predict(x, verbose=0))
            with self.writer.as_default():
                tf.summary.image("restoration", restoration_grid(y, x, r)[None], step=epoch,
                                 description="rows: original, corrupted (Models Genesis), restored")
            self.writer.flush()

    return RestorationGridLogger()


# ----------------------------------------------------------------------------- run
def evaluate_restoration(model, val_pairs) -> dict:
    from cxr_tf.ssl.losses import psnr, ssim

    s_r, p_r, s_c, p_c = [], [], [], []
    for x, y in val_pairs:
        r = model.predict(x, verbose=0)
        s_r.append(ssim(y, r).numpy()), p_r.append(psnr(y, r).numpy())
        s_c.append(ssim(y, x).numpy()), p_c.append(psnr(y, x).numpy())
    f = lambda v: float(np.mean(np.concatenate(v)))  # noqa: E731
    cat = lambda v: np.concatenate(v)  # noqa: E731
    finite = lambda v: float(np.mean(np.minimum(cat(v), 100.0)))  # noqa: E731 identical pairs: PSNR inf -> 100
    return {"val_ssim_restored": f(s_r), "val_psnr_restored": finite(p_r), "val_ssim_corrupted": f(s_c),
            "val_psnr_corrupted": finite(p_c), "val_images": int(len(cat(s_r)))}


def run(cfg: SSLPretrainConfig) -> dict:
    from cxr_tf.training import flow as common

    t0 = time.time()
    strategy = common.setup_runtime(cfg)

    from cxr_tf.models.unet_cbam import UNetCBAM
    from cxr_tf.ssl.losses import RestorationLoss
    from cxr_tf.ssl.transforms import make_pair_dataset
    from cxr_tf.training.loop import make_optimizer
    from cxr_tf.training.run import create_run_dir

    run_dir = create_run_dir(cfg)
    common.log(f"run folder: {run_dir}")
    train_imgs, val_imgs, n_train, n_val, counts = image_pool(cfg, run_dir)
    gen = cfg.genesis()
    steps = max(1, n_train // cfg.batch_size)
    train = make_pair_dataset(train_imgs, cfg.batch_size, gen, seed=cfg.seed, shuffle=n_train)
    # fixed validation pairs: the same corruption every epoch (seeded, not repeated)
    val = make_pair_dataset(val_imgs, cfg.batch_size, gen, seed=cfg.seed + 1, repeat=False,
                            drop_remainder=False).cache()
    with strategy.scope():
        model = UNetCBAM(cfg.image_size, 1, cfg.depth, cfg.width, cfg.use_cbam, cfg.cbam_ratio)
        model.compile(optimizer=make_optimizer(cfg.optimizer_config(), steps, cfg.epochs),
                      loss=RestorationLoss(cfg.loss), metrics=_metric_fns(),
                      jit_compile=jit_compile_arg(cfg.jit_compile))
    params = int(sum(np.prod(w.shape) for w in model.weights))
    common.log(f"{model.name}: {params:,} parameters, {n_train} train / {n_val} val images, {steps} steps/epoch")

    # The shared trainer: model.fit with resume (a killed run resumes from backup/), or under
    # multi_worker the custom loop with the restoration loss and the best epoch by val SSIM.
    from types import SimpleNamespace

    from cxr_tf.training.distributed import Monitor

    pipes = (SimpleNamespace(dataset=train, steps=steps), SimpleNamespace(dataset=val, num_examples=n_val), None)
    extra = [] if cfg.strategy == "multi_worker" else [make_grid_logger(val, str(run_dir.tensorboard))]
    _, fit_s = common.fit(cfg, model, None, pipes, run_dir, extra_callbacks=extra, loggers=False,
                          monitor="val_ssim",
                          distributed={"strategy": strategy, "monitor": Monitor("val_ssim", mean_ssim),
                                       "classifier": False})
    if not common.is_chief(cfg):  # only the chief evaluates and writes the encoder
        common.log("worker done (training); the chief writes the results")
        return {"experiment": cfg.experiment, "chief": False, "fit_seconds": round(fit_s, 1)}
    return finish(cfg, model, run_dir, val, counts, n_train, n_val, steps, fit_s, t0)


def mean_ssim(y_true: np.ndarray, restored: np.ndarray) -> float:
    """Validation SSIM over all images (the multi-worker loop's monitor, ``val_ssim``)."""
    from cxr_tf.ssl.losses import ssim

    return float(np.mean(ssim(y_true, restored).numpy()))


def finish(cfg, model, run_dir, val, counts, n_train, n_val, steps, fit_s, t0) -> dict:
    """Best checkpoint -> validation SSIM / PSNR, encoder + metadata, metrics, report."""
    from cxr_tf.training import flow as common
    from cxr_tf.training import resume

    gen = cfg.genesis()
    history = resume.read_history_csv(run_dir / "history.csv")
    if not common.restore_best(model, run_dir):
        from cxr_tf.errors import CXRConfigError

        raise CXRConfigError(f"{run_dir}: no checkpoints/best.weights.h5 to export")
    metrics = evaluate_restoration(model, val)
    meta = {
        "image_size": cfg.image_size, "channels": 1, "normalisation": NORMALISATION, "input_range": [0.0, 1.0],
        "transforms": gen.to_dict(), "loss": cfg.loss, "sources": cfg.sources,
        "pool": {str(k): {str(c): int(v) for c, v in row.items()} for k, row in counts.iterrows()},
        "epochs": len(history.get("loss", [])), "seed": cfg.seed, "split": cfg.split, "classes": cfg.classes,
        "run_dir": str(run_dir), **metrics,
    }
    enc_dir = model.save_encoder(run_dir / "ssl_encoder", meta)
    if cfg.encoder_dir:
        model.save_encoder(cfg.encoder_dir, meta)
    params = int(sum(np.prod(w.shape) for w in model.weights))
    epochs_done = len(history.get("loss", []))
    summary = {"experiment": cfg.experiment, **metrics, "train_images": n_train, "parameters": params,
               "epochs_done": epochs_done, "fit_seconds": round(fit_s, 1), "wall_seconds": round(time.time() - t0, 1),
               "images_per_second": round(epochs_done * steps * cfg.batch_size / max(fit_s, 1e-9), 1) if fit_s else None,
               "encoder": str(enc_dir), "history": history}
    from cxr_tf.evaluation import plot_training_curves, write_metrics_json

    write_metrics_json(str(run_dir / "metrics.json"), summary)
    if history:
        plot_training_curves(history, str(run_dir.plots / "training_curves.png"), title="SSL restoration")
    (run_dir / "report.md").write_text(
        f"# SSL pretraining ({model.name})\n\n"
        f"- pool: {n_train} train / {n_val} val images from `{cfg.sources}`, {cfg.image_size} px, {epochs_done} epochs\n"
        f"- validation SSIM corrupted {metrics['val_ssim_corrupted']:.3f} -> restored {metrics['val_ssim_restored']:.3f}; "
        f"PSNR {metrics['val_psnr_corrupted']:.1f} -> {metrics['val_psnr_restored']:.1f} dB\n"
        f"- fit {fit_s:.0f} s, wall {time.time() - t0:.0f} s\n- encoder: `{enc_dir}` (load with `--init ssl:{enc_dir}`)\n"
        + ("\n![training curves](plots/training_curves.png)\n" if history else ""))
    common.finish_run(run_dir)
    common.log(f"val SSIM {metrics['val_ssim_corrupted']:.3f} -> {metrics['val_ssim_restored']:.3f}; encoder {enc_dir}")
    return summary


def export_from(path: str) -> dict:
    """The encoder of an existing run (finished or stopped) from its best checkpoint."""
    import json

    from cxr_tf.models.unet_cbam import UNetCBAM
    from cxr_tf.ssl.transforms import make_pair_dataset
    from cxr_tf.training import flow as common
    from cxr_tf.training.run import RunDir

    t0 = time.time()
    run_dir = RunDir(path)
    fields = {f.name for f in dataclasses.fields(SSLPretrainConfig)}
    saved = json.loads((run_dir / "config.json").read_text())
    cfg = SSLPretrainConfig(**{k: v for k, v in saved.items() if k in fields})
    common.setup_runtime(cfg)
    _, val_imgs, n_train, n_val, counts = image_pool(cfg, run_dir)
    val = make_pair_dataset(val_imgs, cfg.batch_size, cfg.genesis(), seed=cfg.seed + 1, repeat=False,
                            drop_remainder=False).cache()
    model = UNetCBAM(cfg.image_size, 1, cfg.depth, cfg.width, cfg.use_cbam, cfg.cbam_ratio)
    steps = max(1, n_train // cfg.batch_size)
    return finish(cfg, model, run_dir, val, counts, n_train, n_val, steps, 0.0, t0)
