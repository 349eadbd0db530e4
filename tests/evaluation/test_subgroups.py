"""Subgroup metrics: values equal hand computation; planted subgroup differences flagged."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxr_tf.evaluation import classification_metrics
from cxr_tf.evaluation.ci import wilson_ci
from cxr_tf.evaluation.subgroups import age_band, subgroup_metrics, write_subgroups


@pytest.fixture(scope="module")
def case():
    """600 binary predictions; the AP view (20%) gets noise-only scores."""
    rng = np.random.default_rng(0)
    n = 600
    y = rng.integers(0, 2, n)
    view = np.where(rng.random(n) < 0.2, "AP", "PA")
    score = np.where(view == "PA", 0.6 * y + 0.4 * rng.random(n), rng.random(n))
    meta = pd.DataFrame({"sex": rng.choice(["M", "F"], n), "age": rng.integers(1, 95, n), "view": view,
                         "patient_id": np.arange(n).astype(str)})
    meta.loc[:4, "sex"] = np.nan  # 5 rows without sex: an "unknown" group under min_size
    return y, score, meta


def test_values_equal_hand_computation(case):
    y, p, meta = case
    t = subgroup_metrics(y, p, meta, ["neg", "pos"], n_boot=200, seed=3)
    f = t.frame.set_index(["attribute", "group"])
    m = f.loc[("sex", "F")]
    sel = (meta["sex"] == "F").to_numpy()
    ys, ps = y[sel], p[sel]
    assert m["n"] == sel.sum() and m["n_positive"] == ys.sum()
    assert m["auc"] == pytest.approx(roc_auc_score(ys, ps), abs=1e-12)
    pred = (ps >= 0.5).astype(int)  # argmax of [1 - p, p]; ties go to class 0 only at p == 0.5
    correct = int((pred == ys).sum())
    assert m["accuracy"] == pytest.approx(correct / len(ys))
    lo, hi = wilson_ci(correct, len(ys))
    assert (m["accuracy_lo"], m["accuracy_hi"]) == pytest.approx((lo, hi))
    tp = int(((pred == 1) & (ys == 1)).sum())
    assert m["sensitivity"] == pytest.approx(tp / ys.sum())
    # the bootstrap CI is the one classification_metrics gives on the subgroup
    ref = classification_metrics(ys, ps, ["neg", "pos"], n_boot=200, seed=3)
    assert [m["auc_lo"], m["auc_hi"]] == pytest.approx(ref["macro_auc"]["bootstrap_ci"])
    overall = f.loc[("all", "all")]
    assert overall["n"] == len(y) and overall["auc"] == pytest.approx(roc_auc_score(y, p))


def test_planted_subgroup_is_flagged_and_random_split_is_not(case):
    y, p, meta = case
    t = subgroup_metrics(y, p, meta, ["neg", "pos"], n_boot=300)
    f = t.frame.set_index(["attribute", "group"])
    assert f.loc[("view", "AP"), "auc"] < 0.65 < f.loc[("all", "all"), "auc"]
    assert f.loc[("view", "AP"), "auc_flag"] and "view=AP" in t.flagged
    assert not f.loc[("sex", "M"), "auc_flag"] and not f.loc[("sex", "F"), "auc_flag"]
    unk = f.loc[("sex", "unknown")]
    assert unk["n"] == 5 and pd.isna(unk["auc"]) and not unk["flagged"]  # below min_size: listed only
    assert {"<18", "18-39", "40-59", "60-79", "80+"} == set(f.loc["age_band"].index)
    assert "view" in t.markdown and "\u2691" in t.markdown and "| AP |" in t.markdown


def test_age_band_parsing():
    got = age_band([17, 18, "058Y", 85, None, np.nan, "n/a", 0, 39.5])
    assert list(got) == ["<18", "18-39", "40-59", "80+", "unknown", "unknown", "unknown", "<18", "18-39"]


def test_multilabel_mean_auc_masks_nan(tmp_path):
    rng = np.random.default_rng(2)
    n = 300
    y = rng.integers(0, 2, (n, 2)).astype(float)
    y[rng.random((n, 2)) < 0.2] = np.nan
    p = np.nan_to_num(y, nan=0.5) * 0.3 + rng.random((n, 2)) * 0.7  # AUC about 0.8
    meta = pd.DataFrame({"sex": np.where(np.arange(n) % 2, "M", "F")})
    t = subgroup_metrics(y, p, meta, ["a", "b"], multilabel=True, n_boot=50, attributes=("sex",))
    sel = meta["sex"].to_numpy() == "M"
    hand = np.mean([roc_auc_score(y[sel, j][~np.isnan(y[sel, j])], p[sel, j][~np.isnan(y[sel, j])]) for j in (0, 1)])
    row = t.frame.set_index(["attribute", "group"]).loc[("sex", "M")]
    assert row["auc"] == pytest.approx(hand) and row["auc_lo"] < row["auc"] < row["auc_hi"]
    write_subgroups(t, tmp_path)
    assert pd.read_csv(tmp_path / "subgroups.csv").shape[0] == 3
    assert (tmp_path / "subgroups.md").read_text().startswith("| attribute")


def test_covid_and_nih_metadata_carry_subgroups(data_dir):
    from cxr_tf.datasets import load_csv_manifest
    from cxr_tf.datasets.covid import load_covid_ieee8023

    ds = load_covid_ieee8023(data_dir / "covid_ieee8023")
    assert {"sex", "age", "view"} <= set(ds.meta.columns)
    assert set(ds.meta["sex"].dropna()) <= {"M", "F"} and ds.meta["age"].notna().mean() > 0.5
    nih = load_csv_manifest(data_dir / "nih_chestxray14" / "nih1000_64" / "labels.csv", label_column="binary_label")
    assert {"sex", "age", "view"} <= set(nih.meta.columns)
    bands = age_band(nih.meta["age"])
    assert (bands != "unknown").all() and len(set(bands)) >= 4


def test_evaluate_predictions_adds_the_subgroup_table(case, tmp_path):
    import json

    from cxr_tf.evaluation import evaluate_predictions

    y, p, meta = case
    m = evaluate_predictions(y, p, ["neg", "pos"], tmp_path, title="t", n_boot=200, meta=meta)
    assert m["subgroups"]["attributes"] == ["sex", "age_band", "view"] and "view=AP" in m["subgroups"]["flagged"]
    assert json.loads((tmp_path / "metrics.json").read_text())["subgroups"] == m["subgroups"]
    report = (tmp_path / "report.md").read_text()
    assert "## Subgroups" in report and "| view | AP |" in report
    assert pd.read_csv(tmp_path / "subgroups.csv").shape[0] == 1 + 3 + 5 + 2  # all, sex M/F/unknown, 5 bands, 2 views
    # metadata without subgroup columns: no table, metrics unchanged
    m2 = evaluate_predictions(y, p, ["neg", "pos"], tmp_path / "b", title="t", n_boot=0, meta=meta[["patient_id"]])
    assert "subgroups" not in m2 and not (tmp_path / "b" / "subgroups.csv").exists()


def test_group_with_too_few_of_a_class_gets_no_auc():
    rng = np.random.default_rng(4)
    y = np.r_[np.zeros(40, int), np.ones(40, int)]
    p = np.clip(0.3 + 0.4 * y + 0.3 * rng.random(80), 0, 1)
    group = np.array(["a"] * 80, dtype=object)
    group[[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 40, 41]] = "b"  # b: 10 negatives, 2 positives
    t = subgroup_metrics(y, p, pd.DataFrame({"view": group}), ["neg", "pos"], n_boot=100, attributes=("view",))
    f = t.frame.set_index(["attribute", "group"])
    assert pd.isna(f.loc[("view", "b"), "auc"]) and not f.loc[("view", "b"), "auc_flag"]
    assert f.loc[("view", "b"), "sensitivity"] == pytest.approx(1.0)  # proportions are still given, with Wilson CIs
    assert f.loc[("view", "a"), "auc"] == pytest.approx(roc_auc_score(y[group == "a"], p[group == "a"]))
