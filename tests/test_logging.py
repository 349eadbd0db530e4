"""Logging: one format through the package loggers, --quiet/--verbose, and no TensorFlow
start-up lines on stderr (measured in subprocesses, as a user starts the programs)."""
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cxr_tf.log import TF_STARTUP_NOISE, _filtered_stderr_import, set_verbosity

ROOT = Path(__file__).resolve().parents[1]
NOISE = ("absl::InitializeLog", "oneDNN custom operations", "cudart_stub", "Could not find cuda drivers",
         "port.cc:", "cpu_feature_guard")


def _run(args, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user's shell has it
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=ROOT)


def _assert_quiet_stderr(stderr: str):
    bad = [l for l in stderr.splitlines() if any(n in l for n in NOISE)]
    assert not bad, bad


@pytest.fixture
def restore_level():
    yield
    set_verbosity()


def test_one_format_stdout_info_stderr_warnings(capsys, restore_level):
    logging.getLogger("cxr_tf.training").info("epoch 1 done")
    logging.getLogger("cxr_tf.export").warning("warning: something")
    logging.getLogger("cxr_tf.training").debug("hidden at the default level")
    out, err = capsys.readouterr()
    assert out == "[cxr_tf] epoch 1 done\n" and err == "[cxr_tf] warning: something\n"
    set_verbosity(quiet=True)
    logging.getLogger("cxr_tf.experiments").info("progress")
    logging.getLogger("cxr_tf.experiments").warning("warning: kept")
    out, err = capsys.readouterr()
    assert out == "" and "kept" in err
    set_verbosity(verbose=True)
    logging.getLogger("cxr_tf.training").debug("details")
    assert capsys.readouterr().out == "[cxr_tf] details\n"


def test_import_filter_drops_only_the_startup_lines(capfd):
    lines = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796421607.342020    4314 port.cc:153] oneDNN custom operations are on. You may see ...",
        "I0000 00:00:1796421607.342375    4314 cudart_stub.cc:31] Could not find cuda drivers on your machine.",
        "a real error message",
    ]

    def noisy_import(module):
        os.write(2, ("\n".join(lines) + "\n").encode())

    _filtered_stderr_import(noisy_import, None)
    assert capfd.readouterr().err == "a real error message\n"
    assert all(TF_STARTUP_NOISE.search(l) for l in lines[:3])


def test_help_and_smoke_run_have_no_tensorflow_startup_lines(tmp_path):
    r = _run(["-m", "cxr_tf.experiments.pneumonia_freeze", "--help"])
    assert r.returncode == 0 and "--quiet" in r.stdout and "--precision" in r.stdout
    _assert_quiet_stderr(r.stderr)
    r = _run(["-m", "cxr_tf.experiments.pneumonia_freeze", "--smoke", "--backbone", "tiny_cnn", "--freeze-until",
              "0", "--epochs", "1", "--export", "false", "--runs-dir", str(tmp_path / "runs")])
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_quiet_stderr(r.stderr)
    assert "[cxr_tf] run folder:" in r.stdout and "[cxr_tf] TensorBoard:" in r.stdout
    r = _run(["-m", "cxr_tf.cli", "--quiet", "train", "pneumonia_freeze", "--smoke", "--backbone", "tiny_cnn",
              "--freeze-until", "0", "--epochs", "1", "--export", "false", "--runs-dir", str(tmp_path / "runs2")])
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_quiet_stderr(r.stderr)
    assert "[cxr_tf]" not in r.stdout and "Epoch 1/1" not in r.stdout  # --quiet: no progress, no epoch lines
