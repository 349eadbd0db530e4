"""Logging: one logger per package, one format, and a quiet TensorFlow start-up.

Every package logs through ``logging.getLogger("cxr_tf.<package>")`` (``cxr_tf.experiments``,
``cxr_tf.training``, ...). They all propagate to the ``cxr_tf`` logger, which has one handler
with one format, ``[cxr_tf] <message>``: progress (INFO) goes to stdout, warnings and errors
to stderr, as the prints before did. ``--quiet`` shows warnings and errors only, ``--verbose``
adds DEBUG (:func:`set_verbosity`). An application that embeds cxr_tf and configures logging
itself can drop the handler: ``logging.getLogger("cxr_tf").handlers.clear()`` and set
``propagate = True``.

TensorFlow's start-up lines (``WARNING: All log messages before absl::InitializeLog() ...``,
``oneDNN custom operations are on ...``, ``Could not find cuda drivers ...``) come from C++
absl logging while its shared libraries load. Before ``absl::InitializeLog()`` absl writes
every message to stderr whatever ``TF_CPP_MIN_LOG_LEVEL``, ``GLOG_minloglevel`` or
``ABSL_MIN_LOG_LEVEL`` say (measured with TensorFlow 2.21: none of them removes a line;
abseil-cpp PR #1957 proposes the fix), so no environment variable can stop them. Nor is
``TF_ENABLE_ONEDNN_OPTS=0`` used: it would change the numerics to hide a line.
:func:`install_tensorflow_import_filter` therefore catches file descriptor 2 while
``import tensorflow`` runs and writes back every line except those known start-up lines,
so real errors still reach the user. ``CXR_TF_TF_STARTUP_LOGS=1`` turns the filter off.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile

FORMAT = "[cxr_tf] %(message)s"
ROOT = "cxr_tf"

#: C++ start-up lines of TensorFlow's shared libraries (absl / TSL), matched per line.
TF_STARTUP_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|^[IW]\d{4} [\d:. ]+\s*\d+ (port\.cc|cudart_stub\.cc|cuda_executor\.cc|cpu_feature_guard\.cc"
    r"|cuda_dnn\.cc|cuda_fft\.cc|cuda_blas\.cc|computation_placer\.cc|gpu_device\.cc):\d+\]"
    r"|^E\d{4} [\d:. ]+\s*\d+ (cuda_dnn|cuda_fft|cuda_blas)\.cc:\d+\] Unable to register"
    r"|^E\d{4} [\d:. ]+\s*\d+ cuda_executor\.cc:\d+\] failed call to cuInit"
)


class _StreamByLevel(logging.Handler):
    """INFO and below to ``sys.stdout``, WARNING and above to ``sys.stderr``.

    The stream is looked up at each record (not bound once), so redirected or captured
    streams (pytest's ``capsys``, ``contextlib.redirect_stdout``) receive the lines.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # logging must never break a run
            self.handleError(record)


def install_handler() -> logging.Logger:
    """The ``cxr_tf`` logger with its one handler (idempotent); INFO unless set otherwise."""
    root = logging.getLogger(ROOT)
    if not any(isinstance(h, _StreamByLevel) for h in root.handlers):
        h = _StreamByLevel()
        h.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(h)
        root.propagate = False  # one line per message, whatever the root logger has
        if root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
    return root


def set_verbosity(quiet: bool = False, verbose: bool = False) -> int:
    """``--quiet``: warnings and errors only; ``--verbose``: DEBUG too; else INFO. Returns the level."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    install_handler().setLevel(level)
    return level


def add_verbosity_flags(parser, suppress_defaults: bool = False) -> None:
    """``--quiet`` / ``--verbose`` on an argparse parser (the ``cxr-tf`` CLI and its sub-commands)."""
    import argparse

    default = argparse.SUPPRESS if suppress_defaults else False
    parser.add_argument("--quiet", action="store_true", default=default,
                        help="print warnings and errors only")
    parser.add_argument("--verbose", action="store_true", default=default,
                        help="print debugging messages too")


# --------------------------------------------------------------------------- TensorFlow start-up
def _filtered_stderr_import(exec_module, module) -> None:
    """Run ``exec_module(module)`` with fd 2 caught; write back all but the start-up noise."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real fd 2 (embedded interpreters)
        exec_module(module)
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            exec_module(module)
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not TF_STARTUP_NOISE.search(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        # The module is TensorFlow's own from here on (reloads, introspection).
        module.__loader__ = module.__spec__.loader = self.inner
        _filtered_stderr_import(self.inner.exec_module, module)


class _TensorFlowImportFilter(importlib.abc.MetaPathFinder):
    """Wraps the first ``import tensorflow`` in :func:`_filtered_stderr_import`, then steps aside."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _QuietLoader(spec.loader)
        return spec


def install_tensorflow_import_filter() -> None:
    """Before TensorFlow is imported: ``TF_CPP_MIN_LOG_LEVEL=3`` unless the user set it, and
    the start-up line filter (see the module docstring); no-op once TensorFlow is loaded."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules or os.environ.get("CXR_TF_TF_STARTUP_LOGS", "") not in ("", "0"):
        return
    if not any(isinstance(f, _TensorFlowImportFilter) for f in sys.meta_path):
        sys.meta_path.insert(0, _TensorFlowImportFilter())
