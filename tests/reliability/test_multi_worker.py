"""``--strategy multi_worker``: two worker processes on 127.0.0.1 driven by TF_CONFIG.

Keras 3 ``model.fit`` fails under MultiWorkerMirroredStrategy (FACTS.md), so the
experiment runs the custom loop of :mod:`cxr_tf.training.distributed`.

Measured (tiny CNN, 32 px, Adam 3e-3, global batch 8 = 2 x 4, 6 steps per epoch,
TF 2.21 CPU, --deterministic): every global batch is the same images on 1 and 2
workers (checked per step), and the per-step losses agree to ~1e-7 until float
summation order (all-reduced gradients, synchronized BatchNorm sums) is amplified by
Adam: epoch-mean loss relative differences 7e-8, 4e-5, 9e-4 over 3 epochs (seed 3;
3e-7 for all 3 with seed 0). For scale, leaving BatchNorm unsynchronized (per-replica
statistics, a real semantic difference) gives 1.4e-2 in the first epoch. Asserted:
1e-4 on the first epoch, 5e-3 on every epoch. A 2-worker job SIGKILLed after its
first checkpoint and restarted ended within 1e-5 (relative) of the uninterrupted
2-worker job (checked by an earlier, slower version of this test); the test here kills
and restarts a 2-worker job and compares its whole curve with the 1-worker run.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from _rel_helpers import (TINY, env, experiment_cmd, free_ports, history_matrix, history_rows, kill_when,
                          tf_config)

EPOCHS = 3
ARGS = [*TINY, "--epochs", EPOCHS, "--strategy", "multi_worker", "--deterministic"]


def _start_job(n, run, cwd, extra=()):
    import subprocess

    ports = free_ports(n)
    procs = []
    for i in range(n):
        log = open(cwd / f"{run.name}.worker{i}.log", "a")
        procs.append(subprocess.Popen(experiment_cmd(*ARGS, "--run-dir", run, *extra), cwd=cwd, stdout=log,
                                      stderr=subprocess.STDOUT, env=env(TF_CONFIG=tf_config(ports, i))))
    return procs


def _wait(procs, cwd, run, timeout=240):
    rcs = [p.wait(timeout=timeout) for p in procs]
    logs = [(cwd / f"{run.name}.worker{i}.log").read_text() for i in range(len(procs))]
    assert rcs == [0] * len(procs), "\n\n".join(log[-3000:] for log in logs)
    return logs


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory):
    """The yardstick: the same job on ONE worker (same global batch, same custom loop)."""
    cwd = tmp_path_factory.mktemp("mw1")
    run = cwd / "run"
    _wait(_start_job(1, run, cwd, ["--export", "false"]), cwd, run)
    return run


def test_two_workers_killed_restarted_and_matching_one_worker(one_worker, tmp_path):
    """Two workers train; both are SIGKILLed after the first checkpoint; the same command
    restarted on both resumes from it, both finish, and the loss curve is the 1-worker one."""
    run = tmp_path / "run"
    extra = ["--saved-models-dir", tmp_path / "saved_models"]
    procs = _start_job(2, run, tmp_path, extra)
    # the checkpoint counts once CheckpointManager has also written its "checkpoint" state file
    # (the ckpt-*.index appears first; a kill between the two restarts from scratch, correctly)
    kill_when(procs, lambda: len(history_rows(run)) >= 1 and (run / "backup" / "checkpoint").is_file()
              and list((run / "backup").glob("ckpt-*.index")))
    assert not (run / "metrics.json").exists()

    logs = _wait(_start_job(2, run, tmp_path, extra), tmp_path, run)
    logs = [log.split("run folder:")[-1] for log in logs]  # the restarted job's part
    for log in logs:  # both workers trained on 2 replicas and logged the same (all-reduced) losses
        assert "'replicas': 2" in log and "CollectiveAllReduceStrategy" in log
    losses = [re.findall(r"epoch \d+/\d+ \(2 replicas\): .*?loss: ([0-9.]+)", log) for log in logs]
    assert losses[0] and losses[0] == losses[1]
    found = [re.findall(rf"resuming .*: (\d+) of {EPOCHS} epochs done", log) for log in logs]
    assert found[0] and found[0] == found[1], logs[0][-2000:]
    start = int(found[0][0])
    assert 1 <= start < EPOCHS and len(losses[0]) == EPOCHS - start  # nothing before the checkpoint redone

    e1, h1 = history_matrix(one_worker)
    e2, h2 = history_matrix(run)
    assert e1 == e2 == list(range(EPOCHS))
    # First epoch: float summation order only. Later epochs: Adam amplifies those last-bit
    # differences (sign-like steps on near-zero gradients), still far below a real error.
    assert _rel(h2["loss"][:1], h1["loss"][:1]) <= 1e-4, (h2["loss"], h1["loss"])
    assert _rel(h2["loss"], h1["loss"]) <= 5e-3, (h2["loss"], h1["loss"])
    assert _rel(h2["val_loss"], h1["val_loss"]) <= 5e-3, (h2["val_loss"], h1["val_loss"])

    # only the chief wrote the run folder and the export; the worker used .workers/worker-1
    m = json.loads((run / "metrics.json").read_text())
    assert m["epochs_run"] == EPOCHS and (run / "checkpoints" / "best.weights.h5").is_file()
    assert m["export"] and (Path(m["export"]["path"]) / "saved_model.pb").is_file()
    versions = [p.name for p in (tmp_path / "saved_models" / "pneumonia_3class_tiny_cnn").iterdir() if p.name.isdigit()]
    assert versions == ["1"]  # one export (the chief's), not one per worker
    worker = run / ".workers" / "worker-1"
    assert json.loads((worker / "config.json").read_text())["export"] is False
    assert (worker / "history.csv").is_file() and not (worker / "metrics.json").exists()  # stopped after training
    assert not (run / "backup").exists()  # finished: the tf.train checkpoint is dropped
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard" / "train"), size_guidance={"tensors": 0})
    acc.Reload()
    assert sorted({e.step for e in acc.Tensors("epoch_loss")}) == list(range(EPOCHS))


def test_multi_worker_needs_tf_config_and_run_dir(tmp_path, capsys):
    import os

    from cxr_tf.experiments import pneumonia_freeze
    from cxr_tf.training.distributed import configure_worker, is_chief, task_info

    old = os.environ.pop("TF_CONFIG", None)
    try:
        assert pneumonia_freeze.main([*map(str, TINY), "--strategy", "multi_worker", "--runs-dir",
                                      str(tmp_path)]) == 2
        assert "needs TF_CONFIG" in capsys.readouterr().err
        for bad, msg in (("{not json", "not valid JSON"), ('{"cluster": []}', 'needs "cluster" and "task"')):
            os.environ["TF_CONFIG"] = bad
            assert pneumonia_freeze.main([*map(str, TINY), "--strategy", "multi_worker", "--run-dir",
                                          str(tmp_path / "r")]) == 2
            err = capsys.readouterr().err
            assert msg in err and "Traceback" not in err
        os.environ["TF_CONFIG"] = tf_config([1, 2], 1)
        assert task_info() == ("worker", 1, 2) and not is_chief()

        class Cfg:
            run_dir, export = None, True
        from cxr_tf.errors import CXRConfigError

        with pytest.raises(CXRConfigError, match="needs --run-dir"):
            configure_worker(Cfg())
        c = Cfg()
        c.run_dir = str(tmp_path / "r")
        configure_worker(c)
        assert c.run_dir.endswith(".workers/worker-1") and c.export is False
    finally:
        os.environ.pop("TF_CONFIG", None)
        if old is not None:
            os.environ["TF_CONFIG"] = old
