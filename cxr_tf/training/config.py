"""Config-as-code: dataclasses with paper defaults, CLI overrides and ``--smoke``.

An experiment defines a dataclass (subclassing :class:`TrainConfig`) whose
defaults reproduce its paper's setting, plus a ``smoke()`` method that shrinks it
for tests. :func:`parse_config` turns every field into a ``--flag`` so there is one
config mechanism for every experiment (big_vision / Model Garden style).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from typing import Any, Sequence

from cxr_tf.errors import CXRConfigError


def opt(default: Any, help: str) -> Any:
    """A config field with its one-line ``--help`` text (shown with the default)."""
    return dataclasses.field(default=default, metadata={"help": help})


#: ``--precision`` values: Keras dtype policies (cxr_tf.training.precision).
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


# ---- config sections ---------------------------------------------------------------------
# Each field is defined once, in one section, with its help text; an experiment's config
# combines sections and only changes defaults (``lr: float = 1e-3``) or adds its own fields.
# ``--help`` lists the flags grouped by section (build_parser).


@dataclasses.dataclass
class RuntimeConfig:
    """Where and how a run executes: folders, resume, devices, precision, logging."""

    SECTION = "runtime"
    experiment: str = opt("train", "experiment name: runs go to <runs-dir>/<experiment>/")
    seed: int = opt(0, "seed for the split, the subset, shuffling and initialisation")
    strategy: str = opt("auto", "distribution: auto | default | mirrored | multi_worker (TF_CONFIG)")
    cpu_devices: int = opt(0, ">1: MirroredStrategy over this many logical CPU devices (testing)")
    deterministic: bool = opt(False, "bit-reproducible TF ops (slower)")
    precision: str = opt("float32", "Keras dtype policy: float32 | mixed_float16 (GPUs with tensor cores; loss "
                                    "scaling added) | mixed_bfloat16 (TPUs, recent GPUs and CPUs); outputs, "
                                    "loss and the export stay float32")
    runs_dir: str = opt("runs", "parent folder of run folders")
    run_dir: str | None = opt(None, "use (or resume) exactly this run folder")
    resume: bool = opt(False, "resume the newest unfinished run of this experiment with the same config")
    smoke: bool = opt(False, "shrink everything for a quick test run (explicit flags still win)")
    quiet: bool = opt(False, "print warnings and errors only (no progress lines, no Keras epoch lines)")
    verbose: bool = opt(False, "print debugging messages too")


@dataclasses.dataclass
class DataConfig:
    """What the model sees: the data, its checks, the patient-level split and the input pipeline."""

    SECTION = "data"
    data_dir: str | None = opt(None, "dataset folder, CSV manifest or .npz (none: the embedded synthetic CXRs)")
    format: str = opt("auto", "dataset layout: auto | kermany | folder | csv | npz (auto prints what it detected)")
    image_size: int = opt(224, "input side in pixels (images are resized to a square)")
    split: str = opt("8:1:1", "train:val:test fractions by patient, or a saved splits.csv to reuse")
    max_images: int = opt(0, "train on at most N images: whole patients, stratified by class (0: all)")
    fraction: float = opt(0.0, "train on about this share (0-1] of the images: whole patients, stratified "
                               "by class (0: all)")
    augment: str = opt("s2", "augmentation: none | light | moderate | s2 | strong, extras with + (s2+clahe+mixup)")
    balance: str = opt("oversample", "class imbalance: none | oversample | class_weight")
    on_error: str = opt("raise", "unreadable image files: raise (stop) | skip (listed in skipped.csv)")
    duplicate_audit: bool = opt(True, "near-duplicate audit of the split (duplicates.csv/.png/.json in the run)")
    dedupe: bool = opt(False, "drop near-duplicate copies after splitting (one kept per group, train preferred)")
    duplicate_threshold: int = opt(36, "near-duplicate pHash Hamming distance (of 256 bits)")
    cache_dir: str | None = opt(None, "folder for decoded DICOM caches (default: ~/.cache/cxr_tf/decoded)")


@dataclasses.dataclass
class OptimizerConfig:
    """Optimizer and learning-rate schedule (seeds 003/004: Adam lr 1e-4; seed 002: SGD with
    momentum and exponential decay). Also what :func:`cxr_tf.training.loop.make_optimizer` takes."""

    SECTION = "optimisation"
    optimizer: str = opt("adam", "optimizer: adam | adamw | sgd")
    lr: float = opt(1e-4, "peak learning rate")
    momentum: float = opt(0.9, "SGD momentum (--optimizer sgd)")
    weight_decay: float = opt(1e-4, "decoupled weight decay (--optimizer adamw)")
    schedule: str = opt("constant", "learning-rate schedule: constant | exponential | cosine")
    decay_rate: float = opt(0.9, "exponential schedule: lr * decay_rate ** epoch")
    warmup_epochs: int = opt(0, "cosine schedule: linear warm-up epochs")
    jit_compile: bool | None = opt(None, "XLA-compile the train/predict steps: true | false (default: Keras' "
                                         "auto, XLA where every layer supports it and a GPU is present)")


@dataclasses.dataclass
class OptimisationConfig(OptimizerConfig):
    """How long the weights are fitted, with which optimizer (:class:`OptimizerConfig`)."""

    SECTION = "optimisation"

    batch_size: int = opt(32, "images per training step (global, across devices)")
    epochs: int = opt(20, "maximum training epochs")
    label_smoothing: float = opt(0.0, "label smoothing of the cross-entropy loss")
    early_stopping: int = opt(5, "stop after this many epochs without validation improvement (0: off)")


@dataclasses.dataclass
class EvaluationConfig:
    """How the held-out splits are scored: calibration, operating points."""

    SECTION = "evaluation"
    calibrate: bool = opt(True, "fit temperature scaling on the validation split; exports serve calibrated "
                                "probabilities (ECE before/after in calibration.json)")
    operating_rule: str = opt("youden", "operating point per class, chosen on validation: youden | "
                                        "sensitivity:T | specificity:T")


@dataclasses.dataclass
class NormConfig:
    """BatchNorm of any model an experiment builds."""

    SECTION = "model"
    bn_momentum: float = opt(0.99, "BatchNorm moving-average momentum (Keras default 0.99)")


@dataclasses.dataclass
class HeadConfig(NormConfig):
    """A classifier's head and how much of its trunk trains."""

    SECTION = "model"
    freeze_until: str = opt("0", "freeze backbone layers before this index or layer name (0: train all)")
    head: str = opt("fc256-128", "classifier head: gap | fc256-128 (GAP-Dense(256)-Dense(128), the seed's extra FC)")
    dropout: float = opt(0.0, "dropout before the output layer")


@dataclasses.dataclass
class TrunkConfig(HeadConfig):
    """A classifier's trunk weights too (for experiments that build several backbones, e.g. a
    model zoo)."""

    SECTION = "model"
    weights: str = opt("none", "backbone weights: none (from scratch) | imagenet (needs a download) | PATH | "
                       "preset:NAME | run:DIR | ssl:DIR | https://...#sha256=...")
    allow_random_frozen: bool = opt(False, "allow --freeze-until > 0 with --weights none (freezes random layers)")


@dataclasses.dataclass
class ModelConfig(TrunkConfig):
    """The classifier: one backbone from the registry, plus its trunk and head settings."""

    SECTION = "model"
    backbone: str = opt("resnet50", "model registry name (resnet50, resnet18, densenet121, mobilenet_v2, tiny_cnn, "
                        "unet_cbam_encoder_d3w16, ...)")


@dataclasses.dataclass
class ExportDirConfig:
    """Where SavedModel exports go."""

    SECTION = "export"
    saved_models_dir: str = opt("saved_models", "where SavedModel exports are written")


@dataclasses.dataclass
class ExportConfig(ExportDirConfig):
    """The SavedModel for TF Serving written after training (verified against the Keras model)."""

    SECTION = "export"
    export: bool = opt(True, "export a SavedModel for TF Serving after training")
    export_name: str = opt("", "export folder name under --saved-models-dir (empty: named after the task)")


@dataclasses.dataclass
class TrainConfig(RuntimeConfig, EvaluationConfig, OptimisationConfig, DataConfig):
    """The sections every training experiment has (data, optimisation, evaluation, runtime);
    each field is a CLI flag. Classifier experiments add :class:`ModelConfig` and
    :class:`ExportConfig` (see :class:`cxr_tf.training.task.ClassifierConfig`)."""

    def optimizer_config(self) -> OptimizerConfig:
        return OptimizerConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(OptimizerConfig)})

    def apply_smoke(self) -> None:
        """Shrink for tests and CI (subclasses extend)."""
        self.epochs = min(self.epochs, 2)
        self.image_size = min(self.image_size, 64)
        self.batch_size = min(self.batch_size, 16)
        self.early_stopping = 0

    def validate(self) -> None:
        checks = {
            "balance": ("none", "oversample", "class_weight"),
            "optimizer": ("adam", "adamw", "sgd"),
            "schedule": ("constant", "exponential", "cosine"),
            "strategy": ("auto", "default", "mirrored", "multi_worker"),
            "on_error": ("raise", "skip"),
            "precision": PRECISIONS,
        }
        for field, allowed in checks.items():
            if getattr(self, field) not in allowed:
                raise CXRConfigError(f"--{field.replace('_', '-')} must be one of {allowed}; got {getattr(self, field)!r}")
        for field in ("image_size", "batch_size", "epochs"):
            if getattr(self, field) < 1:
                raise CXRConfigError(f"--{field.replace('_', '-')} must be >= 1; got {getattr(self, field)}")
        if self.lr <= 0:
            raise CXRConfigError(f"--lr must be > 0; got {self.lr}")
        if self.max_images < 0:
            raise CXRConfigError(f"--max-images must be >= 0; got {self.max_images}")
        if not 0 <= self.fraction <= 1:
            raise CXRConfigError(f"--fraction must be in (0, 1]; got {self.fraction}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _field_type(cls, f: dataclasses.Field):
    hints = typing.get_type_hints(cls)
    t = hints[f.name]
    args = [a for a in typing.get_args(t) if a is not type(None)]
    return args[0] if args else t


def _parse_bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "on"):
        return True
    if v.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {v!r}")


def field_help(cls, name: str) -> str | None:
    """The help text of field ``name``: a subclass that only changes a default
    (``image_size: int = 64``) keeps the help of the class that defined the field."""
    for base in cls.__mro__:
        if dataclasses.is_dataclass(base):
            f = {g.name: g for g in dataclasses.fields(base)}.get(name)
            if f is not None and f.metadata.get("help"):
                return f.metadata["help"]
    return None


def field_section(cls, name: str) -> str:
    """The section (``data``, ``model``, ``optimisation``, ...) that defines field ``name``;
    a field an experiment adds itself belongs to the experiment."""
    for base in reversed(cls.__mro__):  # the most basic class that has the field defined it
        if dataclasses.is_dataclass(base) and name in base.__dataclass_fields__:
            return base.__dict__.get("SECTION", "experiment")
    return "experiment"


#: The order of the sections in ``--help``.
SECTIONS = ("experiment", "data", "model", "optimisation", "evaluation", "export", "runtime")


def build_parser(cls, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one ``--flag`` per dataclass field, grouped by section."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    groups = {}
    for name in SECTIONS:
        title = f"{getattr(cls, 'experiment', '') or 'experiment'} options" if name == "experiment" else name
        groups[name] = p.add_argument_group(title)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        t = _field_type(cls, f)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_ = field_help(cls, f.name)
        if not help_:  # every flag explains itself (tests/training/test_config_and_run.py checks all)
            raise CXRConfigError(f"{cls.__name__}.{f.name} has no help text: define it with opt(default, help)")
        g = groups[field_section(cls, f.name)]
        if f.name == "smoke":
            g.add_argument(flag, action="store_true", help=help_)
        elif t is bool:
            g.add_argument(flag, type=_parse_bool, nargs="?", const=True, default=default, metavar="BOOL", help=help_)
        else:
            g.add_argument(flag, type=t if t in (int, float, str) else str, default=default, help=help_)
    return p


def parse_config(cls, argv: Sequence[str] | None = None, description: str | None = None):
    """Parse CLI flags into ``cls``; ``--smoke`` shrinks, explicit flags still win.

    ``cfg.given`` holds the names of the fields set on the command line (not a field:
    it is not saved, so it never changes which runs match on resume).
    """
    parser = build_parser(cls, description)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    cfg = cls(**vars(args))
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    explicit = {a.dest for a in parser._actions if given & set(a.option_strings)}
    cfg.given = frozenset(explicit)
    if cfg.smoke:
        cfg.apply_smoke()
        for k in explicit:
            setattr(cfg, k, getattr(args, k))
    cfg.validate()
    if hasattr(cfg, "quiet"):  # --quiet / --verbose: the cxr_tf loggers' level (cxr_tf.log)
        from cxr_tf.log import set_verbosity

        set_verbosity(cfg.quiet, cfg.verbose)
    return cfg
