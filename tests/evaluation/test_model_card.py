"""Model cards are generated from the run's own files: sections present, numbers equal."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from scipy.special import softmax

from cxr_tf.errors import CXRInputError
from cxr_tf.evaluation import classification_metrics
from cxr_tf.evaluation.calibration import calibration_summary, operating_points
from cxr_tf.evaluation.model_card import card_from_run, render_card, write_model_card


@pytest.fixture
def run_dir(tmp_path):
    rng = np.random.default_rng(0)
    names = ["normal", "pneumonia"]
    y = rng.integers(0, 2, 400)
    z = rng.normal(0, 1, (400, 2))
    z[np.arange(400), y] += 1.2
    p = softmax(3 * z, axis=1)
    run = tmp_path / "pneumonia_freeze" / "20261204T000000Z"
    run.mkdir(parents=True)
    m = classification_metrics(y[200:], p[200:], names, threshold=0.6, n_boot=200)
    (run / "metrics.json").write_text(json.dumps({"test": m}))
    (run / "config.json").write_text(json.dumps({"backbone": "resnet18", "image_size": 128, "head": "gap",
                                                 "weights": "none", "freeze_until": 0, "epochs": 5,
                                                 "lr": 1e-3, "seed": 0, "data_dir": "/x/kermany224"}))
    (run / "split_summary.csv").write_text("split,normal,pneumonia\ntrain,300,800\nval,40,90\ntest,40,90\n")
    cal = calibration_summary(y[:200], p[:200], y[200:], p[200:], n_boot=100)
    (run / "calibration.json").write_text(json.dumps(cal))
    (run / "operating_points.json").write_text(json.dumps(operating_points(y[:200], p[:200], names)))
    return run, m, cal


def test_card_sections_and_numbers_equal_metrics(run_dir):
    run, m, cal = run_dir
    path = write_model_card(run, card_from_run(run))
    text = open(path).read()
    for heading in ("## Intended use", "## Data", "## Model", "## Performance", "## Calibration",
                    "## Operating points", "## Known limitations", "## Reporting checklists covered"):
        assert heading in text, heading
    assert "Not a medical device" in text
    acc = m["accuracy"]
    lo, hi = acc["wilson_ci"]
    assert f"| accuracy | {acc['value']:.3f} [{lo:.3f}, {hi:.3f}]" in text
    auc = m["macro_auc"]
    assert f"{auc['value']:.3f} [{auc['bootstrap_ci'][0]:.3f}, {auc['bootstrap_ci'][1]:.3f}]" in text
    sens = m["per_class"]["pneumonia"]["sensitivity"]["value"]
    assert re.search(rf"\| pneumonia \| {m['per_class']['pneumonia']['support']} \| {sens:.3f} ", text)
    assert f"T = {cal['temperature']:.3f}" in text
    assert f"{cal['ece_before']['value']:.3f}" in text and f"{cal['ece_after']['value']:.3f}" in text
    assert "P(pneumonia) >= 0.6" in text
    assert "TRIPOD-AI" in text and "CLAIM 38" not in text  # no subgroup section -> not claimed
    assert "/x/" not in text  # no machine path, only the data folder's name


def test_subgroups_and_shortcuts_render_and_are_claimed(run_dir):
    run, _, _ = run_dir
    (run / "subgroups.csv").write_text("attribute,group,n,auc\nsex,F,50,0.81\nsex,M,80,0.85\n")
    (run / "shortcut_audit.json").write_text(json.dumps({"cross_split_duplicates": 3}))
    text = render_card(card_from_run(run))
    assert "| sex | F | 50 | 0.81 |" in text and "cross split duplicates: 3" in text
    assert "CLAIM 38" in text and "CLAIM 39-40" in text


def test_card_needs_metrics(tmp_path):
    with pytest.raises(CXRInputError, match="metrics.json"):
        card_from_run(tmp_path)


def test_formatted_subgroup_table_is_used_when_present(run_dir):
    run, _, _ = run_dir
    (run / "subgroups.csv").write_text("attribute,group,n,auc\nsex,F,50,0.81\n")
    (run / "subgroups.md").write_text("| attribute | group | n | auc |\n|---|---|---|---|\n| sex | F | 50 | 0.810 [0.7, 0.9] |\n")
    text = render_card(card_from_run(run))
    assert "| sex | F | 50 | 0.810 [0.7, 0.9] |" in text and "CLAIM 38" in text
