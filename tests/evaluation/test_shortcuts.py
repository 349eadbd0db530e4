"""Within-source evaluation: a model that learned the source scores high on the mixed test
and at chance inside a source; one that learned the finding scores the same in both."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr_tf.datasets import CXRDataset
from cxr_tf.datasets.covid import balance_sources, source_mix
from cxr_tf.errors import CXRDatasetError
from cxr_tf.evaluation.shortcuts import lead_figure, markdown, within_source_auc


def _confounded(seed=0):
    rng = np.random.default_rng(seed)
    # positives: 200 from "adult" (source A), 40 from B; negatives: 40 from A, 400 from "pediatric" (C)
    src = np.array(["A"] * 200 + ["B"] * 40 + ["A"] * 40 + ["C"] * 400)
    y = np.array([1] * 240 + [0] * 440)
    return rng, src, y


def test_source_learner_is_exposed():
    rng, src, y = _confounded()
    score = np.where(src == "C", 0.1, 0.9) + rng.normal(0, 0.05, len(y))  # knows the source only
    t = within_source_auc(y, score, src, n_boot=200)
    mixed = t[t.evaluation == "mixed"].iloc[0]
    within_a = t[(t.evaluation == "within-source") & (t.source == "A")].iloc[0]
    assert mixed.auc > 0.9 and abs(within_a.auc - 0.5) < 0.15
    assert set(t.source) == {"all", "A"}  # B has no negatives, C no positives
    lead = lead_figure(t)
    assert lead["evaluation"] == "within-source" and lead["disagrees_with_mixed"]
    assert "| within-source | A | 200 / 40 |" in markdown(t)


def test_finding_learner_agrees():
    rng, src, y = _confounded(1)
    score = y + rng.normal(0, 0.6, len(y))
    t = within_source_auc(y, score, src, n_boot=200)
    lead = lead_figure(t)
    assert lead["evaluation"] == "mixed" and not lead["disagrees_with_mixed"]


def _ds(src, cls, names=("non_covid", "covid")):
    y = np.eye(len(names), dtype=np.float32)[cls]
    meta = pd.DataFrame({"patient_id": [f"p{i}" for i in range(len(cls))], "source": src})
    return CXRDataset([f"img{i}.png" for i in range(len(cls))], y, list(names), meta, name="t")


def test_balance_sources_equalises_source_mix_per_class():
    src = np.array(["A"] * 120 + ["B"] * 30 + ["A"] * 50 + ["C"] * 500)
    cls = np.array([1] * 150 + [0] * 550)
    out = balance_sources(_ds(src, cls), seed=0)
    mix = source_mix(out)
    # only A holds both classes: 50 of each; B (covid only) and C (non-covid only) dropped
    assert set(mix.source) == {"A"} and mix.images.tolist() == [50, 50]
    assert out.balanced_sources == ["A (50 per class)"]
    with pytest.raises(CXRDatasetError, match="no source holds every class"):
        balance_sources(_ds(np.array(["B"] * 5 + ["C"] * 5), np.array([1] * 5 + [0] * 5)))
