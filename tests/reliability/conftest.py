"""Reliability tests: crash-resume, determinism, multi-worker, hostile inputs, patient data,
serving robustness. Subprocess runs use the tiny CNN at 32 px on the synthetic CXRs."""
from __future__ import annotations

import os
import sys

# Make the sibling helper module importable under any pytest --import-mode.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """A tiny CNN (normal / pneumonia, 32 px) exported for TF Serving: ``(path, model)``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    from cxr_tf.export import export_for_serving
    from cxr_tf.models import build_model

    keras.utils.set_random_seed(0)
    model = build_model("tiny_cnn", num_classes=2, image_size=32, freeze_until=0, class_names=["normal", "pneumonia"])
    res = export_for_serving(model, tmp_path_factory.mktemp("export"), name="tiny", class_names=["normal", "pneumonia"],
                             image_size=32)
    return res.path, model
