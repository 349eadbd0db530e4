import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from cxr_tf.errors import CXRInputError
from cxr_tf.evaluation import (
    confusion_matrix_image,
    plot_confusion_matrix,
    plot_pr,
    plot_roc,
    plot_training_curves,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_bytes=5000):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == PNG_MAGIC and len(data) > min_bytes
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200
    assert img.std() > 0.01  # something was drawn


def test_curves_multi_model(binary_case, tmp_path):
    # Per-class (multi-class) curves are covered by test_eval_report's evaluate_predictions.
    yb, s = binary_case
    models = {"resnet": (yb, s), "densenet": (yb, np.clip(s + 0.1 * (yb - 0.5), 0, 1))}
    assert_png(plot_roc(models, path=tmp_path / "roc_models.png"))
    assert_png(plot_pr(models, path=tmp_path / "sub" / "pr_models.png"))
    with pytest.raises(CXRInputError):
        plot_roc(models, s, path=tmp_path / "x.png")


def test_confusion_matrix_png_and_image(tmp_path):
    cm = np.array([[50, 3, 1], [4, 40, 6], [0, 2, 0]])
    names = ["normal", "pneumonia", "covid"]
    assert_png(plot_confusion_matrix(cm, names, tmp_path / "cm_counts.png", normalize=None))
    img = confusion_matrix_image(cm, names, dpi=60)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert img.shape[0] > 100 and len(np.unique(img.reshape(-1, 3), axis=0)) > 10
    with pytest.raises(CXRInputError):
        confusion_matrix_image(cm, names[:2])


def test_training_curves_from_csvlogger_and_dict(tmp_path):
    epochs = np.arange(5)
    df = pd.DataFrame({
        "epoch": epochs, "accuracy": 0.6 + 0.05 * epochs, "auc": 0.7 + 0.04 * epochs,
        "learning_rate": 1e-3 * 0.5 ** epochs, "loss": 1 / (epochs + 1),
        "val_accuracy": 0.55 + 0.05 * epochs, "val_auc": 0.65 + 0.04 * epochs, "val_loss": 1.2 / (epochs + 1),
    })
    csv = tmp_path / "history.csv"
    df.to_csv(csv, index=False)
    assert_png(plot_training_curves(csv, tmp_path / "curves.png"))
    # Partial keras History.history dict: no val_auc, no lr, no epoch column.
    hist = {"loss": [1.0, 0.7, 0.5], "val_loss": [1.1, 0.9, 0.8], "auc": [0.7, 0.8, 0.85]}
    assert_png(plot_training_curves(hist, tmp_path / "curves_dict.png"))
    with pytest.raises(CXRInputError):
        plot_training_curves(tmp_path / "missing.csv", tmp_path / "x.png")
