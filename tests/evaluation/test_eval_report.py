import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import cxr_tf.evaluation
from cxr_tf.evaluation import (
    evaluate_predictions,
    fmt_ci,
    multilabel_metrics,
    wilson_ci,
    write_metrics_json,
    write_report,
)


def test_metrics_json_round_trip_without_nan(tmp_path):
    data = {"a": np.float32(0.5), "b": np.nan, "c": [np.int64(3), np.inf], "d": np.arange(3),
            "e": {"f": (1.0, None)}, 7: np.bool_(True)}
    path = write_metrics_json(tmp_path / "m.json", data)
    text = open(path).read()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": 0.5, "b": None, "c": [3, None], "d": [0, 1, 2],
                                "e": {"f": [1.0, None]}, "7": True}


def test_evaluate_predictions_three_class(hand_case, tmp_path):
    y, p, names, cm = hand_case
    config = {"model": {"backbone": "densenet121", "input_size": 224}, "lr": 1e-4}
    m = evaluate_predictions(y, p, names, tmp_path, title="Hand case", config=config, n_boot=100)
    for f in ("roc.png", "pr.png", "confusion_matrix.png", "probability_histograms.png"):
        assert (tmp_path / "plots" / f).stat().st_size > 5000
    assert not (tmp_path / "threshold_sweep.csv").exists()  # multi-class: no sweep
    text = (tmp_path / "metrics.json").read_text()
    assert "NaN" not in text
    loaded = json.loads(text)
    assert loaded["confusion_matrix"] == cm.tolist() == m["confusion_matrix"]
    assert loaded["averaged_accuracy"] == m["averaged_accuracy"]

    report = (tmp_path / "report.md").read_text()
    lo, hi = wilson_ci(14, 17)
    acc_a = f"{14 / 17:.3f} [{lo:.3f}, {hi:.3f}]"
    assert acc_a == "0.824 [0.590, 0.938]"
    # Per-class row: class, support, accuracy, sensitivity (5/6) ...
    lo, hi = wilson_ci(5, 6)
    assert f"| A | 6 | {acc_a} | 0.833 [{lo:.3f}, {hi:.3f}] |" in report
    assert "| true \\ predicted | A | B | C |" in report
    assert "| A | 5 | 1 | 0 |" in report and "| C | 0 | 1 | 4 |" in report
    assert "| `model.backbone` | densenet121 |" in report
    assert f"Averaged accuracy (mean one-vs-rest accuracy): {41 / 51:.3f}" in report
    assert "![roc](plots/roc.png)" in report and "(plots/confusion_matrix.png)" in report


def test_evaluate_predictions_binary_with_threshold(binary_case, tmp_path):
    # Also covers the binary plot paths (single ROC/PR curve, histogram with threshold).
    y, s = binary_case
    m = evaluate_predictions(y, s, ["normal", "covid"], tmp_path, title="Binary", threshold=0.4, n_boot=100)
    assert m["threshold"] == 0.4
    sweep = pd.read_csv(tmp_path / "threshold_sweep.csv")
    assert {"threshold", "sensitivity", "specificity", "TP", "FP", "TN", "FN"} <= set(sweep.columns)
    row = sweep[np.isclose(sweep["threshold"], 0.4)].iloc[0]
    assert row["sensitivity"] == m["per_class"]["covid"]["sensitivity"]["value"]
    report = (tmp_path / "report.md").read_text()
    assert "## Threshold sweep (positive class: covid)" in report
    assert "sens ≥ 0.95" in report
    assert "`P(covid) >= 0.4`" in report
    for f in ("roc.png", "pr.png", "confusion_matrix.png", "probability_histograms.png"):
        assert (tmp_path / "plots" / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_report_multilabel_and_extra_sections(tmp_path):
    y = np.array([[1, 0], [0, np.nan], [1, 1], [0, 0]], dtype=float)
    p = np.array([[0.9, 0.2], [0.1, 0.5], [0.8, 0.7], [0.3, 0.1]])
    m = multilabel_metrics(y, p, ["Edema", "Consolidation"])
    path = write_report(tmp_path, m, title="CheXpert", extra_sections={"Notes": "U-Ones policy."},
                        plots=[str(tmp_path / "plots" / "roc.png")])
    text = open(path).read()
    assert "| Edema | 4 | 2 | 0 | 1.000 |" in text
    assert "| Consolidation | 3 | 1 | 1 | 1.000 |" in text
    assert "## Notes\n\nU-Ones policy." in text and "(plots/roc.png)" in text
    assert fmt_ci({"value": 0.9123, "wilson_ci": [0.8712, 0.9431]}, "wilson_ci") == "0.912 [0.871, 0.943]"


def test_evaluation_does_not_import_tensorflow():
    # Static: no module of the package imports TF/Keras.
    pkg = Path(cxr_tf.evaluation.__file__).parent
    for f in pkg.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(m.split(".")[0] in ("tensorflow", "keras", "tf_keras") for m in mods), f
    # Runtime (transitive imports, e.g. via cxr_tf/__init__): only conclusive when no
    # other test in this session has already imported TF; spawn a clean interpreter then.
    if not any(m in sys.modules for m in ("tensorflow", "keras")):
        return  # cxr_tf.evaluation is imported above and did not pull TF in
    code = ("import sys, cxr_tf.evaluation; "
            "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
