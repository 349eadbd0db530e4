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


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions save (to look at their axes, not only the PNG)."""
    from cxr_tf.evaluation import plots

    figs, save = [], plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (figs.append(fig), save(fig, path))[1])
    return figs


def _integer_ticks(ticks, lo, hi) -> bool:
    shown = [t for t in ticks if lo <= t <= hi]
    return bool(shown) and all(float(t).is_integer() for t in shown)


def test_training_curves_epochs_from_one_best_epoch_marked_constant_lr_named(tmp_path, drawn):
    from cxr_tf.evaluation import best_epoch

    # a CSVLogger file: epochs counted from 0; val_auc best at the third epoch
    hist = pd.DataFrame({"epoch": range(5), "loss": [1.0, 0.8, 0.6, 0.5, 0.4], "val_loss": [1.0, 0.9, 0.7, 0.8, 0.9],
                         "auc": [0.6, 0.7, 0.8, 0.85, 0.9], "val_auc": [0.6, 0.7, 0.78, 0.76, 0.78],
                         "learning_rate": [1e-3] * 5})
    assert best_epoch(hist) == 3  # the checkpoint keeps the first epoch reaching the best
    assert_png(plot_training_curves(hist, tmp_path / "c.png"))
    fig = drawn[-1]
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["loss", "auc"]  # no panel for a constant learning rate
    assert "learning rate 0.001 (constant)" in fig._suptitle.get_text()
    assert len(fig.axes) == 2  # no empty panels
    for ax in panels:
        xs = [line.get_xdata() for line in ax.get_lines()]
        assert min(x[0] for x in xs) == 1  # epochs from 1, as Keras prints "Epoch 1/5"
        assert _integer_ticks(ax.get_xticks(), *ax.get_xlim())
        marks = [line for line in ax.get_lines() if "best checkpoint" in str(line.get_label())]
        assert len(marks) == 1 and list(marks[0].get_xdata()) == [3, 3]
    # a schedule keeps its panel
    hist["learning_rate"] = [1e-3 * 0.5 ** i for i in range(5)]
    plot_training_curves(hist, tmp_path / "d.png")
    assert [ax.get_title() for ax in drawn[-1].axes] == ["loss", "auc", "learning rate"]


def test_pr_chance_lines_and_histograms_readable(tmp_path, drawn):
    from cxr_tf.evaluation import plot_probability_histograms

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 120)
    p = rng.dirichlet([1, 1, 1], 120)
    plot_pr(y, p, ["a", "b", "c"], tmp_path / "pr.png")
    chance = [line for line in drawn[-1].axes[0].get_lines() if "prevalence" in str(line.get_label())]
    assert sorted(round(line.get_ydata()[0], 3) for line in chance) == sorted(
        round(float((y == k).mean()), 3) for k in range(3))
    yb = (rng.random(60) < 0.3).astype(int)
    s = np.clip(0.3 + 0.4 * yb + rng.normal(0, 0.15, 60), 0, 1)
    plot_probability_histograms(yb, np.stack([1 - s, s], 1), ["normal", "pneumonia"], tmp_path / "h.png",
                                threshold=0.5)
    ax = drawn[-1].axes[0]
    colours = {tuple(patch.get_facecolor()) for patch in ax.patches}
    assert len(colours) == 2  # two distinct colours, side by side (no blended overlap)
    assert _integer_ticks(ax.get_yticks(), *ax.get_ylim())  # counts of images: no half-counts
