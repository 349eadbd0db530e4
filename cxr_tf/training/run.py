"""The run folder: one per run, everything in it.

``runs/<experiment>/<UTC timestamp>/``: ``config.json``, ``splits.csv``,
``tensorboard/``, ``checkpoints/``, ``backup/`` (BackupAndRestore), ``history.csv``,
``metrics.json``, ``report.md``, ``plots/``, ``skipped.csv``, ``environment.json``.
A run is finished when ``metrics.json`` exists; ``--resume`` picks the newest
unfinished run whose config matches. Sweeps (many cells in one run) call
:func:`create_run_dir` with ``reuse=True``: a plain re-run then reopens the newest run
of the same experiment with the same config (finished or not), so its finished cells
are reused.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import sys
from pathlib import Path

from cxr_tf.errors import FAILURE_HOOKS, CXRConfigError

logger = logging.getLogger("cxr_tf.training")

# Config fields that do not change what is computed, so a resumed run may differ in them.
_RESUME_IGNORED = {"resume", "run_dir", "runs_dir", "on_error", "cache_dir", "quiet", "verbose"}


class RunDir:
    """Paths inside one run folder."""

    reused = False  # set by create_run_dir: the folder existed with this config before

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        for sub in ("tensorboard", "checkpoints", "plots"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    def __str__(self) -> str:
        return str(self.path)

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def backup(self) -> Path:
        return self.path / "backup"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    @property
    def finished(self) -> bool:
        return (self.path / "metrics.json").exists()

    def write_json(self, name: str, obj) -> Path:
        from cxr_tf.io.atomic import write_json_atomic

        return write_json_atomic(self.path / name, obj, indent=2, default=str)


def _timestamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _new_run_path(base: Path) -> Path:
    stamp = _timestamp()
    path, k = base / stamp, 1
    while path.exists():  # two runs in the same second
        path, k = base / f"{stamp}-{k}", k + 1
    return path


def _comparable(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in _RESUME_IGNORED}


def matching_runs(cfg, unfinished_only: bool = False) -> list[Path]:
    """Run folders of ``cfg.experiment`` under ``cfg.runs_dir`` whose saved config equals
    ``cfg`` (up to the fields in ``_RESUME_IGNORED``), oldest first."""
    base = Path(cfg.runs_dir) / cfg.experiment
    if not base.is_dir():
        return []
    want = _comparable(cfg.to_dict())
    out = []
    for p in sorted(base.iterdir()):  # timestamped names: oldest first
        f = p / "config.json"
        if not f.is_file() or (unfinished_only and (p / "metrics.json").exists()):
            continue
        try:
            saved = json.loads(f.read_text())
        except (OSError, ValueError):  # a half-written or foreign file: not a match
            continue
        if isinstance(saved, dict) and _comparable(saved) == want:
            out.append(p)
    return out


def create_run_dir(cfg, reuse: bool = False) -> RunDir:
    """A new run folder, or the one to resume (``cfg.run_dir`` / ``cfg.resume``).

    ``reuse=True`` (sweeps): without ``--run-dir`` / ``--resume``, the newest run of the
    experiment with the same config, finished or not, is reopened instead of a new one.
    ``run.reused`` says whether the folder existed with this config before.
    """
    d = cfg.to_dict()
    if cfg.run_dir:
        run = RunDir(cfg.run_dir)
        old = run.path / "config.json"
        if old.exists() and _comparable(json.loads(old.read_text())) != _comparable(d):
            raise CXRConfigError(f"{run.path}: exists with a different config; choose another --run-dir")
    elif cfg.resume or reuse:
        match = matching_runs(cfg, unfinished_only=bool(cfg.resume))
        run = RunDir(match[-1]) if match else RunDir(_new_run_path(Path(cfg.runs_dir) / cfg.experiment))
    else:
        run = RunDir(_new_run_path(Path(cfg.runs_dir) / cfg.experiment))
    run.reused = (run.path / "config.json").exists()
    run.write_json("config.json", d)
    run.write_json("environment.json", environment())
    if not run.reused:
        _created.append(run.path)
    return run


#: Run folders this process created (not reopened): candidates for removal on failure.
_created: list[Path] = []


def trained_anything(path: str | os.PathLike) -> bool:
    """Whether a run folder holds any result of training: a history row, a checkpoint,
    a resume state, a saved model or metrics (of the run or of a sweep cell)."""
    path = Path(path)
    for p in path.rglob("*"):
        if p.name == "history.csv" and p.is_file() and len(p.read_text().splitlines()) > 1:
            return True
        if p.is_file() and (p.name.endswith((".weights.h5", ".keras")) or p.name in ("state.json", "metrics.json",
                                                                                       "result.json")):
            return True
    return False


def discard_untrained_runs() -> list[Path]:
    """After a failed start (e.g. ``--weights imagenet`` offline): remove the run folders
    this process created in which nothing was trained, so no empty run is left behind
    for ``--resume`` or a reader of ``runs/`` to trip over. Returns the removed folders."""
    import shutil

    removed = []
    while _created:
        p = _created.pop()
        if p.is_dir() and not trained_anything(p):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
            try:  # runs/<experiment>/ too when this was its only run
                p.parent.rmdir()
            except OSError:
                pass
    if removed:
        logger.warning("nothing was trained: removed the run folder %s", ", ".join(map(str, removed)))
    return removed


if discard_untrained_runs not in FAILURE_HOOKS:
    FAILURE_HOOKS.append(discard_untrained_runs)


def environment() -> dict:
    import numpy as np
    import tensorflow as tf
    import keras

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "argv": sys.argv,
    }
