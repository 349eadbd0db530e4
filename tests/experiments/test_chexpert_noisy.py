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


# ------------------------------------------------------------------ LSR default and per-label blank CLI
def test_cli_lsr_default_and_per_label_blank():
    from cxr_tf.errors import CXRConfigError

    cfg = cn.parse([])
    assert (cfg.lsr_low, cfg.lsr_high) == (0.5, 0.5)  # SPEC S1: U-LSR smooths to 0.5
    assert cfg.uncertainty_policy("lsr").lsr_range == (0.5, 0.5)
    cfg = cn.parse(["--lsr-low", "0.55", "--lsr-high", "0.85", "--blank", "default=mask,Edema=zero",
                    "--blank-weight", "default=1.0,No Finding=0.2", "--base-policy", "default=ignore,Edema=ones"])
    pol = cfg.uncertainty_policy(cfg.base_policy)
    assert pol.lsr_range == (0.55, 0.85)
    assert pol.blank == {"default": "mask", "Edema": "zero"}
    assert pol.blank_weight == {"default": 1.0, "No Finding": 0.2}
    names = ["No Finding", "Edema", "Atelectasis"]
    cfg.check_labels(names)
    raw = np.array([[np.nan, np.nan, -1], [1, -1, np.nan]], np.float32)
    t, w = pol.apply(raw, names)
    assert np.array_equal(w, [[0, 1, 0], [1, 1, 0]]) and t[1, 1] == 1.0  # Edema: blank -> 0, -1 -> 1
    cfg = cn.parse(["--blank", "zero", "--blank-weight", "default=1.0,No Finding=0.2"])
    np.testing.assert_allclose(cfg.uncertainty_policy("ignore").apply(raw, names)[1][0], [0.2, 1.0, 0.0])
    # clear errors: bad values at parse time, unknown labels once the labels are known
    for argv, match in ((["--blank", "default=mask,Edema=drop"], "--blank: .*'drop' for 'Edema' is not one of"),
                        (["--blank-weight", "default=1,Edema=heavy"], "--blank-weight: .*not a number"),
                        (["--blank-weight", "-1"], "--blank-weight: .*>= 0"),
                        (["--base-policy", "default=ignore,Edema=maybe"], "--base-policy: .*not one of"),
                        (["--lsr-low", "0.9", "--lsr-high", "0.6"], "--lsr-low/--lsr-high")):
        with pytest.raises(CXRConfigError, match=match):
            cn.parse(argv)
    for argv, flag in ((["--blank", "default=mask,Edma=zero"], "--blank"),
                       (["--blank-weight", "default=1,NoFinding=0.2"], "--blank-weight"),
                       (["--base-policy", "default=ignore,edema=ones"], "--base-policy")):
        with pytest.raises(CXRConfigError, match=f"{flag}: .*unknown labels"):
            cn.parse(argv).check_labels(names)


# ------------------------------------------------------------------ hierarchy + relabelling
def test_relabel_uses_conditional_outputs_for_children():
    from cxr_tf.noisy.methods import hierarchical_probabilities, relabel

    names = ["Lung Opacity", "Edema", "Fracture"]
    hier = {"Edema": "Lung Opacity"}
    raw = np.array([[1, -1, -1],   # child uncertain under a positive parent: soft target P(Edema | LO)
                    [1, 0, 0],     # child 0, conditional 0.95 (marginal 0.57): flipped only conditionally
                    [-1, 1, 1]], np.float32)  # parent uncertain: its marginal
    t = np.where(raw == 1, 1.0, 0.0).astype(np.float32)
    w = np.where(raw >= 0, 1.0, 0.0).astype(np.float32)
    cond = np.array([[0.5, 0.8, 0.3], [0.6, 0.95, 0.2], [0.7, 0.9, 0.04]], np.float32)  # raw model outputs
    marg = hierarchical_probabilities(cond, names, hier)
    np.testing.assert_allclose(marg[:, 1], [0.4, 0.57, 0.63], rtol=1e-6)
    t2, w2, c = relabel(raw, t, w, marg, confident=0.9, hierarchy=hier, names=names, conditional_probs=cond)
    assert t2[0, 1] == pytest.approx(0.8) and w2[0, 1] == 1  # conditional, not the marginal 0.4
    assert t2[0, 2] == pytest.approx(0.3)  # outside the hierarchy: marginal (= the output)
    assert t2[1, 1] == 1.0  # 0.95 > 0.9 conditionally
    assert t2[2, 0] == pytest.approx(0.7)  # parent: marginal
    assert t2[2, 2] == 0.0  # Fracture 1 with p 0.04: flipped
    assert c == {"soft_filled": 3, "flipped_to_1": 1, "flipped_to_0": 1}
    # without the hierarchy every column uses the marginals passed
    t3, _, c3 = relabel(raw, t, w, marg, confident=0.9)
    assert t3[0, 1] == pytest.approx(0.4) and t3[1, 1] == 0.0 and c3["flipped_to_1"] == 0
    from cxr_tf.errors import CXRConfigError

    with pytest.raises(CXRConfigError, match="conditional_probs"):
        relabel(raw, t, w, marg, hierarchy=hier, names=names)


def test_train_method_relabels_children_with_conditional_outputs(monkeypatch):
    """train_method with hierarchy + relabel hands relabel the raw outputs for the children."""
    import cxr_tf.noisy.methods as noisy

    calls = {}
    real_relabel = noisy.relabel

    def spy(raw, t, w, probs, **kw):
        out = real_relabel(raw, t, w, probs, **kw)
        calls.update(raw=raw, probs=probs, kw=kw, out=out)
        return out

    monkeypatch.setattr(noisy, "relabel", spy)
    rng = np.random.default_rng(0)
    names = ["Lung Opacity", "Edema", "Fracture"]
    hier = {"Edema": "Lung Opacity"}
    n = 48
    x = rng.uniform(size=(n, 32, 32, 1)).astype(np.float32)
    y = (rng.uniform(size=(n, 3)) < 0.5).astype(np.float32)
    raw = y[:32].copy()
    raw[:8, 1] = -1
    raw[:8, 0] = 1  # uncertain children under positive parents
    idx = (np.arange(32), np.arange(32, 40), np.arange(40, 48))
    cfg = cn.ChexpertNoisyConfig(image_size=32, epochs=1, relabel_epochs=1, batch_size=16, seed=0)
    m = cn.Method("h", "vit_tiny", "ignore", hierarchy=True, relabel=True)
    pv, pt, info = cn.train_method(cfg, m, names, x, raw, idx, y, hier, [0, 1, 2], lambda s: None)
    cond, marg = calls["kw"]["conditional_probs"], calls["probs"]
    assert calls["kw"]["hierarchy"] == hier and calls["kw"]["names"] == names
    np.testing.assert_allclose(marg, noisy.hierarchical_probabilities(cond, names, hier), rtol=1e-6)
    assert np.all(cond[:, 1] > marg[:, 1])  # the child's conditional output, above its marginal
    t2 = calls["out"][0]
    np.testing.assert_allclose(t2[:8, 1], cond[:8, 1], rtol=1e-6)  # soft-filled with P(Edema | LO)
    assert info["relabel"]["soft_filled"] == 8 and np.all(pt[:, 1] <= pt[:, 0] + 1e-6)


# ------------------------------------------------------------------ end-to-end runs on real data
@pytest.mark.slow
def test_noise_study_mixup_mentornet_relabel_on_real_nih(data_dir, tmp_path):
    if not (data_dir / "nih_chestxray14" / "nih1000_64").is_dir():
        pytest.skip("nih1000_64 not present")
    methods = "hybrid_tiny + mixup,hybrid_tiny + MentorNet 0.3,hybrid_tiny + relabel"
    cfg = cn.parse(["--smoke", "--study", "noise", "--runs-dir", str(tmp_path), "--methods", methods,
                    "--max-images", "120"])
    out = cn.run(cfg)
    run = next((tmp_path / "chexpert_noisy").iterdir())
    df = pd.read_csv(run / "results_noise.csv")
    assert list(df["method"]) == methods.split(",")
    assert np.isfinite(df["mean_auc"]).all() and ((df["mean_auc"] >= 0) & (df["mean_auc"] <= 1)).all()
    info = out["train_info"]
    assert out["methods"]["hybrid_tiny + mixup"]["mixup"] and out["methods"]["hybrid_tiny + MentorNet 0.3"]["mentor"] == 0.3
    rl = info["hybrid_tiny + relabel"]
    assert rl["relabel"]["soft_filled"] > 0  # the noise study hid labels as -1
    n_labels = len(out["labels"])
    assert rl["relabel_trainable"] % (n_labels) == 0 and rl["relabel_trainable"] < rl["parameters"]["trainable"]
    assert len(rl["relabel_history"]) == cfg.relabel_epochs
    assert all(np.isfinite(h[0]) for m in info.values() for h in m["history"])  # finite training losses


def _chexpert_tree(root, csv_gz, nrows=400):
    """``<root>/CheXpert-v1.0-small/train.csv``: the first real rows, their frontal images generated."""
    df = pd.read_csv(csv_gz, nrows=nrows)
    (root / "CheXpert-v1.0-small").mkdir(parents=True)
    df.to_csv(root / "CheXpert-v1.0-small" / "train.csv", index=False)
    rng = np.random.default_rng(0)
    front = df[df["Frontal/Lateral"] == "Frontal"]
    from PIL import Image

    for rel in front["Path"]:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 28), dtype=np.uint8)).save(p, format="JPEG")
    return front


@pytest.mark.slow
def test_compare_smoke_on_generated_chexpert_tree(data_dir, tmp_path):
    csv_gz = data_dir / "chexpert_labels" / "chexpert_train.csv.gz"
    if not csv_gz.is_file():
        pytest.skip("chexpert_labels not present")
    front = _chexpert_tree(tmp_path / "data", csv_gz)
    runs = tmp_path / "runs"
    argv = ["--smoke", "--study", "compare", "--data-dir", str(tmp_path / "data"), "--runs-dir", str(runs),
            "--max-images", "96"]
    # the default rows on CheXpert labels (which carry -1): models, then the hybrid with each U-policy and idea
    h = "hybrid_tiny"
    ds, layout = cn.load_data(cn.parse(argv))
    assert layout == "chexpert" and len(ds) == len(front) and (ds.labels == -1).any()
    assert [m.name for m in cn.select_methods(cn.parse(argv), True)] == ["vit_tiny", h] + [
        f"{h} U-{q}" for q in ("ignore", "zeros", "ones", "lsr")] + [
        f"{h} + hierarchy", f"{h} + mixup", f"{h} + MentorNet 0.3", f"{h} + MentorNet 0.5", f"{h} + relabel"]
    # trained end to end: a subset of those rows (all eleven take ~2 min on one core)
    rows = ["vit_tiny", f"{h} U-ignore", f"{h} U-lsr", f"{h} + hierarchy"]
    out = cn.run(cn.parse(argv + ["--methods", ",".join(rows)]))
    # --max-images takes whole patients (class-stratified), so at most 96 images
    assert out["layout"] == "chexpert" and 72 <= out["n_images"] <= 96
    run = next((runs / "chexpert_noisy").iterdir())
    df = pd.read_csv(run / "results_compare.csv")
    assert list(df["method"]) == rows and np.isfinite(df["mean_auc"]).all()
    assert out["baseline"] == "vit_tiny" and df["diff_vs_baseline"].isna().tolist() == [True, False, False, False]
    md = (run / "results_compare.md").read_text().splitlines()
    assert md[0].startswith("| method | mean AUC [95% CI] | vs vit_tiny")
    assert [line.split(" | ")[0].lstrip("| ") for line in md[2:]] == rows
    assert out["hierarchy"]["Pneumonia"] == "Consolidation"
    assert out["hierarchy"]["Cardiomegaly"] == "Enlarged Cardiomediastinum"
    # U-LSR (default target 0.5) trains on the -1 entries U-Ignore masks: different predictions
    pred = np.load(run / "test_predictions.npz")
    assert not np.allclose(pred[f"{h} U-ignore"], pred[f"{h} U-lsr"])
    assert json.loads((run / "config.json").read_text())["lsr_low"] == 0.5
