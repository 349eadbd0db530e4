"""covid_ssl_compare and deep_covid through the shared trainer: a SIGKILLed run resumes
when the same command is run again, and ``--strategy multi_worker`` runs on two local
workers (TF_CONFIG) with only the chief writing results.

Smoke size on the real COVID data (``CXR_DATA_DIR``; skipped without it): tiny CNN, one
model per run. Each model of these experiments is one resumable cell, ``cells/<model>/``
(deep_covid's trunk pretraining in ``cells/<model>/pretrain/``).
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from _rel_helpers import env, experiment_cmd, history_rows, kill_when, start_experiment, run_two_workers

pytestmark = pytest.mark.slow

#: covid_ssl_compare: tiny CNN, 30 images per class (smoke), 4 epochs of 9 steps at 64 px.
COMPARE = ["--smoke", "--models", "tiny_cnn", "--epochs", "4", "--seed", "3"]
#: deep_covid: tiny CNN trunk pretrained 3 epochs on 96 Kermany images, head 3 epochs, no export.
DEEP = ["--smoke", "--models", "tiny_cnn", "--pretrain-epochs", "3", "--pretrain-images", "96",
        "--export-models", "none"]


def _epochs(folder: Path) -> list[int]:
    return [int(r["epoch"]) for r in history_rows(folder)]


def _committed(folder: Path) -> bool:
    """At least one epoch written to history.csv and committed in the resume backup."""
    return len(history_rows(folder)) >= 1 and (folder / "backup" / "state.json").is_file()


def _only_run(runs: Path, experiment: str) -> Path:
    found = sorted((runs / experiment).iterdir())
    assert len(found) == 1, found  # the re-run reopened the killed run's folder, made no new one
    return found[0]


def _kill_and_rerun(tmp_path: Path, module: str, args: list, ready) -> tuple[Path, str]:
    """Start ``module``, SIGKILL it when ``ready(run folder)``, run the same command again."""
    runs = tmp_path / "runs"
    args = [*args, "--runs-dir", runs]

    def ready_any():
        base = runs / module
        return base.is_dir() and any(ready(p) for p in base.iterdir())

    proc = start_experiment(args, tmp_path, tmp_path / "first.log", module=module)
    kill_when(proc, ready_any, timeout=150)
    run = _only_run(runs, module)
    assert not (run / "metrics.json").exists()
    p = subprocess.run(experiment_cmd(*args, module=module), cwd=tmp_path, env=env(), capture_output=True, text=True,
                       timeout=240)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    assert _only_run(runs, module) == run
    return run, out


def test_covid_ssl_compare_resumes_after_sigkill(tmp_path, data_dir):
    def ready(run):
        cell = run / "cells" / "tiny_cnn"
        return _committed(cell) and not (cell / "result.json").exists()

    run, out = _kill_and_rerun(tmp_path, "covid_ssl_compare", [*COMPARE, "--data-dir", data_dir], ready)
    assert "reopened: same config as before" in out
    assert "resuming" in out and "epochs done" in out, out[-3000:]
    cell = run / "cells" / "tiny_cnn"
    assert _epochs(cell) == [0, 1, 2, 3]  # every epoch once: none lost, none duplicated
    assert _epochs(run / "tiny_cnn") == [0, 1, 2, 3]  # the copy beside the model's metrics
    assert (cell / "result.json").is_file() and not (cell / "backup").exists()  # finished: backup dropped
    m = json.loads((run / "metrics.json").read_text())
    assert m["models"] == ["tiny_cnn"] and 0 <= m["results"]["tiny_cnn"]["averaged_accuracy"] <= 1
    assert (run / "tiny_cnn" / "metrics.json").is_file() and (run / "comparison.md").is_file()

    # the same command once more: the finished model is reused, nothing trains
    p = subprocess.run(experiment_cmd(*COMPARE, "--data-dir", data_dir, "--runs-dir", tmp_path / "runs",
                                      module="covid_ssl_compare"), cwd=tmp_path, env=env(), capture_output=True,
                       text=True, timeout=240)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    assert "tiny_cnn: finished before, reusing" in p.stdout and "Epoch 1/" not in p.stdout
    assert _epochs(cell) == [0, 1, 2, 3]


def test_deep_covid_resumes_after_sigkill(tmp_path, data_dir):
    def ready(run):  # killed in the trunk pretraining, after its first committed epoch
        return _committed(run / "cells" / "tiny_cnn" / "pretrain")

    run, out = _kill_and_rerun(tmp_path, "deep_covid", [*DEEP, "--data-dir", data_dir,
                                                        "--saved-models-dir", tmp_path / "sm"], ready)
    assert "reopened: same config as before" in out
    assert "resuming" in out and "epochs done" in out, out[-3000:]
    cell = run / "cells" / "tiny_cnn"
    assert _epochs(cell / "pretrain") == [0, 1, 2]  # trunk pretraining: every epoch once
    assert _epochs(cell) == [0, 1, 2]  # the head on cached features (smoke: 3 epochs)
    assert (run / "trunks" / "tiny_cnn.keras").is_file() and (run / "trunks" / "tiny_cnn.json").is_file()
    assert not (cell / "pretrain" / "backup").exists() and not (cell / "backup").exists()
    m = json.loads((run / "metrics.json").read_text())
    row = m["summary"][0]
    assert row["model"] == "tiny_cnn" and 1 <= row["head_best_epoch"] <= 3
    assert row["pretrain_epochs"] == 3 and row["assembled_vs_cached_max_diff"] < 1e-4
    assert (run / "deep_covid.md").is_file() and (run / "tiny_cnn" / "threshold_sweep.csv").is_file()


def _two_workers(tmp_path: Path, module: str, args: list) -> tuple[Path, list[str]]:
    run = tmp_path / "run"
    return run, run_two_workers(module, args, tmp_path, run)


def _no_metrics(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name in ("metrics.json", "result.json", "comparison.md",
                                                        "deep_covid.md")]


def test_covid_ssl_compare_two_workers(tmp_path, data_dir):
    run, (chief, other) = _two_workers(tmp_path, "covid_ssl_compare",
                                       [*COMPARE, "--epochs", "2", "--image-size", "32", "--data-dir", data_dir])
    assert "2 replicas" in chief and "2 replicas" in other  # the multi-worker loop trained the model
    assert (run / "metrics.json").is_file() and (run / "comparison.md").is_file()
    assert (run / "tiny_cnn" / "metrics.json").is_file() and (run / "cells" / "tiny_cnn" / "result.json").is_file()
    assert _epochs(run / "cells" / "tiny_cnn") == [0, 1]
    worker = run / ".workers" / "worker-1"
    assert worker.is_dir() and _no_metrics(worker) == []  # the non-chief trained and wrote no results
    assert "the chief writes the comparison" in other


def test_deep_covid_two_workers(tmp_path, data_dir):
    run, (chief, other) = _two_workers(tmp_path, "deep_covid", [*DEEP, "--pretrain-epochs", "2", "--data-dir",
                                                                data_dir, "--saved-models-dir", tmp_path / "sm"])
    assert "2 replicas" in chief and "2 replicas" in other  # the trunk pretraining ran on both workers
    assert (run / "metrics.json").is_file() and (run / "deep_covid.md").is_file()
    assert (run / "trunks" / "tiny_cnn.keras").is_file()
    assert _epochs(run / "cells" / "tiny_cnn" / "pretrain") == [0, 1]
    assert _epochs(run / "cells" / "tiny_cnn") == [0, 1, 2]  # the head: the chief's alone
    worker = run / ".workers" / "worker-1"
    assert worker.is_dir() and _no_metrics(worker) == []
    assert not (worker / "trunks" / "tiny_cnn.keras").exists()
    assert "the chief writes the report" in other
