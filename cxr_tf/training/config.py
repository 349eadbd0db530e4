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


@dataclasses.dataclass
class OptimizerConfig:
    """Optimizer and learning-rate schedule.

    Seeds 003/004: Adam lr 1e-4. Seed 002: SGD with momentum and exponential decay.
    """

    optimizer: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-4
    momentum: float = 0.9  # sgd
    weight_decay: float = 1e-4  # adamw
    schedule: str = "constant"  # constant | exponential | cosine
    decay_rate: float = 0.9  # exponential: lr * decay_rate ** epoch
    warmup_epochs: int = 0  # cosine


@dataclasses.dataclass
class TrainConfig:
    """Fields shared by every training experiment (each is a CLI flag)."""

    experiment: str = "train"
    data_dir: str | None = None
    format: str = "auto"
    image_size: int = 224
    batch_size: int = 32
    epochs: int = 20
    seed: int = 0
    split: str = "8:1:1"  # fractions train:val:test by patient, or a splits.csv path
    augment: str = "s2"
    balance: str = "oversample"  # none | oversample | class_weight
    optimizer: str = "adam"
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "constant"
    decay_rate: float = 0.9
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    early_stopping: int = 5  # patience in epochs; 0 disables
    strategy: str = "auto"  # auto | default | mirrored | multi_worker
    cpu_devices: int = 0  # >1: MirroredStrategy over this many logical CPU devices
    deterministic: bool = False
    on_error: str = "raise"  # raise | skip
    duplicate_audit: bool = True  # near-duplicate audit of the split (duplicates.csv/.png/.json in the run)
    dedupe: bool = False  # drop near-duplicate copies after splitting (one kept per group, train preferred)
    duplicate_threshold: int = 36  # pHash Hamming distance of 256 bits (cxr_tf.datasets.duplicates)
    runs_dir: str = "runs"
    run_dir: str | None = None  # reuse/resume this folder
    resume: bool = False  # resume the newest unfinished run of this experiment
    cache_dir: str | None = None
    smoke: bool = False

    def optimizer_config(self) -> OptimizerConfig:
        return OptimizerConfig(
            optimizer=self.optimizer, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
            schedule=self.schedule, decay_rate=self.decay_rate, warmup_epochs=self.warmup_epochs,
        )

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
        }
        for field, allowed in checks.items():
            if getattr(self, field) not in allowed:
                raise CXRConfigError(f"--{field.replace('_', '-')} must be one of {allowed}; got {getattr(self, field)!r}")
        for field in ("image_size", "batch_size", "epochs"):
            if getattr(self, field) < 1:
                raise CXRConfigError(f"--{field.replace('_', '-')} must be >= 1; got {getattr(self, field)}")
        if self.lr <= 0:
            raise CXRConfigError(f"--lr must be > 0; got {self.lr}")

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


def build_parser(cls, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one ``--flag`` per dataclass field."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        t = _field_type(cls, f)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if f.name == "smoke":
            p.add_argument(flag, action="store_true", help="shrink everything for a quick test run")
        elif t is bool:
            p.add_argument(flag, type=_parse_bool, nargs="?", const=True, default=default, metavar="BOOL")
        else:
            p.add_argument(flag, type=t if t in (int, float, str) else str, default=default)
    return p


def parse_config(cls, argv: Sequence[str] | None = None, description: str | None = None):
    """Parse CLI flags into ``cls``; ``--smoke`` shrinks, explicit flags still win."""
    parser = build_parser(cls, description)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    cfg = cls(**vars(args))
    if cfg.smoke:
        given = {a.split("=")[0] for a in argv if a.startswith("--")}
        explicit = {a.dest for a in parser._actions if given & set(a.option_strings)}
        cfg.apply_smoke()
        for k in explicit:
            setattr(cfg, k, getattr(args, k))
    cfg.validate()
    return cfg
