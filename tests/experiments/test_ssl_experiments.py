"""SSL pretraining and fine-tuning experiments: unit parts fast, end-to-end --smoke runs slow."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cxr_tf.errors import CXRConfigError
from cxr_tf.experiments import ssl_finetune, ssl_pretrain


def test_label_subset_is_patient_level_and_keeps_every_class():
    from cxr_tf.datasets.synthetic import make_synthetic_cxr

    ds = make_synthetic_cxr(n=200, image_size=16, seed=0, class_names=("normal", "pneumonia"))
    idx = ssl_finetune.label_subset(ds, 0.05, seed=0)
    sub = ds.subset(idx)
    pid = ds.meta["patient_id"].to_numpy()
    chosen = set(pid[idx])
    assert all(p in chosen for p in pid[np.isin(pid, list(chosen))])  # all images of a chosen patient
    assert len(np.flatnonzero(np.isin(pid, list(chosen)))) == len(idx)
    assert set(sub.class_index()) == {0, 1}
    n_pat = len(np.unique(pid))
    assert len(chosen) <= max(np.ceil(0.05 * n_pat), 2) + 4
    np.testing.assert_array_equal(ssl_finetune.label_subset(ds, 0.05, seed=0), idx)  # seeded
    assert len(ssl_finetune.label_subset(ds, 1.0, seed=0)) == len(ds)


def test_configs_validate():
    with pytest.raises(CXRConfigError, match="--init"):
        ssl_finetune.parse(["--data-dir", "x"])
    with pytest.raises(CXRConfigError, match="fractions"):
        ssl_finetune.parse(["--smoke", "--fractions", "0,1"])
    with pytest.raises(CXRConfigError, match="divisible"):
        ssl_pretrain.parse(["--image-size", "60", "--depth", "3"])
    with pytest.raises(CXRConfigError, match="loss"):
        ssl_pretrain.parse(["--loss", "ssmi"])
    cfg = ssl_pretrain.parse(["--smoke"])
    assert cfg.sources == "synthetic" and cfg.depth == 2 and cfg.genesis().paint_rate == 0.9


def test_restoration_grid_rows():
    a, b, c = (np.full((2, 4, 4, 1), v, np.float32) for v in (0.1, 0.5, 0.9))
    g = ssl_pretrain.restoration_grid(a, b, c)
    assert g.shape == (12, 8, 1)
    np.testing.assert_allclose(g[:4], 0.1)
    np.testing.assert_allclose(g[8:], 0.9)


@pytest.mark.slow
def test_smoke_pretrain_then_finetune(tmp_path):
    """End to end: pretrain writes a loadable encoder; finetune compares ssl vs scratch."""
    assert ssl_pretrain.main(["--smoke", "--runs-dir", str(tmp_path / "runs")]) == 0
    run = sorted((tmp_path / "runs" / "ssl_pretrain").iterdir())[-1]
    for f in ("config.json", "pool.csv", "metrics.json", "report.md", "history.csv",
              "checkpoints/best.weights.h5", "ssl_encoder/encoder.weights.h5", "ssl_encoder/ssl_encoder.json"):
        assert (run / f).is_file(), f
    meta = json.loads((run / "ssl_encoder/ssl_encoder.json").read_text())
    assert meta["image_size"] == 32 and meta["transforms"]["inpaint_rate"] == 0.2 and "normalisation" in meta
    m = json.loads((run / "metrics.json").read_text())
    assert 0 <= m["val_ssim_restored"] <= 1 and m["val_psnr_restored"] > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard" / "validation"), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    assert "restoration" in set(acc.Tags().get("images", [])) | set(acc.Tags().get("tensors", []))

    argv = ["--smoke", "--runs-dir", str(tmp_path / "ft"), "--init", f"ssl:{run / 'ssl_encoder'}"]
    assert ssl_finetune.main(argv) == 0
    ft = sorted((tmp_path / "ft" / "ssl_finetune").iterdir())[-1]
    res = (ft / "results.csv").read_text().splitlines()
    assert len(res) == 1 + 2 * 2  # header + 2 fractions x 2 arms
    assert (ft / "plots" / "label_efficiency.png").stat().st_size > 0
    summary = json.loads((ft / "metrics.json").read_text())
    assert summary["backbone"] == "unet_cbam_encoder_d2w4"
    assert all(0 <= p["auc"] <= 1 for p in summary["points"])


@pytest.mark.slow
def test_ssl_finetune_preset_arm_with_seeds(tmp_path, monkeypatch):
    """The transfer study's arms: the embedded preset's trunk against scratch, two seeds per point."""
    import pandas as pd

    from cxr_tf.experiments import ssl_finetune

    monkeypatch.setenv("CXR_TF_HOME", str(tmp_path / "home"))
    assert ssl_finetune.main(["--smoke", "--arms", "scratch,preset", "--seeds", "0,1", "--fractions", "1.0",
                              "--runs-dir", str(tmp_path / "runs")]) == 0
    [run] = list((tmp_path / "runs" / "ssl_finetune").iterdir())
    table = pd.read_csv(run / "results.csv")
    assert sorted(table["arm"].unique()) == ["preset", "scratch"] and sorted(table["seed"].unique()) == [0, 1]
    assert "Mean (standard deviation) over seeds" in (run / "results.md").read_text()
    assert (run / "plots" / "label_efficiency.png").stat().st_size > 0
    with pytest.raises(Exception, match="--preset must be preset:NAME"):
        ssl_finetune.parse(["--smoke", "--arms", "preset", "--preset", "ssl:x"])
