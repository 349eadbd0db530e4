"""Every experiment on the classifier task layer survives SIGKILL and runs on 2 workers.

freeze_depth, augmentation_ablation and batch_lr_grid train their cells through
``cxr_tf.training.sweep`` and train_preset through ``cxr_tf.training.task.ClassifierTask``
(pneumonia_freeze itself: test_resume.py and test_multi_worker.py). Two checks each, at
smoke size:

* SIGKILL once the first training has committed an epoch, then the same command with
  ``--run-dir``: the run says it resumed, carries on in the same folder, and ends with
  every cell's history complete (each epoch once) and its results written;
* two worker processes on 127.0.0.1 (``--strategy multi_worker``, TF_CONFIG): both exit 0,
  both train on 2 replicas with the same all-reduced losses, and the chief's folder holds
  the results.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from _rel_helpers import env, experiment_cmd, history_rows, kill_when, start_experiment, run_two_workers

DATA = Path(os.environ["CXR_DATA_DIR"]) if os.environ.get("CXR_DATA_DIR") else None

TINY = ["--smoke", "--backbone", "tiny_cnn", "--image-size", "32", "--seed", "3"]
# module -> (args, epochs per training, the results file the finished run writes)
EXPERIMENTS = {
    "freeze_depth": ([*TINY, "--freeze-points", "0,2", "--allow-random-frozen", "--weights", "none",
                      "--synthetic-n", "48", "--epochs", "3"], 3, "freeze_depth.csv"),
    "augmentation_ablation": ([*TINY, "--cases", "1,4", "--folds", "2", "--synthetic-n", "60", "--epochs", "3"], 3,
                              "metrics.json"),
    "batch_lr_grid": ([*TINY, "--batches", "8", "--lrs", "1e-3,3e-3", "--synthetic-n", "60", "--epochs", "3"], 3,
                      "metrics.json"),
    "train_preset": (["--smoke", "--max-images", "90", "--epochs", "3", "--export", "false", "--external", ""], 3,
                     "metrics.json"),
}


def _args(module: str, tmp_path: Path) -> list:
    args = list(EXPERIMENTS[module][0])
    if module == "train_preset":
        if DATA is None or not (DATA / "kermany224").is_dir():
            pytest.skip("train_preset needs CXR_DATA_DIR (kermany224, nih1000_64, covid_ieee8023)")
        args += ["--data-dir", DATA, "--preset-out", tmp_path / "presets", "--preset-name", "rel_preset",
                 "--cache-dir", tmp_path / "cache"]
    return args


def _trainings(run: Path) -> list[Path]:
    """The folders holding one training's history.csv: the cells of a sweep, else the run."""
    cells = sorted(p for p in (run / "cells").glob("*") if p.is_dir())
    return cells or [run]


@pytest.mark.slow
@pytest.mark.parametrize("module", list(EXPERIMENTS))
def test_killed_experiment_resumes_in_the_same_folder(module, tmp_path):
    args, epochs, result = EXPERIMENTS[module][0], EXPERIMENTS[module][1], EXPERIMENTS[module][2]
    args = _args(module, tmp_path)
    run = tmp_path / "run"
    proc = start_experiment([*args, "--run-dir", run], tmp_path, tmp_path / "first.log", module=module)

    def one_epoch_committed():
        return any(len(history_rows(t)) >= 1 and (t / "backup" / "state.json").is_file() for t in _trainings(run))

    kill_when(proc, one_epoch_committed, timeout=240)
    assert not (run / result).exists()
    first = (tmp_path / "first.log").read_text()

    p = subprocess.run(experiment_cmd(*args, "--run-dir", run, module=module), cwd=tmp_path, env=env(),
                       capture_output=True, text=True, timeout=600)
    out = p.stdout + p.stderr
    assert p.returncode == 0, (first[-2000:], out[-4000:])
    m = re.search(rf"resuming .*: (\d+) of {epochs} epochs done", out)
    assert m and 1 <= int(m.group(1)) <= epochs, out[-3000:]
    assert (run / result).is_file()
    for t in _trainings(run):  # every training complete, each epoch exactly once
        assert [int(r["epoch"]) for r in history_rows(t)] == list(range(epochs)), t
        assert not (t / "backup").exists()  # finished: the resume backup is dropped
    if (run / "cells").is_dir():
        assert all((t / "result.json").is_file() for t in _trainings(run))


@pytest.mark.slow
@pytest.mark.parametrize("module", list(EXPERIMENTS))
def test_experiment_runs_on_two_workers(module, tmp_path):
    args = _args(module, tmp_path)
    run = tmp_path / "run"
    texts = run_two_workers(module, args, tmp_path, run, timeout=600)
    losses = [re.findall(r"epoch \d+/\d+ \(2 replicas\): .*?loss: ([0-9.]+)", t) for t in texts]
    assert losses[0] and losses[0] == losses[1]  # both trained every epoch of every training together
    assert (run / EXPERIMENTS[module][2]).is_file()  # the chief's results in the run folder
    worker = run / ".workers" / "worker-1"
    assert worker.is_dir() and json.loads((worker / "config.json").read_text())["strategy"] == "multi_worker"
