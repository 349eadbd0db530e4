"""A killed run resumes; the same seed gives the same result.

Measured (TF 2.21 CPU, Keras 3.15, tiny CNN): with ``--deterministic`` two runs give
bit-identical history.csv, best weights and metrics.json (timings aside), and a run
SIGKILLed mid-training and restarted ends bit-identical to the uninterrupted run
(weights, optimizer, callback state, history and the replayed input stream are all
restored). So the tolerance asserted here is zero.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from _rel_helpers import (TINY, h5_arrays, history_matrix, history_rows, kill_when, metric_values, run_experiment,
                          start_experiment)

EPOCHS = 4
ARGS = [*TINY, "--epochs", EPOCHS, "--export", "false", "--deterministic"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted deterministic run: the yardstick of every test here."""
    root = tmp_path_factory.mktemp("reference")
    run_experiment([*ARGS, "--run-dir", root / "run"], cwd=root)
    return root / "run"


def _assert_same_run(a, b):
    ea, ha = history_matrix(a)
    eb, hb = history_matrix(b)
    assert ea == eb == list(range(EPOCHS))
    assert ha == hb  # exact: every logged float of every epoch
    wa, wb = h5_arrays(a / "checkpoints" / "best.weights.h5"), h5_arrays(b / "checkpoints" / "best.weights.h5")
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert metric_values(a) == metric_values(b)
    assert (a / "splits.csv").read_text() == (b / "splits.csv").read_text()


def test_same_seed_deterministic_runs_are_identical(reference, tmp_path):
    run_experiment([*ARGS, "--run-dir", tmp_path / "again"], cwd=tmp_path)
    _assert_same_run(reference, tmp_path / "again")
    assert metric_values(reference)["epochs_run"] == EPOCHS


def test_sigkill_mid_training_then_same_command_resumes(reference, tmp_path):
    run = tmp_path / "run"
    argv = [*ARGS, "--run-dir", run]
    proc = start_experiment(argv, tmp_path, tmp_path / "killed.log")
    kill_when(proc, lambda: len(history_rows(run)) >= 2)
    done_at_kill = len(history_rows(run))
    assert (run / "backup" / "state.json").is_file() and not (run / "metrics.json").exists()

    out = run_experiment(argv, cwd=tmp_path).stdout
    m = re.search(r"resuming .*: (\d+) of (\d+) epochs done", out)
    assert m, out[-2000:]
    resumed_from = int(m.group(1))
    assert done_at_kill - 1 <= resumed_from <= done_at_kill  # at most one epoch redone
    assert f"Epoch {resumed_from + 1}/{EPOCHS}" in out and "Epoch 1/" not in out
    _assert_same_run(reference, run)
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["epochs_run"] == EPOCHS
    assert not (run / "backup").exists()  # a finished run drops its backup


def test_resume_flag_finds_run_killed_after_training(reference, tmp_path):
    """Killed during evaluation/export: ``--resume`` picks the unfinished run and does not retrain."""
    runs = tmp_path / "runs"
    proc = start_experiment([*ARGS, "--runs-dir", runs], tmp_path, tmp_path / "killed.log")

    def training_finished():
        states = list(runs.glob("pneumonia_freeze/*/backup/state.json"))
        return bool(states) and json.loads(states[0].read_text() or "{}").get("complete", False)

    kill_when(proc, training_finished)
    [run] = list((runs / "pneumonia_freeze").iterdir())
    assert not (run / "metrics.json").exists()

    out = run_experiment([*ARGS, "--runs-dir", runs, "--resume"], cwd=tmp_path).stdout
    assert f"run folder: {run.relative_to(tmp_path)}" in out or f"run folder: {run}" in out
    assert f"{EPOCHS} of {EPOCHS} epochs done (training had finished)" in out
    assert "Epoch " not in out  # no epoch trained again
    assert [p.name for p in (runs / "pneumonia_freeze").iterdir()] == [run.name]  # no new run folder
    _assert_same_run(reference, run)


def test_history_truncation_and_state_files(tmp_path):
    """Unit level: the CSV keeps one row per committed epoch; a broken state is a named error."""
    from cxr_tf.errors import CXRInputError
    from cxr_tf.training.resume import read_history_csv, read_state, truncate_history_csv

    h = tmp_path / "history.csv"
    h.write_text("epoch,loss\n0,1.0\n1,0.9\n2,0.8\n1,0.95\n")  # epoch 1 redone after a kill
    assert truncate_history_csv(h, 2) == 2
    assert read_history_csv(h) == {"loss": [1.0, 0.9]}
    (tmp_path / "backup").mkdir()
    assert read_state(tmp_path / "backup") is None
    (tmp_path / "backup" / "state.json").write_text("{not json")
    with pytest.raises(CXRInputError, match="state.json: unreadable resume state"):
        read_state(tmp_path / "backup")
    (tmp_path / "backup" / "state.json").write_text('{"epoch": 3, "weights": "epoch-0003.weights.h5"}')
    with pytest.raises(CXRInputError, match="missing"):
        read_state(tmp_path / "backup")
