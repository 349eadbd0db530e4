import json

import numpy as np
import pandas as pd
import pytest

from cxr_tf.experiments import chexpert_noisy as cn


def test_inject_noise_rates_and_flips():
    rng = np.random.default_rng(0)
    clean = (rng.uniform(size=(4000, 3)) < [0.05, 0.2, 0.5]).astype(np.float32)
    names = ["A", "B", "C"]
    rates = {"A": 0.15, "B": 0.0, "C": 0.05}
    y = cn.inject_noise(clean, names, rates, flip_rate=0.1, seed=1)
    for j, n in enumerate(names):
        assert np.mean(y[:, j] == -1) == pytest.approx(rates[n], abs=1e-3)
        known = y[:, j] != -1
        assert np.mean(y[known, j] != clean[known, j]) == pytest.approx(0.1, abs=0.02)
    # positive_bias: hidden entries are enriched for true positives
    yb = cn.inject_noise(clean, names, rates, flip_rate=0.0, seed=1, positive_bias=10.0)
    assert np.mean(clean[yb[:, 0] == -1, 0]) > 3 * np.mean(clean[y[:, 0] == -1, 0])


def test_bootstrap_auc_matches_sklearn_and_paired_difference():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = (rng.uniform(size=(300, 2)) < 0.3).astype(np.float32)
    y[:20, 1] = np.nan
    good = y + rng.normal(0, 0.5, y.shape)
    bad = rng.uniform(size=y.shape)
    idx = np.arange(300)[None]
    m = cn._auc_matrix(y, np.nan_to_num(good), [0, 1], idx)[0]
    ref = [roc_auc_score(y[~np.isnan(y[:, j]), j], np.nan_to_num(good)[~np.isnan(y[:, j]), j]) for j in (0, 1)]
    np.testing.assert_allclose(m, ref, rtol=1e-9)
    out = cn.bootstrap_mean_auc(y, {"bad": bad, "good": np.nan_to_num(good)}, [0, 1], "bad", 200, 0)
    lo, hi = out["good"]["diff_ci"]
    assert lo > 0.2 and out["good"]["p_better"] == 1.0  # clearly better: the CI excludes 0
    assert out["bad"]["mean_auc_ci"][0] < 0.5 < out["bad"]["mean_auc_ci"][1]


def test_method_lists():
    cfg = cn.ChexpertNoisyConfig(study="noise")
    names = [m.name for m in cn.default_methods(cfg, has_uncertain=True)]
    assert names[0].endswith("(reference)") and "hybrid_tiny U-lsr" in names and "hybrid_tiny + relabel" in names
    cfg = cn.ChexpertNoisyConfig(study="compare")
    rows = cn.default_methods(cfg, has_uncertain=False)
    assert [m.model for m in rows[:3]] == ["resnet50", "vit_tiny", "hybrid_tiny"]
    assert not any("U-" in m.name for m in rows)  # no -1 in the labels: policies would be identical
    from cxr_tf.errors import CXRConfigError

    with pytest.raises(CXRConfigError, match="unknown methods"):
        cn.select_methods(cn.ChexpertNoisyConfig(methods="nope"), False)


@pytest.mark.slow
def test_noise_study_smoke_on_real_nih(data_dir, tmp_path):
    if not (data_dir / "nih_chestxray14" / "nih1000_64").is_dir():
        pytest.skip("nih1000_64 not present")
    methods = "hybrid_tiny clean labels (reference),hybrid_tiny U-ignore,hybrid_tiny + hierarchy"
    cfg = cn.parse(["--smoke", "--study", "noise", "--runs-dir", str(tmp_path), "--methods", methods])
    out = cn.run(cfg)
    run = next((tmp_path / "chexpert_noisy").iterdir())
    df = pd.read_csv(run / "results_noise.csv")
    assert list(df["method"]) == methods.split(",")
    aucs = df[out["mean_auc_labels"]].to_numpy(float)
    assert np.all((aucs[np.isfinite(aucs)] >= 0) & (aucs[np.isfinite(aucs)] <= 1))
    assert (df["mean_auc_ci_low"] <= df["mean_auc"]).all() and (df["mean_auc"] <= df["mean_auc_ci_high"]).all()
    noise = json.loads((run / "noise.json").read_text())
    assert noise["hidden_fraction"]["Atelectasis"] == pytest.approx(noise["uncertain_rates"]["Atelectasis"], abs=0.02)
    assert "| method | mean AUC" in (run / "results_noise.md").read_text()
    splits = pd.read_csv(run / "splits.csv")
    assert splits.groupby("patient")["split"].nunique().max() == 1  # patient-level


def test_load_data_detects_chexpert_layout(tmp_path):
    from PIL import Image

    from cxr_tf.datasets.chexpert import CHEXPERT_LABELS

    d = tmp_path / "CheXpert-v1.0-small"
    d.mkdir()
    lines = ["Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT_LABELS)]
    for i in range(4):
        rel = f"CheXpert-v1.0-small/train/patient0000{i}/study1/view1_frontal.jpg"
        (tmp_path / rel).parent.mkdir(parents=True)
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(tmp_path / rel)
        lines.append(f"{rel},Male,50,Frontal,AP," + ",".join(["-1.0" if i % 2 else "1.0"] + [""] * 13))
    (d / "train.csv").write_text("\n".join(lines) + "\n")
    ds, layout = cn.load_data(cn.ChexpertNoisyConfig(data_dir=str(tmp_path)))
    assert layout == "chexpert" and len(ds) == 4 and ds.meta["patient_id"].nunique() == 4
    assert list(ds.labels[:, 0]) == [1, -1, 1, -1] and np.isnan(ds.labels[:, 1:]).all()
    x = cn.decode_all(ds, 16)
    assert x.shape == (4, 16, 16, 1) and x.max() <= 1.0
