"""ssl_pretrain, ssl_finetune and chexpert_noisy through the shared trainer: each resumes
after SIGKILL, and each runs on two workers (``--strategy multi_worker``, TF_CONFIG on
127.0.0.1) with only the chief writing the results.

Smoke-sized: synthetic CXRs (ssl_*) and a small subset of the real NIH images
(chexpert_noisy, skipped without ``$CXR_DATA_DIR/nih_chestxray14/nih1000_64``).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from _rel_helpers import history_rows, kill_when, run_experiment, run_two_workers, start_experiment

pytestmark = pytest.mark.slow

RESUMED = r"resuming .*: (\d+) of (\d+) epochs done"


def _state_epoch(backup: Path) -> int:
    try:
        return int(json.loads((backup / "state.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def _epochs(run: Path) -> list[int]:
    return [int(r["epoch"]) for r in history_rows(run)]


def _kill_and_resume(module, args, tmp_path, folder, epochs):
    """Start, SIGKILL once ``folder`` committed an epoch (training unfinished), run the same
    command again: returns its output and the epoch it resumed from."""
    proc = start_experiment(args, tmp_path, tmp_path / "first.log", module=module)
    kill_when(proc, lambda: 1 <= _state_epoch(folder / "backup") < epochs, timeout=150, poll=0.02)
    p = run_experiment(args, tmp_path, timeout=200, module=module)
    out = p.stdout + p.stderr
    m = re.search(RESUMED, out)
    assert m, out[-3000:]
    assert 1 <= int(m.group(1)) < epochs and int(m.group(2)) == epochs
    return out, int(m.group(1))


def _two_workers(module, args, tmp_path, run, timeout=240):
    for t in run_two_workers(module, args, tmp_path, run, timeout=timeout):
        assert "CollectiveAllReduceStrategy" in t and "(2 replicas)" in t
    return run / ".workers" / "worker-1"


# ------------------------------------------------------------------------ ssl_pretrain
PRE = ["--smoke", "--epochs", 4, "--seed", 1, "--deterministic"]


def test_ssl_pretrain_resumes_after_sigkill(tmp_path):
    """Killed after a committed epoch, run again: it resumes there and ends with the
    uninterrupted run's per-epoch history (the input stream is replayed: exact)."""
    run = tmp_path / "run"
    _kill_and_resume("ssl_pretrain", [*PRE, "--run-dir", run], tmp_path, run, 4)
    assert _epochs(run) == list(range(4))  # every epoch once
    run_experiment([*PRE, "--run-dir", tmp_path / "reference"], tmp_path, module="ssl_pretrain")
    assert history_rows(run) == history_rows(tmp_path / "reference")
    m = json.loads((run / "metrics.json").read_text())
    assert m["epochs_done"] == 4 and 0 <= m["val_ssim_restored"] <= 1
    assert (run / "report.md").is_file() and (run / "ssl_encoder" / "encoder.weights.h5").is_file()
    assert not (run / "backup").exists()


def test_ssl_pretrain_two_workers(tmp_path):
    run = tmp_path / "run"
    worker = _two_workers("ssl_pretrain", ["--smoke", "--epochs", 2], tmp_path, run)
    assert _epochs(run) == [0, 1] and "val_ssim" in history_rows(run)[0]
    assert (run / "metrics.json").is_file() and (run / "report.md").is_file()
    assert (run / "ssl_encoder" / "ssl_encoder.json").is_file()
    assert not (worker / "metrics.json").exists() and not (worker / "report.md").exists()
    assert not (worker / "ssl_encoder").exists()


# ------------------------------------------------------------------------ ssl_finetune
FT = ["--smoke", "--arms", "scratch", "--fractions", "0.5,1.0", "--epochs", 5]


def test_ssl_finetune_resumes_after_sigkill(tmp_path):
    run = tmp_path / "run"
    point = run / "frac1_scratch"  # the second point: the first is finished when the kill comes
    out, _ = _kill_and_resume("ssl_finetune", [*FT, "--run-dir", run], tmp_path, point, 5)
    assert "done before, reusing" in out  # the finished point is not trained again
    for p in ("frac0.5_scratch", "frac1_scratch"):
        assert _epochs(run / p) == list(range(5)), p
        assert (run / p / "metrics.json").is_file() and not (run / p / "backup").exists()
    assert len((run / "results.csv").read_text().splitlines()) == 1 + 2
    assert (run / "metrics.json").is_file() and (run / "results.md").is_file()


def test_ssl_finetune_two_workers(tmp_path):
    run = tmp_path / "run"
    worker = _two_workers("ssl_finetune", ["--smoke", "--arms", "scratch", "--fractions", "1.0", "--epochs", 2],
                          tmp_path, run)
    assert _epochs(run / "frac1_scratch") == [0, 1]
    assert (run / "metrics.json").is_file() and (run / "results.md").is_file()
    assert (run / "frac1_scratch" / "metrics.json").is_file()
    assert not (worker / "metrics.json").exists() and not (worker / "results.csv").exists()
    assert not (worker / "frac1_scratch" / "metrics.json").exists()


# ---------------------------------------------------------------------- chexpert_noisy
def _nih():
    root = Path(os.environ.get("CXR_DATA_DIR", "")) / "nih_chestxray14"
    if not (root / "nih1000_64").is_dir():
        pytest.skip("nih1000_64 not present")


CN = ["--smoke", "--study", "compare", "--methods", "vit_tiny,hybrid_tiny", "--max-images", "96"]


def test_chexpert_noisy_resumes_after_sigkill(tmp_path):
    _nih()
    run = tmp_path / "run"
    cell = run / "cells" / "hybrid_tiny"
    out, _ = _kill_and_resume("chexpert_noisy", [*CN, "--epochs", 4, "--run-dir", run], tmp_path, cell, 4)
    assert "vit_tiny: done before, reusing" in out  # the finished method is not trained again
    for c in ("vit_tiny", "hybrid_tiny"):
        assert _epochs(run / "cells" / c) == list(range(4)), c
        assert (run / "cells" / c / "result.json").is_file() and not (run / "cells" / c / "backup").exists()
    m = json.loads((run / "metrics.json").read_text())
    assert [len(m["train_info"][k]["history"]) for k in ("vit_tiny", "hybrid_tiny")] == [4, 4]
    assert (run / "results_compare.csv").is_file() and (run / "results_compare.md").is_file()


def test_chexpert_noisy_two_workers(tmp_path):
    _nih()
    run = tmp_path / "run"
    worker = _two_workers("chexpert_noisy", [*CN, "--methods", "hybrid_tiny + relabel", "--epochs", 2], tmp_path,
                          run)
    cell = run / "cells" / "hybrid_tiny_relabel"
    assert _epochs(cell) == [0, 1] and _epochs(cell / "relabel") == [0]
    m = json.loads((run / "metrics.json").read_text())
    info = m["train_info"]["hybrid_tiny + relabel"]
    assert len(info["history"]) == 2 and len(info["relabel_history"]) == 1
    assert (run / "results_compare.md").is_file()
    assert not (worker / "metrics.json").exists() and not (worker / "results_compare.csv").exists()
