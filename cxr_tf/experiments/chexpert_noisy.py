"""Noisy labels, 14 pathologies: ResNet50 vs ViT vs hybrid CNN-ViT, and the seed's ideas (seed 001).

SPEC S1. Two studies on one multi-label image set (CheXpert layout or NIH ChestX-ray14 layout):

* ``--study compare`` (the seed's table): per-label AUC and mean AUC of ResNet50, ViT and
  the hybrid CNN-ViT, then the hybrid with each idea added: uncertainty policies (U-Ignore,
  U-Zeros, U-Ones, U-LSR; only when the training labels contain ``-1``), the disease
  hierarchy (conditional training + ``P(child) = P(child|parent) P(parent)``), MixUp,
  MentorNet-style weighting (thresholds 0.3 / 0.5) and relabelling (best model relabels,
  then only the final layer is retrained).
* ``--study noise`` (controlled noise, needs no CheXpert images): on real NIH images with
  clean labels, hide a fraction of the training labels as "uncertain" (-1) at the per-label
  rates measured in the real CheXpert ``train.csv``, flip a set fraction of the rest, train
  the hybrid with each policy / method and measure test AUC against the clean labels, with
  bootstrap CIs and paired bootstrap CIs of the difference to U-Ignore.

Splits are by patient (train / val / test; val and test keep clean labels, as CheXpert's
radiologist-labelled validation set). The best epoch is chosen by validation mean AUC.

Commands::

    # NIH ChestX-ray14 (labels file + image folder; default: $CXR_DATA_DIR/nih_chestxray14 with nih1000_64)
    python -m cxr_tf.experiments.chexpert_noisy --study compare
    python -m cxr_tf.experiments.chexpert_noisy --study noise --chexpert-csv $CXR_DATA_DIR/chexpert_labels/chexpert_train.csv.gz
    # CheXpert public layout
    python -m cxr_tf.experiments.chexpert_noisy --study compare --data-dir /data/chexpert --image-size 224 --epochs 3
    # per-label choices: U-policy, blank as mask or 0 and the blank weight; U-LSR over a range
    python -m cxr_tf.experiments.chexpert_noisy --study compare --data-dir /data/chexpert \
        --base-policy "default=ignore,Atelectasis=ones,Edema=ones" --blank "default=zero,Fracture=mask" \
        --blank-weight "default=1.0,No Finding=0.2" --lsr-low 0.55 --lsr-high 0.85

U-LSR's target is the constant 0.5 by default (``--lsr-low 0.5 --lsr-high 0.5``, SPEC S1); a range
draws it per entry. With the hierarchy and relabelling together, children are relabelled with the
model's conditional outputs ``P(child | parent)`` (what they were trained on), parents and the
other labels with their marginals.

Writes ``runs/chexpert_noisy/<UTC timestamp>/``: ``config.json``, ``splits.csv``,
``results_<study>.csv`` / ``.md`` (per-label AUCs with CIs, mean AUC with CI), ``metrics.json``,
and one folder per method ``cells/<method>/`` (``history.csv``: loss and validation mean AUC
per epoch; ``result.json`` + ``predictions.npz`` once finished; ``relabel/`` for the second phase).

Resume: re-running the same command (or ``--run-dir DIR``) reopens the run; finished methods
are reused, not retrained, and a method killed mid-training resumes at its last committed
epoch (weights, optimizer, best-so-far score and weights in ``cells/<method>/backup/``; the
batch order after the resume differs from an uninterrupted run's: tf.data reshuffle state is
not restorable from outside ``model.fit``).
``--strategy multi_worker`` (TF_CONFIG, ``--run-dir`` on shared storage, global
``--batch-size``) trains each phase with the shared custom loop
(:mod:`cxr_tf.training.distributed`), best epoch by the same validation mean AUC; only the
chief writes results. There the input stream is one continuous shuffled stream (not a fresh
iterator per epoch) and the masked / MentorNet losses normalise per replica batch, so a
2-worker run is not numerically the one-worker run.

Results (2-core CPU VM, one core; NIH nih1000_64: 800 real images at 64 px, 221 patients,
8 epochs from scratch), details in ``experiments/results/chexpert_noisy.md``:

* ``--study noise --epochs 8 --lsr-low 0.55 --lsr-high 0.85`` (706 s): test mean AUC over 10 labels 0.50-0.60 for every method;
  no paired difference to U-Ignore excludes 0 (U-LSR +0.045 [-0.011, +0.100] is the largest);
  over seeds 0-2 (``--seed``) U-LSR averages +0.002 and only U-Ones is consistently worse (-0.026).
* ``--study compare --epochs 8 --lsr-low 0.55 --lsr-high 0.85`` (1,198 s): ResNet50 0.519, ViT 0.540, hybrid 0.504; all ideas
  within +-0.03 of ResNet50 with CIs spanning 0. At this scale every model is near chance.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_tf.errors import CXRConfigError
from cxr_tf.training.config import NormConfig, TrainConfig, opt, parse_config

#: NIH has no "Lung Opacity" label; CheXpert's Lung Opacity covers these findings, so for the
#: hierarchy on NIH data it is derived as their OR (NIH's 14 labels are exhaustive, so all
#: of them negative makes it negative). An approximation, documented in the results.
NIH_LUNG_OPACITY_FROM = ["Atelectasis", "Consolidation", "Edema", "Pneumonia", "Infiltration", "Mass", "Nodule"]


@dataclasses.dataclass
class ChexpertNoisyConfig(NormConfig, TrainConfig):
    experiment: str = "chexpert_noisy"
    study: str = opt("compare", "compare (models and ideas on NIH/CheXpert) | noise (injected label noise)")
    image_dir: str | None = opt(None, "NIH image folder (default: <data-dir>/nih1000_64)")
    chexpert_csv: str | None = opt(None, "noise study: CheXpert train.csv(.gz) giving the uncertain-label rates")
    models: str = opt("resnet50,vit_tiny,hybrid_tiny", "comma list of registry names compared in the model rows")
    hybrid: str = opt("hybrid_tiny", "the model the noisy-label ideas are added to")
    init: str = opt("", "trunk weights per model: comma list of MODEL=WEIGHTS (any resolver form: preset:NAME, "
                    "run:DIR, ssl:DIR, PATH); models not named start from random weights")
    methods: str = opt("default", "comma list of table rows to run (default: the study's list)")
    base_policy: str = opt("ignore", "uncertain-label policy of the rows (or per label: default=ignore,Edema=ones)")
    lsr_low: float = opt(0.5, "U-LSR target low end (== high: that constant, SPEC S1)")
    lsr_high: float = opt(0.5, "U-LSR target high end (e.g. 0.55 / 0.85 draws per entry, Pham et al.)")
    blank: str = opt("mask", "blank labels: mask | zero, or per label default=mask,Edema=zero")
    blank_weight: str = opt("1.0", "weight of a blank treated as 0, or per label default=1.0,No Finding=0.2")
    mixup_alpha: float = opt(0.2, "mixup Beta(alpha, alpha) parameter")
    mentor_weight: float = opt(0.5, "weight of samples above the MentorNet threshold")
    relabel_epochs: int = opt(3, "epochs before confident predictions relabel the uncertain entries")
    relabel_confident: float = opt(0.9, "probability above which a prediction relabels an entry")
    flip_rate: float = opt(0.03, "noise study: share of the non-hidden training labels flipped")
    uncertain_positive_bias: float = opt(1.0, "noise study: odds multiplier for hiding a true positive (1: at random)")
    min_test_positives: int = opt(5, "labels with fewer test positives are left out of the mean AUC")
    n_boot: int = opt(1000, "bootstrap resamples for confidence intervals")
    split: str = "60:15:25"
    image_size: int = 64
    batch_size: int = 32
    epochs: int = 10
    lr: float = 1e-3
    bn_momentum: float = 0.9
    augment: str = "none"
    balance: str = "none"

    def init_map(self) -> dict:
        """``--init`` as ``{model: weights}``."""
        out = {}
        for part in filter(None, (x.strip() for x in self.init.split(","))):
            name, sep, weights = part.partition("=")
            if not sep or not name.strip() or not weights.strip():
                from cxr_tf.errors import CXRConfigError

                raise CXRConfigError(f"--init: {part!r} is not MODEL=WEIGHTS (e.g. resnet50=preset:NAME)")
            out[name.strip()] = weights.strip()
        return out

    def apply_smoke(self) -> None:
        super().apply_smoke()
        self.image_size = 32
        self.epochs = 1
        self.relabel_epochs = 1
        self.batch_size = 16
        self.n_boot = 50
        self.max_images = self.max_images or 160
        self.models = "vit_tiny,hybrid_tiny"
        self.min_test_positives = 1

    def validate(self) -> None:
        super().validate()
        if self.study not in ("compare", "noise"):
            raise CXRConfigError(f"--study must be compare or noise; got {self.study!r}")
        if not 0 <= self.flip_rate < 0.5:
            raise CXRConfigError(f"--flip-rate must be in [0, 0.5); got {self.flip_rate}")
        # syntax and values now; label names are checked once the data is loaded (check_labels)
        self.uncertainty_policy(self.base_policy)
        self.init_map()

    def uncertainty_policy(self, policy: str):
        """The :class:`UncertaintyPolicy` of a row with U-policy ``policy`` and this config's
        LSR range and (per-label) blank handling; ``CXRConfigError`` on a malformed option."""
        from cxr_tf.noisy.uncertainty import (
            UncertaintyPolicy,
            parse_blank,
            parse_blank_weight,
            parse_policy,
        )

        def flag(name, fn, v):
            try:
                return fn(v)
            except CXRConfigError as e:
                raise CXRConfigError(f"--{name}: {e}") from None

        if not 0.0 <= self.lsr_low <= self.lsr_high <= 1.0:
            raise CXRConfigError(f"--lsr-low/--lsr-high must satisfy 0 <= low <= high <= 1; got "
                                 f"{self.lsr_low}, {self.lsr_high}")
        return UncertaintyPolicy(uncertain=flag("base-policy", parse_policy, policy),
                                 lsr_range=(self.lsr_low, self.lsr_high),
                                 blank=flag("blank", parse_blank, self.blank),
                                 blank_weight=flag("blank-weight", parse_blank_weight, self.blank_weight),
                                 seed=self.seed)

    def check_labels(self, names) -> None:
        """Per-label options (``--base-policy``, ``--blank``, ``--blank-weight``) name real labels."""
        from cxr_tf.noisy.uncertainty import UncertaintyPolicy

        pol = self.uncertainty_policy(self.base_policy)
        for flag, field in (("base-policy", "uncertain"), ("blank", "blank"), ("blank-weight", "blank_weight")):
            try:
                UncertaintyPolicy(**{field: getattr(pol, field)}).resolve(names)
            except CXRConfigError as e:
                raise CXRConfigError(f"--{flag}: {e}") from None


# ------------------------------------------------------------------------------ data
def load_data(cfg: ChexpertNoisyConfig):
    """The labelled multi-label images: CheXpert layout or NIH layout (harmonised names)."""
    from cxr_tf.datasets.chexpert import _DATASET_DIRS, load_chexpert
    from cxr_tf.datasets.nih import HARMONIZATION, harmonize, load_nih

    root = cfg.data_dir or os.path.join(os.environ.get("CXR_DATA_DIR", ""), "nih_chestxray14")
    root = Path(root)
    if not root.exists():
        raise CXRConfigError(f"no data: pass --data-dir (CheXpert or NIH layout); {root} does not exist")
    if any((root / d).is_dir() for d in _DATASET_DIRS) or root.name in _DATASET_DIRS:
        return load_chexpert(root, split="train", missing="drop"), "chexpert"
    image_dir = cfg.image_dir or (root / "nih1000_64" if (root / "nih1000_64").is_dir() else root)
    labels = root / "labels" if (root / "labels").is_dir() else root
    ds = load_nih(labels, image_dir)
    names = [HARMONIZATION[n] for n in ds.class_names]
    ds = harmonize(ds, names=names)
    lo = np.max(ds.labels[:, [names.index(HARMONIZATION.get(n, n)) for n in NIH_LUNG_OPACITY_FROM]], axis=1)
    from cxr_tf.datasets.contract import CXRDataset

    ds = CXRDataset(ds.items, np.concatenate([ds.labels, lo[:, None]], 1), names + ["Lung Opacity"], ds.meta,
                    ds.name, multilabel=True)
    return ds, "nih"


def decode_all(ds, image_size: int) -> np.ndarray:
    """Every image decoded once (project preprocessing), as float32 (N, S, S, 1)."""
    from cxr_tf.data import image_dataset

    return np.stack([x.numpy() for x, _ in image_dataset(ds, image_size)])


def inject_noise(clean: np.ndarray, names, uncertain_rates: dict, flip_rate: float, seed: int = 0,
                 positive_bias: float = 1.0) -> np.ndarray:
    """Clean 0/1 labels -> noisy raw labels with ``-1`` entries and flips.

    For label ``j``, ``round(rate_j * N)`` entries are hidden as ``-1`` (drawn at random,
    a true positive ``positive_bias`` times as likely as a negative); then a fraction
    ``flip_rate`` of the remaining entries of every label is flipped 0 <-> 1.
    """
    rng = np.random.default_rng(seed)
    y = np.array(clean, np.float32, copy=True)
    n = len(y)
    for j, name in enumerate(names):
        k = int(round(uncertain_rates[name] * n))
        if k:
            p = np.where(clean[:, j] == 1, positive_bias, 1.0)
            hide = rng.choice(n, size=min(k, n), replace=False, p=p / p.sum())
            y[hide, j] = -1.0
        rest = np.flatnonzero(y[:, j] != -1)
        flip = rest[rng.uniform(size=len(rest)) < flip_rate]
        y[flip, j] = 1.0 - y[flip, j]
    return y


def uncertain_rates_for(names, chexpert_csv: str | None) -> tuple[dict, str]:
    """Per-label "-1" rate measured in CheXpert train.csv (frontal); labels CheXpert lacks
    take the mean rate over CheXpert's labels."""
    from cxr_tf.datasets.chexpert import label_rates

    path = chexpert_csv or os.path.join(os.environ.get("CXR_DATA_DIR", ""), "chexpert_labels",
                                        "chexpert_train.csv.gz")
    if not os.path.isfile(path):
        raise CXRConfigError(f"noise study needs the CheXpert train.csv for the uncertain rates: {path} not found "
                             "(--chexpert-csv)")
    r = label_rates(path)["uncertain"]
    mean = float(r.drop("No Finding").mean())
    return {n: float(r[n]) if n in r.index else mean for n in names}, path


# ---------------------------------------------------------------------------- methods
@dataclasses.dataclass
class Method:
    """One row of the table: a model and the ideas it trains with."""

    name: str
    model: str
    policy: str = "ignore"
    hierarchy: bool = False
    mixup: bool = False
    mentor: float = 0.0  # MentorNet threshold (0 = off)
    relabel: bool = False


def default_methods(cfg: ChexpertNoisyConfig, has_uncertain: bool) -> list[Method]:
    h, p = cfg.hybrid, cfg.base_policy
    rows = []
    if cfg.study == "compare":
        rows += [Method(m, m, p) for m in cfg.models.split(",") if m]
    if has_uncertain:
        rows += [Method(f"{h} U-{q}", h, q) for q in ("ignore", "zeros", "ones", "lsr")]
    elif cfg.study == "compare" and h not in cfg.models.split(","):
        rows.append(Method(h, h, p))
    rows += [
        Method(f"{h} + hierarchy", h, p, hierarchy=True),
        Method(f"{h} + mixup", h, p, mixup=True),
        Method(f"{h} + MentorNet 0.3", h, p, mentor=0.3),
        Method(f"{h} + MentorNet 0.5", h, p, mentor=0.5),
        Method(f"{h} + relabel", h, p, relabel=True),
    ]
    if cfg.study == "noise":
        rows.insert(0, Method(f"{h} clean labels (reference)", h, "ignore"))
    return rows


def select_methods(cfg, has_uncertain: bool) -> list[Method]:
    rows = default_methods(cfg, has_uncertain)
    if cfg.methods == "default":
        return rows
    want = [m.strip() for m in cfg.methods.split(",") if m.strip()]
    byname = {m.name: m for m in rows}
    missing = [w for w in want if w not in byname]
    if missing:
        raise CXRConfigError(f"unknown methods {missing}; available: {list(byname)}")
    return [byname[w] for w in want]


# --------------------------------------------------------------------------- training
def _mean_auc(y: np.ndarray, p: np.ndarray, cols) -> float:
    from sklearn.metrics import roc_auc_score

    vals = []
    for j in cols:
        m = ~np.isnan(y[:, j])
        if 0 < y[m, j].sum() < m.sum():
            vals.append(roc_auc_score(y[m, j], p[m, j]))
    return float(np.mean(vals)) if vals else float("nan")


def train_method(cfg, method: Method, names, x, raw_train, idx, y_clean, hierarchy, eval_cols, log, cell=None,
                 strategy=None):
    """Train one method; returns (val probs, test probs, info).

    ``cell``: the method's folder (a :class:`~cxr_tf.training.sweep.CellRun`): every epoch
    is committed there (``backup/``: weights with the optimizer, the best-so-far score and
    weights, the per-epoch history), so a killed training resumes at its last committed
    epoch; the relabelling phase has its own folder ``<cell>/relabel``. Without ``cell``
    the training keeps everything in memory (the same numbers). Under ``--strategy
    multi_worker`` (``strategy``) each phase is the shared custom loop
    (:func:`cxr_tf.training.distributed.fit_distributed`) with the best epoch by the same
    validation mean AUC.
    """
    import contextlib

    import keras
    import tensorflow as tf

    from cxr_tf.models import build_model
    from cxr_tf.noisy.losses import (
        MaskedBinaryCrossentropy,
        MentorNetBinaryCrossentropy,
    )
    from cxr_tf.noisy.methods import (
        conditional_weights,
        derive_parent_labels,
        freeze_all_but,
        hierarchical_probabilities,
        make_masked_mixup,
        relabel,
    )
    from cxr_tf.noisy.uncertainty import pack
    from cxr_tf.training.resume import EpochProgress

    multi = strategy is not None and getattr(cfg, "strategy", None) == "multi_worker"
    scope = strategy.scope if multi else contextlib.nullcontext
    keras.utils.set_random_seed(cfg.seed)
    tr, va, te = idx
    raw = derive_parent_labels(raw_train, names, hierarchy) if method.hierarchy else raw_train
    t, w = cfg.uncertainty_policy(method.policy).apply(raw, names)
    if method.hierarchy:
        w = conditional_weights(t, w, names, hierarchy)
    with scope():
        model = build_model(method.model, num_classes=len(names), image_size=cfg.image_size, head="gap",
                            freeze_until=0, multilabel=True, class_names=list(names), bn_momentum=cfg.bn_momentum,
                            weights=cfg.init_map().get(method.model))
    loss = MentorNetBinaryCrossentropy(method.mentor, cfg.mentor_weight) if method.mentor else MaskedBinaryCrossentropy()

    def predict(split_idx, raw_outputs=False):
        """Marginal probabilities; ``raw_outputs``: the model's outputs as they are (with the
        hierarchy: ``P(child | parent)`` for children, before consistent inference)."""
        p = np.asarray(model.predict(x[split_idx], batch_size=128, verbose=0))
        return hierarchical_probabilities(p, names, hierarchy) if method.hierarchy and not raw_outputs else p

    def val_score(y, p):
        """The selection score: mean AUC on the clean validation labels (of the marginals)."""
        return _mean_auc(y, hierarchical_probabilities(p, names, hierarchy) if method.hierarchy else p, eval_cols)

    def fit(targets, weights, epochs, lr, folder=None):
        steps = max(1, len(tr) // cfg.batch_size)
        d = tf.data.Dataset.from_tensor_slices((x[tr], pack(targets, weights)))
        d = d.shuffle(len(tr), seed=cfg.seed, reshuffle_each_iteration=True).repeat()
        d = d.batch(cfg.batch_size, drop_remainder=True)
        if method.mixup:
            d = d.map(make_masked_mixup(cfg.mixup_alpha, seed=cfg.seed), num_parallel_calls=1)
        # jit_compile off unless --jit-compile true: XLA compilation of each small model costs more CPU
        # time than it saves here (measured when this study was written)
        with scope():
            model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, jit_compile=bool(cfg.jit_compile))
        if multi:
            return _fit_distributed(cfg, model, d, steps, x[va], y_clean[va], val_score, epochs, folder, strategy)
        progress = EpochProgress(folder, epochs, log) if folder is not None else None
        best, best_w, hist, start = -1.0, None, [], 0
        if progress is not None:
            best, hist, start = progress.restore(model, best, hist)
        for e in range(start, epochs):
            h = model.fit(d, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
            auc = _mean_auc(y_clean[va], predict(va), eval_cols)
            hist.append((float(h.history["loss"][-1]), auc))
            improved = not np.isfinite(auc) or auc > best
            if improved:
                best, best_w = auc, model.get_weights()
            if progress is not None:
                progress.commit(model, e, hist, best, improved)
        if progress is not None:
            best_w = progress.finish(model, best_w)
        model.set_weights(best_w)
        return best, hist

    t0 = time.time()
    best, hist = fit(t, w, cfg.epochs, cfg.lr, cell)
    info = {"val_mean_auc": best, "history": hist, "parameters": model.parameter_counts()}
    if method.relabel:
        out_train = predict(tr, raw_outputs=True)
        if method.hierarchy:
            # children were trained on P(child | parent): relabel them with those outputs,
            # parents and the other labels with their marginals
            p_train = hierarchical_probabilities(out_train, names, hierarchy)
            t2, w2, counts = relabel(raw, t, w, p_train, confident=cfg.relabel_confident, hierarchy=hierarchy,
                                     names=names, conditional_probs=out_train)
        else:
            t2, w2, counts = relabel(raw, t, w, out_train, confident=cfg.relabel_confident)
        if method.hierarchy:
            w2 = conditional_weights(t2, w2, names, hierarchy)
        n_train = freeze_all_but(model)
        from cxr_tf.training.run import RunDir

        best2, hist2 = fit(t2, w2, cfg.relabel_epochs, cfg.lr, RunDir(cell / "relabel") if cell is not None else None)
        info.update(relabel=counts, relabel_trainable=n_train, relabel_history=hist2, val_mean_auc=best2)
    info["seconds"] = round(time.time() - t0, 1)
    log(f"{method.name}: val mean AUC {info['val_mean_auc']:.3f} ({info['seconds']} s)")
    return predict(va), predict(te), info


def _fit_distributed(cfg, model, dataset, steps, x_val, y_val, val_score, epochs, folder, strategy):
    """One training phase under ``--strategy multi_worker``: the shared custom loop, best
    epoch by the validation mean AUC (the same rule as the one-worker loop); every worker
    continues from the best weights. Returns ``(best, [(loss, val mean AUC) per epoch])``."""
    from types import SimpleNamespace

    import tensorflow as tf

    from cxr_tf.training.distributed import Monitor, fit_distributed
    from cxr_tf.training.flow import restore_best

    val = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(128)
    pipes = (SimpleNamespace(dataset=dataset, steps=steps), SimpleNamespace(dataset=val, num_examples=len(x_val)),
             None)
    monitor = Monitor("val_mean_auc", val_score, better=lambda c, b: not np.isfinite(c) or c > b, initial=-1.0)
    history, _ = fit_distributed(cfg, model, None, pipes, folder, strategy, monitor=monitor, classifier=False,
                                 epochs=epochs, patience=0, val_loss=False, best_on_every_worker=True)
    hist = list(zip(history.get("loss", []), history.get("val_mean_auc", [])))
    best = -1.0
    for _, auc in hist:
        if not np.isfinite(auc) or auc > best:
            best = auc
    restore_best(model, folder)
    return float(best), [(float(a), float(b)) for a, b in hist]


def cell_name(method_name: str) -> str:
    """A method's folder name: ``hybrid_tiny + MentorNet 0.3`` -> ``hybrid_tiny_MentorNet_0.3``."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", method_name).strip("_") or "method"


def method_cell(cfg, method: Method, run_dir, strategy, train):
    """One method in its cell folder ``cells/<name>``: reused when finished (``result.json``
    naming the same method, ``predictions.npz``), else ``train(cell)`` -> ``(val probs,
    test probs, info)``, written there (the chief's). Every worker decides from the chief's
    cell, so all of them train the same methods."""
    from cxr_tf.training.distributed import chief_run_dir
    from cxr_tf.training.flow import is_chief, log
    from cxr_tf.training.sweep import CellRun

    cell = CellRun(run_dir, cell_name(method.name))
    done = chief_run_dir(cfg, cell)
    want = dataclasses.asdict(method)
    if (done / "result.json").is_file() and (done / "predictions.npz").is_file():
        res = json.loads((done / "result.json").read_text())
        if res.get("method") == want:
            log(f"{method.name}: done before, reusing {done / 'result.json'}")
            with np.load(done / "predictions.npz") as z:
                return z["val"], z["test"], res["info"]
    pv, pt, info = train(cell)
    # numbers as JSON has them (numpy scalars -> Python), the same whether trained now or reused
    info = json.loads(json.dumps(info, default=lambda v: v.item() if isinstance(v, np.generic) else str(v)))
    if is_chief(cfg):
        np.savez_compressed(cell / "predictions.npz", val=pv, test=pt)
        cell.write_json("result.json", {"method": want, "info": info})  # the commit point: a finished method
        from cxr_tf.training.resume import finish

        finish(cell)
        if (cell / "relabel").is_dir():
            from cxr_tf.training.run import RunDir

            finish(RunDir(cell / "relabel"))
    return pv, pt, info


# ------------------------------------------------------------------------- evaluation
def _auc_matrix(y, p, cols, idx_rows):
    """AUC per (resample, label) via ranks; y (N, L) with NaN, idx_rows (B, N)."""
    from scipy.stats import rankdata

    out = np.full((len(idx_rows), len(cols)), np.nan)
    for k, j in enumerate(cols):
        yy, pp = y[idx_rows, j], p[idx_rows, j]  # (B, N)
        known = ~np.isnan(yy)
        pos = (yy == 1) & known
        neg = (yy == 0) & known
        pp = np.where(known, pp, np.inf)  # unknown entries ranked last, then excluded
        r = rankdata(pp, axis=1)
        npos, nneg = pos.sum(1), neg.sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            # ranks among known entries only: unknowns all sit above every known entry
            a = ((r * pos).sum(1) - npos * (npos + 1) / 2) / (npos * nneg)
        out[:, k] = np.where((npos > 0) & (nneg > 0), a, np.nan)
    return out


def bootstrap_mean_auc(y, probs: dict, cols, baseline: str | None, n_boot: int, seed: int, alpha=0.05):
    """Mean AUC with percentile CIs, and the paired difference to ``baseline`` (same resamples)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(n_boot, len(y)))
    means = {k: np.nanmean(_auc_matrix(y, p, cols, idx), axis=1) for k, p in probs.items()}
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    out = {}
    for k, m in means.items():
        row = {"mean_auc_ci": np.nanpercentile(m, q).tolist()}
        if baseline is not None and k != baseline:
            d = m - means[baseline]
            row["diff_vs_baseline"] = float(np.nanmean(d))
            row["diff_ci"] = np.nanpercentile(d, q).tolist()
            row["p_better"] = float(np.mean(d > 0))
        out[k] = row
    return out


def results_table(y_test, probs: dict, names, cols, cfg, baseline):
    from cxr_tf.evaluation import multilabel_metrics

    boot = bootstrap_mean_auc(y_test, probs, cols, baseline, cfg.n_boot, cfg.seed)
    rows, full = [], {}
    for k, p in probs.items():
        m = multilabel_metrics(y_test, p, names, n_boot=cfg.n_boot, seed=cfg.seed)
        full[k] = m
        aucs = [m["per_label"][names[j]]["auc"]["value"] for j in cols]
        row = {"method": k, "mean_auc": float(np.mean([a for a in aucs if a is not None])),
               "mean_auc_ci_low": boot[k]["mean_auc_ci"][0], "mean_auc_ci_high": boot[k]["mean_auc_ci"][1]}
        if "diff_vs_baseline" in boot[k]:
            row.update(diff_vs_baseline=boot[k]["diff_vs_baseline"], diff_ci_low=boot[k]["diff_ci"][0],
                       diff_ci_high=boot[k]["diff_ci"][1])
        for j, n in enumerate(names):
            row[n] = m["per_label"][n]["auc"]["value"]
        rows.append(row)
    return pd.DataFrame(rows), full


def markdown(df: pd.DataFrame, names, cols, n_pos: dict, baseline) -> str:
    used = [names[j] for j in cols]
    head = "| method | mean AUC [95% CI] | vs " + (baseline or "-") + " [95% CI] | " + " | ".join(
        f"{n} ({n_pos[n]})" for n in used) + " |"
    lines = [head, "|" + "---|" * (3 + len(used))]
    for _, r in df.iterrows():
        diff = (f"{r['diff_vs_baseline']:+.3f} [{r['diff_ci_low']:+.3f}, {r['diff_ci_high']:+.3f}]"
                if "diff_vs_baseline" in r and pd.notna(r.get("diff_vs_baseline")) else "")
        cells = [f"{r[n]:.3f}" if pd.notna(r[n]) else "-" for n in used]
        lines.append(f"| {r['method']} | {r['mean_auc']:.3f} [{r['mean_auc_ci_low']:.3f}, {r['mean_auc_ci_high']:.3f}]"
                     f" | {diff} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------- run
def run(cfg: ChexpertNoisyConfig) -> dict:
    from cxr_tf.training import flow as common

    t0 = time.time()
    strategy = common.setup_runtime(cfg)
    from cxr_tf.datasets import patient_split, save_splits
    from cxr_tf.datasets.splits import split_summary
    from cxr_tf.noisy.methods import restrict_hierarchy
    from cxr_tf.training.run import create_run_dir

    # A re-run of the same command (or --run-dir DIR) reopens the run: finished methods
    # are reused (cells/<method>/result.json), an interrupted one resumes at its last epoch.
    run_dir = create_run_dir(cfg, reuse=True)
    common.log(f"run folder: {run_dir}" + (" (resuming: same config as before; finished methods are reused)"
                                           if run_dir.reused else ""))
    ds, layout = load_data(cfg)
    ds = common.take_subset(cfg, ds)  # --max-images / --fraction: whole patients
    names = ds.class_names
    cfg.check_labels(names)  # per-label --base-policy / --blank / --blank-weight name real labels
    fr = common.parse_split(cfg.split)
    split = patient_split(ds, fr, seed=cfg.seed)
    save_splits(run_dir / "splits.csv", ds, split)
    split_summary(ds, split).to_csv(run_dir / "split_summary.csv", index=False)
    idx = tuple(np.flatnonzero(split == s) for s in ("train", "val", "test"))
    common.log(f"{layout}: {len(ds)} images, {ds.meta['patient_id'].nunique()} patients; "
               f"train/val/test {[len(i) for i in idx]} (by patient)")
    t = time.time()
    x = decode_all(ds, cfg.image_size)
    common.log(f"decoded {len(x)} images at {cfg.image_size} px in {time.time() - t:.1f}s")

    # Evaluation labels: uncertain -> unknown (radiologist-labelled val/test have none in CheXpert).
    y_eval = np.where(ds.labels == -1, np.nan, ds.labels).astype(np.float32)
    raw_train = ds.labels[idx[0]]
    noise = None
    if cfg.study == "noise":
        if layout != "nih" and np.any(ds.labels == -1):
            raise CXRConfigError("the noise study needs clean labels (NIH layout); CheXpert training labels are already noisy")
        rates, src = uncertain_rates_for(names, cfg.chexpert_csv)
        raw_train = inject_noise(ds.labels[idx[0]], names, rates, cfg.flip_rate, cfg.seed, cfg.uncertain_positive_bias)
        clean = ds.labels[idx[0]]
        noise = {"rates_source": src, "uncertain_rates": rates, "flip_rate": cfg.flip_rate,
                 "hidden_fraction": {n: float(np.mean(raw_train[:, j] == -1)) for j, n in enumerate(names)},
                 "hidden_positive_fraction": float(np.mean(clean[raw_train == -1] == 1)) if (raw_train == -1).any() else None,
                 "flipped_fraction": float(np.mean((raw_train != -1) & (raw_train != clean)))}
        run_dir.write_json("noise.json", noise)
        common.log(f"noise: {noise['hidden_positive_fraction']} of hidden entries are true positives; "
                   f"{noise['flipped_fraction']:.3f} of entries flipped")
    has_unc = bool(np.any(raw_train == -1))
    test_pos = {n: int(np.nansum(y_eval[idx[2], j] == 1)) for j, n in enumerate(names)}
    cols = [j for j, n in enumerate(names) if test_pos[n] >= cfg.min_test_positives
            and np.sum(y_eval[idx[2], j] == 0) >= cfg.min_test_positives]
    if not cols:
        raise CXRConfigError(f"no label has >= {cfg.min_test_positives} test positives; lower --min-test-positives")
    hierarchy = restrict_hierarchy(names)
    common.log(f"labels in the mean AUC ({len(cols)}): {[names[j] for j in cols]}; hierarchy {hierarchy}")

    methods = select_methods(cfg, has_unc)
    probs_val, probs, infos = {}, {}, {}
    for m in methods:
        raw = ds.labels[idx[0]] if m.name.endswith("(reference)") else raw_train
        pv, pt, info = method_cell(cfg, m, run_dir, strategy, lambda cell, m=m, raw=raw: train_method(
            cfg, m, names, x, raw, idx, y_eval, hierarchy, cols, common.log, cell=cell, strategy=strategy))
        probs_val[m.name], probs[m.name], infos[m.name] = pv, pt, info
    if not common.is_chief(cfg):  # a non-chief worker trains only; the chief writes the results
        common.log("worker done (training); the chief writes the results")
        return {"study": cfg.study, "chief": False, "wall_seconds": round(time.time() - t0, 1)}
    if cfg.study == "noise":
        baseline = next((m.name for m in methods if m.policy == "ignore" and not (m.hierarchy or m.mixup or m.mentor
                         or m.relabel) and not m.name.endswith("(reference)")), None)
    else:
        baseline = next((m.name for m in methods if m.model == "resnet50"), methods[0].name)
    df, full = results_table(y_eval[idx[2]], probs, names, cols, cfg, baseline)
    df.insert(1, "val_mean_auc", [infos[k]["val_mean_auc"] for k in df["method"]])
    df.insert(2, "train_seconds", [infos[k]["seconds"] for k in df["method"]])
    df.to_csv(run_dir / f"results_{cfg.study}.csv", index=False)
    md = markdown(df, names, cols, test_pos, baseline)
    (run_dir / f"results_{cfg.study}.md").write_text(md)
    np.savez_compressed(run_dir / "test_predictions.npz", y=y_eval[idx[2]], **{k: v for k, v in probs.items()})
    summary = {"study": cfg.study, "layout": layout, "n_images": len(ds), "labels": names,
               "mean_auc_labels": [names[j] for j in cols], "test_positives": test_pos, "hierarchy": hierarchy,
               "baseline": baseline, "noise": noise, "methods": {m.name: dataclasses.asdict(m) for m in methods},
               "train_info": infos, "per_method": full, "table": df.to_dict(orient="records"),
               "wall_seconds": round(time.time() - t0, 1)}
    run_dir.write_json("metrics.json", summary)
    common.log("\n" + md)
    common.log(f"wall {summary['wall_seconds']} s; results in {run_dir}")
    return summary


def parse(argv=None) -> ChexpertNoisyConfig:
    return parse_config(ChexpertNoisyConfig, argv, description=__doc__.split("\n")[0])


def main(argv=None) -> int:
    from cxr_tf.errors import run_main

    return run_main(lambda: run(parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
