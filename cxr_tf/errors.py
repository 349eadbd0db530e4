"""The project's own error types.

Every failure caused by user input is raised as a subclass of :class:`CXRError`,
with the offending file (when there is one) and a plain-language cause, so a user
never has to read a traceback from deep inside TensorFlow or pydicom.
"""
from __future__ import annotations

import os


class CXRError(Exception):
    """Base class for every error cxr_tf raises on purpose."""


class CXRInputError(CXRError, ValueError):
    """A file or value given by the user cannot be used.

    Args:
        path: the file concerned (``None`` when the problem is not tied to a file).
        cause: what is wrong, in words a user can act on.
    """

    def __init__(self, path: str | os.PathLike | None, cause: str):
        self.path = None if path is None else os.fspath(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}" if self.path else cause)

    def __reduce__(self):  # keep picklable (used across worker processes)
        return (type(self), (self.path, self.cause))


class CXRImageError(CXRInputError):
    """An image file (PNG, JPEG, DICOM, ...) cannot be read or decoded."""


class CXRDicomError(CXRImageError):
    """A DICOM file is unusable: no pixel data, unsupported transfer syntax, ..."""


class CXRDatasetError(CXRInputError):
    """A dataset folder, manifest or label file is malformed."""


class CXRLeakageError(CXRError):
    """A patient appears in more than one split."""


class CXRConfigError(CXRError, ValueError):
    """A configuration value is invalid."""


class CXRWeightsError(CXRError):
    """Pretrained weights cannot be obtained (offline, missing or mismatched file)."""


class CXRPresetNotFoundError(CXRWeightsError):
    """A preset name resolves to nothing (not a folder, not cached, not embedded, no URL)."""


class CXRChecksumError(CXRWeightsError):
    """A downloaded or cached file does not have the sha256 it was promised to have."""


class CXRArchitectureError(CXRWeightsError):
    """Weights were made for another backbone than the model asked for."""


class CXRModelError(CXRError, ValueError):
    """A model cannot be built or used as asked (e.g. unknown layer name)."""


def require_optional(module: str, extra: str, purpose: str, pip_name: str | None = None):
    """Import an optional dependency, or fail with the install hint (a :class:`CXRConfigError`).

    Every optional extra goes through here, so a missing one is one line naming the
    extra to install, never a raw ``No module named ...`` traceback.

    Args:
        module: the module to import (``cv2``).
        extra: the cxr_tf extra that installs it (``perceptual``).
        purpose: what needs it, for the message (``perceptual_testset``).
        pip_name: the package name when it differs from the module (``opencv-python-headless``).
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise CXRConfigError(f"{purpose} needs {pip_name or module}: pip install 'cxr_tf[{extra}]'"
                             + (f" (or pip install {pip_name})" if pip_name else "")) from None


#: Called (no arguments) when a command's body fails, before the error is reported.
#: Layers above register here (e.g. the run folder removes a folder in which nothing was
#: trained), so this module imports none of them.
FAILURE_HOOKS: list = []


def run_main(fn, *args, **kwargs) -> int:
    """Run a command's body: the project's errors become one line on stderr and exit code 2.

    A user sees ``cxr_tf: error: <file>: <cause>``, never a traceback from deep inside
    TensorFlow; anything else is a bug and keeps its traceback. On any failure the
    :data:`FAILURE_HOOKS` run first.
    """
    import sys

    try:
        fn(*args, **kwargs)
    except BaseException as e:
        for hook in list(FAILURE_HOOKS):
            try:
                hook()
            except Exception as h:  # a clean-up problem must not hide the real error
                print(f"cxr_tf: warning: clean-up after the failure failed: {h}", file=sys.stderr)
        if isinstance(e, CXRError):
            print(f"cxr_tf: error: {e}", file=sys.stderr)
            return 2
        raise
    return 0


class CXRExportError(CXRError):
    """An export cannot be written, or the written file fails its post-export check.

    Args:
        path: the export file concerned (``None`` before one exists).
        cause: what is wrong, in words a user can act on.
    """

    def __init__(self, path: str | os.PathLike | None, cause: str):
        self.path = None if path is None else os.fspath(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}" if self.path else cause)

    def __reduce__(self):
        return (type(self), (self.path, self.cause))


class CXRExportDependencyError(CXRExportError):
    """A converter or runtime an export format needs is not installed (the message says what to install)."""


class CXRConversionError(CXRExportError):
    """A converter failed, or wrote a model its own runtime refuses (e.g. an unusable ONNX opset)."""


class CXRExportMismatchError(CXRExportError):
    """The exported file, run by its own runtime, does not predict what the Keras model predicts."""


class CXRQuantizationError(CXRExportError):
    """A quantised export loses more accuracy or AUC on held-out data than the stated tolerance."""
