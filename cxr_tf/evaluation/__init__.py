"""Evaluation of chest X-ray classifiers from exported predictions.

Pure numpy / scipy / scikit-learn / matplotlib (Agg canvas): importing this package
never imports TensorFlow or Keras, so it runs cheaply on saved ``y_true``/``y_prob``.

Typical use::

    from cxr_tf.evaluation import choose_threshold, evaluate_predictions
    t = choose_threshold(y_val == 1, p_val[:, 1], method="sensitivity", target=0.98)
    metrics = evaluate_predictions(y_test, p_test, ["normal", "covid"], "runs/x/eval",
                                   title="ResNet50 test", threshold=t)
"""
from .ci import bootstrap_ci, normal_approx_ci, wilson_ci
from .metrics import classification_metrics, multilabel_metrics, proportion_stat
from .plots import (
    confusion_matrix_image,
    plot_confusion_matrix,
    plot_pr,
    plot_probability_histograms,
    plot_roc,
    best_epoch,
    plot_training_curves,
)
from .report import evaluate_predictions, fmt_ci, write_metrics_json, write_report
from .thresholds import DEFAULT_SENSITIVITY_TARGETS, choose_threshold, threshold_sweep

__all__ = [
    "DEFAULT_SENSITIVITY_TARGETS",
    "bootstrap_ci",
    "choose_threshold",
    "classification_metrics",
    "confusion_matrix_image",
    "evaluate_predictions",
    "fmt_ci",
    "multilabel_metrics",
    "normal_approx_ci",
    "plot_confusion_matrix",
    "plot_pr",
    "plot_probability_histograms",
    "plot_roc",
    "best_epoch",
    "plot_training_curves",
    "proportion_stat",
    "threshold_sweep",
    "wilson_ci",
    "write_metrics_json",
    "write_report",
]
