"""A perceptual-similarity test set of chest X-rays in the BAPPS layout (SPEC S2): the builder.

From real CXRs, 2AFC triplets (reference, p0, p1) and JND pairs (reference,
distorted) are written as 8-bit PNGs under ``OUT/2afc/<subset>/{ref,p0,p1}/`` and
``OUT/jnd/<subset>/{p0,p1}/`` with ``OUT/manifest.csv`` recording every item's
source image, both distortions, their severities and parameters, and the item's
seed. Two subsets, as in BAPPS: ``traditional`` (every distortion of
:mod:`cxr_tf.distortions.traditional`) and ``cnn`` (a denoising autoencoder and
three distorting GANs with different generator knobs, trained here on CXRs of
patients disjoint from the test set's). Distortion types are balanced: each
appears equally often (+-1) in the p0 and in the p1 slots; half of the 2AFC
triplets compare two severities of one distortion, half two different ones.
The same seed gives byte-identical files and manifest.

The experiment (command, hardware, result) is :mod:`cxr_tf.experiments.perceptual_testset`;
``perceptual_agreement --smoke`` builds a tiny set with :func:`run` too.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from cxr_tf.errors import CXRConfigError
from cxr_tf.training.config import opt

SUBSET_CODES = {"traditional": 1, "cnn": 2}
KIND_CODES = {"2afc": 1, "jnd": 2}

# The CNN distortions: (generator knobs, GAN loss, L1 weight, real distortions it imitates).
GAN_VARIANTS = {
    "gan_unet_transpose": (dict(skips=True, upsampling="transpose", norm="batch", dropout=0.0), "bce", 10.0,
                           ("jpeg", "gaussian_blur")),
    "gan_encdec_nearest": (dict(skips=False, upsampling="nearest", norm="instance", dropout=0.2), "lsgan", 10.0,
                           ("white_gaussian_noise", "pink_noise", "checkerboard")),
    "gan_unet_bilinear": (dict(skips=True, upsampling="bilinear", norm="none", dropout=0.0), "bce", 2.0,
                          ("bilateral_blur", "ghosting", "contrast")),
}


@dataclasses.dataclass
class PerceptualTestsetConfig:
    experiment: str = opt("perceptual_testset", "experiment name")
    data_dir: str | None = opt(None, "dataset folder (kermany224, ...) the images come from (none: synthetic CXRs)")
    format: str = opt("auto", "dataset layout: auto | kermany | folder | csv | npz")
    out_dir: str = opt("perceptual_testset", "folder the BAPPS-layout test set is written to")
    image_size: int = opt(64, "side of the written patches in pixels")
    n_2afc: int = opt(200, "2AFC triplets per subset")
    n_jnd: int = opt(100, "JND pairs per subset")
    n_source: int = opt(100, "distinct test images (one per patient where possible)")
    distortions: str = opt("all", "comma list of traditional distortions, or all")
    severity_min: float = opt(0.1, "2AFC severities are uniform in [severity-min, 1]")
    jnd_severity_max: float = opt(0.4, "JND severities are uniform in [0, jnd-severity-max]")
    cnn: bool = opt(True, "build the cnn subset (trains a DAE and the GAN variants)")
    cnn_train_images: int = opt(300, "training images for the CNN distortions (from other patients)")
    dae_epochs: int = opt(15, "denoising autoencoder epochs")
    gan_steps: int = opt(300, "GAN training steps")
    cnn_filters: int = opt(16, "filters of the CNN distortion models")
    grid: bool = opt(True, "also write distortion_grid.png (every distortion at 3 severities)")
    seed: int = opt(0, "seed for every draw")
    synthetic_n: int = opt(400, "synthetic images (without --data-dir)")
    smoke: bool = opt(False, "shrink everything for a quick test run (explicit flags still win)")
    quiet: bool = opt(False, "print warnings and errors only")
    verbose: bool = opt(False, "print debugging messages too")

    def apply_smoke(self) -> None:
        self.image_size = 32
        self.n_2afc, self.n_jnd, self.n_source = 12, 8, 6
        self.cnn_train_images, self.dae_epochs, self.gan_steps, self.cnn_filters = 16, 1, 3, 4
        self.synthetic_n = 30

    def validate(self) -> None:
        if self.image_size < 16 or self.image_size % 8:
            raise CXRConfigError(f"--image-size must be a multiple of 8 and >= 16; got {self.image_size}")
        if min(self.n_2afc, self.n_jnd, self.n_source) < 1:
            raise CXRConfigError("--n-2afc, --n-jnd and --n-source must be >= 1")
        if not 0 <= self.severity_min < 1 or not 0 < self.jnd_severity_max <= 1:
            raise CXRConfigError("--severity-min must be in [0, 1) and --jnd-severity-max in (0, 1]")

    def to_dict(self):
        return dataclasses.asdict(self)


#: INFO lines through the experiments' logger (``[cxr_tf] ...``, cxr_tf.log).
log = logging.getLogger("cxr_tf.perceptual").info


def item_seed(seed: int, kind: str, subset: str, i: int) -> int:
    """A per-item seed (recorded in the manifest): regenerates the item alone."""
    return int(np.random.SeedSequence([seed, KIND_CODES[kind], SUBSET_CODES.get(subset, 9), i]).generate_state(1)[0])


def balanced(names, n: int, rng) -> list[str]:
    """``n`` draws from ``names``, every name ``n // len(names)`` or one more times, shuffled."""
    out = list(np.resize(rng.permutation(list(names)), n))
    rng.shuffle(out)
    return [str(v) for v in out]


def pair_types(names, n: int, rng) -> tuple[list[str], list[str]]:
    """p0 / p1 distortion types: both slots balanced; the first half of a shuffled order
    compares one distortion with itself, the rest two (usually) different ones."""
    t0 = balanced(names, n, rng)
    order = rng.permutation(n)
    same, diff = order[: n // 2], order[n // 2:]
    t1 = list(t0)
    shuffled = [t0[i] for i in diff]
    rng.shuffle(shuffled)
    for i, t in zip(diff, shuffled):
        t1[i] = t
    return t0, t1


def _to_unit(a: np.ndarray, size: int) -> np.ndarray:
    from cxr_tf.errors import require_optional

    cv2 = require_optional("cv2", "perceptual", "the perceptual test set", "opencv-python-headless")

    a = np.asarray(a, np.float32)
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return cv2.resize(a, (size, size), interpolation=cv2.INTER_AREA).clip(0, 1)


def load_sources(cfg) -> tuple[list[str], np.ndarray, np.ndarray, list[str], list[str]]:
    """(names, test images, CNN-training images, training names, test patients): patient-disjoint, from ``cfg.data_dir``
    or synthetic CXRs. Test images are one per patient where there are enough patients."""
    if cfg.data_dir:
        from cxr_tf.datasets import detect_format, load_dataset

        fmt = detect_format(cfg.data_dir) if cfg.format == "auto" else cfg.format
        ds = load_dataset(cfg.data_dir, fmt)
        read = lambda item: __import__("cxr_tf.io", fromlist=["read_image"]).read_image(item)
        names_all = [os.path.relpath(str(p), cfg.data_dir) for p in ds.items]
    else:
        from cxr_tf.datasets.synthetic import make_synthetic_cxr

        ds = make_synthetic_cxr(n=cfg.synthetic_n, image_size=max(cfg.image_size, 64), seed=cfg.seed)
        read = lambda item: item
        names_all = list(ds.meta["item"].astype(str))
    rng = np.random.default_rng([cfg.seed, 7])
    patients = np.array(sorted(set(ds.meta["patient_id"])))
    patients = patients[rng.permutation(len(patients))]
    pid = ds.meta["patient_id"].to_numpy()
    test_idx, train_idx = [], []
    for p in patients:  # one image of each patient for the test set until full, the rest for training
        rows = np.flatnonzero(pid == p)
        if len(test_idx) < cfg.n_source:
            test_idx.append(int(rng.choice(rows)))
        else:
            train_idx.extend(rows.tolist())
    if len(test_idx) < cfg.n_source:
        raise CXRConfigError(f"{cfg.data_dir or 'synthetic'}: {len(patients)} patients for --n-source {cfg.n_source}")
    train_idx = [int(i) for i in rng.permutation(train_idx)[: cfg.cnn_train_images]] if cfg.cnn else []
    load = lambda idx: np.stack([_to_unit(read(ds.items[i]), cfg.image_size) for i in idx]) if idx else \
        np.zeros((0, cfg.image_size, cfg.image_size), np.float32)
    return ([names_all[i] for i in test_idx], load(test_idx), load(train_idx), [names_all[i] for i in train_idx],
            sorted({str(pid[i]) for i in test_idx}))


def train_cnn_distortions(cfg, train_images: np.ndarray) -> dict:
    """Train the DAE and the GAN variants; returns name -> Distortion (not registered globally)."""
    import keras

    from cxr_tf.distortions import apply_distortion
    from cxr_tf.distortions.cnn import (DistortionGAN, GANConfig, GeneratorConfig, build_denoising_autoencoder,
                                        dae_distortion, generator_distortion, train_denoising_autoencoder)

    out = {}
    keras.utils.set_random_seed(cfg.seed)
    t = time.time()
    f = cfg.cnn_filters
    dae = build_denoising_autoencoder(cfg.image_size, (f, 2 * f))
    hist = train_denoising_autoencoder(dae, train_images, noise_sigma=0.1, epochs=cfg.dae_epochs, seed=cfg.seed)
    out["dae"] = dae_distortion(dae, "dae")
    log(f"DAE: {cfg.dae_epochs} epochs on {len(train_images)} images, mse {hist[0]:.4f} -> {hist[-1]:.4f} "
        f"({time.time() - t:.0f}s)")
    for k, (name, (knobs, loss, l1w, targets)) in enumerate(GAN_VARIANTS.items()):
        t = time.time()
        keras.utils.set_random_seed(cfg.seed + 1 + k)
        gcfg = GeneratorConfig(image_size=cfg.image_size, layers=3, base_filters=f, **knobs)
        gan = DistortionGAN(GANConfig(gcfg, disc_layers=2, disc_filters=f, loss=loss, l1_weight=l1w, lr=1e-3))
        gan.generator.name = name  # the manifest names the model

        def target_fn(batch, rng, targets=targets):
            return np.stack([apply_distortion(str(rng.choice(targets)), b[..., 0], rng.uniform(0.3, 1.0), rng)[0]
                             for b in batch])[..., None]

        h = gan.fit(train_images[..., None], target_fn, steps=cfg.gan_steps, batch_size=16, seed=cfg.seed + k)
        config = {**dataclasses.asdict(gcfg), "loss": loss, "l1_weight": l1w, "targets": list(targets)}
        out[name] = generator_distortion(gan.generator, name, config=config)
        log(f"{name}: {cfg.gan_steps} steps, l1 {h[0]['l1']:.3f} -> {h[-1]['l1']:.3f}, "
            f"d_loss {h[-1]['d_loss']:.3f} ({time.time() - t:.0f}s)")
    return out


def build_subset(root: Path, subset: str, dists: dict, sources, names, cfg) -> list[dict]:
    """Write the 2AFC and JND items of one subset; returns manifest rows."""
    from cxr_tf.perceptual.bapps import item_id, write_png

    rows = []
    rng = np.random.default_rng([cfg.seed, SUBSET_CODES[subset]])
    kinds = list(dists)
    t0, t1 = pair_types(kinds, cfg.n_2afc, rng)
    src = balanced(range(len(sources)), cfg.n_2afc, rng)
    for i in range(cfg.n_2afc):
        s = item_seed(cfg.seed, "2afc", subset, i)
        r = np.random.default_rng(s)
        ref = sources[int(src[i])]
        sev = r.uniform(cfg.severity_min, 1.0, 2).round(4)
        a, pa = dists[t0[i]].apply(ref, float(sev[0]), r)
        b, pb = dists[t1[i]].apply(ref, float(sev[1]), r)
        iid = item_id(i)
        base = root / "2afc" / subset
        write_png(base / "ref" / f"{iid}.png", ref)
        write_png(base / "p0" / f"{iid}.png", a)
        write_png(base / "p1" / f"{iid}.png", b)
        rows.append(dict(kind="2afc", subset=subset, id=iid, source_image=names[int(src[i])],
                         distortion_p0=t0[i], severity_p0=float(sev[0]), params_p0=json.dumps(pa, sort_keys=True),
                         distortion_p1=t1[i], severity_p1=float(sev[1]), params_p1=json.dumps(pb, sort_keys=True),
                         seed=s))
    tj = balanced(kinds, cfg.n_jnd, rng)
    srcj = balanced(range(len(sources)), cfg.n_jnd, rng)
    for i in range(cfg.n_jnd):
        s = item_seed(cfg.seed, "jnd", subset, i)
        r = np.random.default_rng(s)
        ref = sources[int(srcj[i])]
        sev = round(float(r.uniform(0.0, cfg.jnd_severity_max)), 4)
        b, pb = dists[tj[i]].apply(ref, sev, r)
        iid = item_id(i)
        base = root / "jnd" / subset
        write_png(base / "p0" / f"{iid}.png", ref)
        write_png(base / "p1" / f"{iid}.png", b)
        rows.append(dict(kind="jnd", subset=subset, id=iid, source_image=names[int(srcj[i])],
                         distortion_p0="none", severity_p0=0.0, params_p0="{}",
                         distortion_p1=tj[i], severity_p1=sev, params_p1=json.dumps(pb, sort_keys=True), seed=s))
    return rows


def run(cfg: PerceptualTestsetConfig) -> Path:
    import pandas as pd

    from cxr_tf.distortions import TRADITIONAL, get_distortion
    from cxr_tf.perceptual.bapps import MANIFEST_COLUMNS

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    t_start = time.time()
    root = Path(cfg.out_dir)
    if root.exists() and any(root.iterdir()):
        raise CXRConfigError(f"{root}: exists and is not empty; choose another --out-dir")
    names_trad = list(TRADITIONAL) if cfg.distortions == "all" else [n.strip() for n in cfg.distortions.split(",")]
    trad = {n: get_distortion(n) for n in names_trad}
    names, sources, train, train_names, test_patients = load_sources(cfg)
    log(f"{len(sources)} test images, {len(train)} CNN-training images at {cfg.image_size}px "
        f"from {cfg.data_dir or 'synthetic CXRs'}")
    rows = build_subset(root, "traditional", trad, sources, names, cfg)
    cnn = {}
    if cfg.cnn:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
        cnn = train_cnn_distortions(cfg, train)
        rows += build_subset(root, "cnn", cnn, sources, names, cfg)
    man = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    man.to_csv(root / "manifest.csv", index=False, float_format="%.6g")
    if cfg.grid:
        from cxr_tf.distortions.grid import _grid_from

        _grid_from({**trad, **cnn}, sources[0], root / "distortion_grid.png", seed=cfg.seed,
                   title=f"{names[0]} ({cfg.image_size}px)")
    info = {"config": cfg.to_dict(), "counts": man.groupby(["kind", "subset"]).size().rename("n").reset_index()
            .to_dict("records"), "wall_s": round(time.time() - t_start, 1),
            "test_patients": test_patients, "cnn_training_images": train_names}
    (root / "build_info.json").write_text(json.dumps(info, indent=2))
    log(f"wrote {len(man)} items to {root} in {info['wall_s']}s")
    return root
