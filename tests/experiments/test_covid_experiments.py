"""covid_ssl_compare and deep_covid: configuration logic (fast) and smoke runs on real data (slow)."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_tf.errors import CXRConfigError
from cxr_tf.experiments import covid_ssl_compare as cmp
from cxr_tf.experiments import deep_covid


def test_model_list_includes_ssl_encoder_only_when_registered(monkeypatch):
    from cxr_tf.models import registry

    cfg = cmp.CovidCompareConfig(models="")
    monkeypatch.delitem(registry._BACKBONES, cmp.SSL_BACKBONE, raising=False)
    assert cmp.model_list(cfg) == list(cmp.ZOO)
    fake = registry.BackboneSpec(name=cmp.SSL_BACKBONE, build=lambda x, w=None: (x, []))
    monkeypatch.setitem(registry._BACKBONES, cmp.SSL_BACKBONE, fake)
    assert cmp.model_list(cfg) == list(cmp.ZOO) + [cmp.SSL_BACKBONE]
    assert cmp.model_list(cmp.CovidCompareConfig(models="resnet18, squeezenet")) == ["resnet18", "squeezenet"]
    assert cmp.model_list(cmp.CovidCompareConfig(models="unet_cbam_encoder_d3w16")) == ["unet_cbam_encoder_d3w16"]
    with pytest.raises(CXRConfigError, match="unknown backbones \\['vgg'\\]"):
        cmp.model_list(cmp.CovidCompareConfig(models="resnet18,vgg"))


def test_parse_init(tmp_path):
    w = tmp_path / "enc.keras"
    w.write_bytes(b"x")
    assert cmp.parse_init(f"ssl:{w}") == {cmp.SSL_BACKBONE: f"ssl:{w}"}
    assert cmp.parse_init(f"unet_cbam_encoder=ssl:{w},resnet18={w}") == {cmp.SSL_BACKBONE: f"ssl:{w}",
                                                                        "resnet18": str(w)}
    assert cmp.parse_init("") == {}
    with pytest.raises(CXRConfigError, match="not found"):
        cmp.parse_init("ssl:/nope.keras")


def test_ssl_init_builds_the_artifacts_encoder_size_with_its_weights(tmp_path):
    """--init ssl:DIR of a d2w4 encoder: the SSL row is a d2w4 encoder carrying the pretrained weights."""
    from cxr_tf.models import build_model
    from cxr_tf.models.unet_cbam import UNetCBAM

    restorer = UNetCBAM(image_size=32, depth=2, width=4)
    enc_dir = restorer.save_encoder(tmp_path / "ssl_encoder")
    init = cmp.parse_init(f"{cmp.SSL_BACKBONE}=ssl:{enc_dir}")
    model = build_model(cmp.SSL_BACKBONE, num_classes=3, image_size=32, head="gap", freeze_until=0,
                        weights=init[cmp.SSL_BACKBONE])
    assert model.backbone == "unet_cbam_encoder_d2w4"
    for name in restorer.encoder_layer_names:
        if not restorer.get_layer(name).weights:
            continue
        for a, b in zip(restorer.get_layer(name).get_weights(), model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)


def test_comparison_table_and_csv_rows():
    from cxr_tf.evaluation import classification_metrics

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    p = np.eye(3)[y] * 0.6 + rng.random((60, 3)) * 0.5
    p /= p.sum(1, keepdims=True)
    m = classification_metrics(y, p, ["normal", "pneumonia", "covid"], n_boot=50)
    md = cmp.comparison_markdown({"resnet18": m}, ["normal", "pneumonia", "covid"])
    assert md.splitlines()[0].startswith("| model | normal acc | normal spec | normal sens | normal AUC |")
    assert md.splitlines()[0].endswith("covid AUC | averaged acc |")
    assert f"{m['averaged_accuracy']:.3f}" in md.splitlines()[2] and "[" in md
    rows = pd.DataFrame(cmp.per_class_rows("resnet18", m))
    assert len(rows) == 3 * 4 + 1
    r = rows[(rows["class"] == "covid") & (rows["metric"] == "sensitivity")].iloc[0]
    assert r["value"] == m["per_class"]["covid"]["sensitivity"]["value"] and r["ci"] == "wilson"
    assert r["ci_lo"] <= r["value"] <= r["ci_hi"]


def test_augmented_copies_and_sweep_table():
    x = np.random.default_rng(0).random((5, 32, 32, 1)).astype("float32")
    a = deep_covid.augmented_copies(x, 3, "light", seed=3)
    assert a.shape == (15, 32, 32, 1)
    np.testing.assert_array_equal(a[:5], x)
    assert not np.allclose(a[5:10], x)  # the copies are augmented
    from cxr_tf.evaluation import threshold_sweep

    y = np.r_[np.ones(50), np.zeros(100)].astype(bool)
    s = np.r_[np.linspace(0.3, 1, 50), np.linspace(0, 0.6, 100)]
    md = deep_covid.sweep_markdown({"m": threshold_sweep(y, s)})
    row = [l for l in md.splitlines() if "sens ≥ 0.98" in l][0]
    assert row.count("[") == 4  # normal and Wilson CIs for sensitivity and specificity


@pytest.mark.slow
def test_compare_smoke_on_real_data(tmp_path, data_dir):
    assert cmp.main(["--smoke", "--data-dir", str(data_dir), "--runs-dir", str(tmp_path), "--models",
                     "tiny_cnn,squeezenet"]) == 0
    run = sorted((tmp_path / "covid_ssl_compare").iterdir())[-1]
    md = (run / "comparison.md").read_text()
    assert "| tiny_cnn |" in md and "| squeezenet |" in md and "shortcut risk" in md
    csv = pd.read_csv(run / "comparison.csv")
    assert set(csv["model"]) == {"tiny_cnn", "squeezenet"} and set(csv["class"]) >= {"normal", "pneumonia", "covid"}
    mix = pd.read_csv(run / "source_mix.csv")
    assert set(mix["source"]) == {"covid_ieee8023", "covid19_radiography", "kermany224"}
    cam = pd.read_csv(run / "cam_border.csv")
    # at 64 px SqueezeNet's fire9 map is 3x3: the CAM layer chosen is the deepest with a >= 7x7 map
    assert list(cam["layer"]) == ["block3_relu", "fire5_concat"] and cam["border_share_mean"].between(0, 1).all()
    assert cam["resolves_border"].all()
    assert (cam["method"] == "scorecam").all() and (cam["cam_seconds"] >= 0).all()  # seed 000 explains with Score-CAM
    assert (run / "squeezenet" / "scorecam_overlays.png").is_file()
    assert "scorecam, outer 10%" in md
    assert (run / "duplicates.json").is_file()  # the near-duplicate audit of the split
    assert (run / "squeezenet" / "model.keras").is_file()
    ws = pd.read_csv(run / "within_source.csv")
    assert set(ws["model"]) == {"tiny_cnn", "squeezenet"}
    assert (ws.groupby("model")["evaluation"].first() == "mixed").all()
    assert "## Within-source evaluation" in md


@pytest.mark.slow
def test_deep_covid_smoke_and_explain_cli_on_its_export(tmp_path, data_dir, write_dicom):
    from cxr_tf.cli import main as cli

    assert deep_covid.main(["--smoke", "--data-dir", str(data_dir), "--runs-dir", str(tmp_path / "runs"),
                            "--saved-models-dir", str(tmp_path / "sm")]) == 0
    run = sorted((tmp_path / "runs" / "deep_covid").iterdir())[-1]
    for f in ("plots/roc_all.png", "plots/pr_all.png", "tiny_cnn/threshold_sweep.csv",
              "tiny_cnn/probability_histograms.png", "deep_covid.md", "speedup.json", "trunks/tiny_cnn.keras"):
        assert (run / f).is_file(), f
    m = json.loads((run / "metrics.json").read_text())
    row = m["summary"][0]
    assert row["assembled_vs_cached_max_diff"] < 1e-4  # the exported classifier = head on cached features
    assert m["speedup"]["speedup"] > 0 and m["speedup"]["epochs"] == 3
    sw = pd.read_csv(run / "tiny_cnn" / "threshold_sweep.csv")
    assert {"sensitivity_normal_lo", "sensitivity_wilson_lo", "specificity_normal_hi"} <= set(sw.columns)
    export = m["exports"]["tiny_cnn"]["export"]
    meta = json.loads(Path(export, "assets.extra", "cxr_tf_metadata.json").read_text())
    assert meta["keras_model"] and meta["threshold"] is not None  # explain rebuilds the model from the export
    png = next((data_dir / "covid19_radiography" / "COVID").iterdir())
    dcm = tmp_path / "covid_scan.dcm"  # always a DICOM input: generated, not an optional data file
    from PIL import Image

    write_dicom(dcm, np.asarray(Image.open(png).convert("L"), np.uint16) * 257)
    out = tmp_path / "expl"
    files = [str(png), str(dcm)]
    assert cli(["explain", "--model", export, *files, "--out", str(out), "--method", "scorecam", "--max-n", "4"]) == 0
    t = pd.read_csv(out / "explanations.csv")
    assert list(t["file"]) == files and np.allclose(t[["p_non_covid", "p_covid"]].sum(1), 1, atol=1e-5)
    assert (out / f"{png.stem}_scorecam_overlay.png").is_file()
    assert (out / f"{dcm.stem}_scorecam_overlay.png").is_file()


@pytest.mark.slow
def test_deep_covid_source_balanced_design_and_within_source_table(tmp_path, data_dir):
    assert deep_covid.main(["--smoke", "--data-dir", str(data_dir), "--runs-dir", str(tmp_path / "runs"),
                            "--balance-sources", "--export-models", "none", "--measure-speedup", "false"]) == 0
    run = sorted((tmp_path / "runs" / "deep_covid").iterdir())[-1]
    m = json.loads((run / "metrics.json").read_text())
    # both collections that hold COVID and non-COVID images, the same number per class each
    assert m["design"].startswith("source-balanced (covid19_radiography (500 per class), covid_ieee8023 (")
    mix = pd.read_csv(run / "source_mix.csv")
    assert "kermany224" not in set(mix["source"])  # pediatric normals only: left out
    ws = pd.read_csv(run / "within_source.csv")
    assert list(ws["evaluation"]) == ["mixed", "within-source"]
    assert (ws["n_pos"] > 0).all() and (ws["n_neg"] > 0).all()
    md = (run / "deep_covid.md").read_text()
    assert "## Within-source evaluation" in md and "source-balanced" in md


def test_cam_sample_covers_every_class():
    from cxr_tf.explain import cam_sample  # shared by the COVID experiments (cxr_tf.explain.report)

    y = np.array([2] * 59 + [0] * 59 + [1] * 63)  # the split lists the test items class by class
    idx = cam_sample(y, 32)
    assert len(idx) == 32 and len(set(idx)) == 32 and sorted(np.bincount(y[idx])) == [10, 11, 11]
    assert list(cam_sample(np.array([0, 0, 1]), 8)) == [0, 1, 2]  # fewer images than asked: all of them
    assert list(cam_sample(np.array([0, 1, 1, 1, 1]), 3)) == [0, 1, 4]  # the short class gives what it has
