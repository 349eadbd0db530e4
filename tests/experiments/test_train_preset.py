"""The embedded preset (what `pip install .` ships) and the experiment that trains it."""
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from cxr_tf.errors import CXRConfigError
from cxr_tf.experiments import pneumonia_freeze, train_preset
from cxr_tf.models import presets as P

NAME = pneumonia_freeze.DEFAULT_PRESET.split(":", 1)[1]
EMBEDDED = Path(P.__file__).resolve().parents[1] / "presets" / NAME


@pytest.fixture
def no_cache(tmp_path, monkeypatch):
    """An empty user cache: preset:NAME must come from the package itself."""
    monkeypatch.setenv("CXR_TF_HOME", str(tmp_path / "home"))


def test_embedded_preset_meets_the_shipping_rules(no_cache):
    assert NAME in P.list_presets()
    p = P.load_preset(f"preset:{NAME}")
    assert p.source == "embedded" and p.path.resolve() == EMBEDDED
    assert p.image_size >= 128 and p.class_names == ["normal", "pneumonia"]
    assert p.weights_path.stat().st_size <= 16 * 1024 * 1024
    meta = p.metadata
    assert meta.weights_sha256 == P.sha256_file(p.weights_path)
    # float16 only when it reproduces float32 within 1e-3 (else float32 ships)
    assert meta.extra["shipped_vs_fp32_max_abs_diff"] <= 1e-3
    assert meta.weights_dtype == "float32" or meta.extra["fp16_vs_fp32_max_abs_diff"] <= 1e-3
    sources = {d["source"] for d in meta.training_data}
    assert sources == {"kermany224", "nih1000_64", "covid_ieee8023"}
    assert all(d["licence"] and d["images"] > 0 for d in meta.training_data)
    assert "covid19_radiography" not in sources  # Kaggle terms: evaluated on, never trained on
    ext = [k for k in meta.metrics if k.startswith("covid19_radiography")]
    assert ext and "specificity" in meta.metrics[ext[0]] and len(meta.metrics[ext[0]]["specificity"]["ci95"]) == 2
    assert 0 < meta.thresholds["pneumonia"] < 1 and meta.calibration["temperature"] > 0
    # no machine's paths in what ships: no string value is an absolute path
    assert "$CXR_DATA_DIR" in meta.command and not re.search(r'"/[^"\s]', json.dumps(meta.to_dict()))
    card = (EMBEDDED / P.CARD_FILE).read_text()
    for section in ("## Intended use", "## Data", "## Metrics", "## Calibration", "## Operating points",
                    "## Known limitations", "NOT FOR CLINICAL USE"):
        assert section in card
    # which images it saw: relative paths, every held-out patient only in test
    rows = list(csv.DictReader(open(EMBEDDED / "splits.csv")))
    assert rows and not any(r["item"].startswith("/") for r in rows)
    by_patient = {}
    for r in rows:
        by_patient.setdefault(r["patient"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_patient.values())


def test_default_weights_resolve_to_the_embedded_preset(no_cache, tmp_path):
    cfg = pneumonia_freeze.parse(["--data-dir", str(tmp_path)])
    assert cfg.weights == pneumonia_freeze.DEFAULT_PRESET
    assert (cfg.backbone, cfg.image_size, cfg.freeze_until) == ("unet_cbam_encoder_d3w16", 128, "enc3_conv1")
    cfg = pneumonia_freeze.parse([])  # the demo starts from it too
    assert cfg.weights == pneumonia_freeze.DEFAULT_PRESET and cfg.image_size == 128
    cfg = pneumonia_freeze.parse(["--data-dir", str(tmp_path), "--image-size", "160"])
    assert cfg.image_size == 160  # an explicit size wins
    cfg = pneumonia_freeze.parse(["--data-dir", str(tmp_path), "--weights", "none"])
    assert (cfg.backbone, cfg.freeze_until) == ("resnet50", 0)  # from scratch: nothing frozen
    cfg = pneumonia_freeze.parse(["--data-dir", str(tmp_path), "--backbone", "tiny_cnn"])
    assert cfg.weights == "none"  # another architecture than the preset's: scratch, said in the log
    cfg = pneumonia_freeze.parse(["--data-dir", str(tmp_path), "--weights", "imagenet"])
    assert (cfg.backbone, cfg.freeze_until) == ("resnet50", 144)  # the seed's exact setting
    with pytest.raises(CXRConfigError, match="freezes randomly initialised layers"):
        pneumonia_freeze.parse(["--data-dir", str(tmp_path), "--weights", "none", "--freeze-until", "144"])
    cfg = pneumonia_freeze.parse(["--data-dir", str(tmp_path), "--weights", "none", "--freeze-until", "144",
                                  "--allow-random-frozen"])
    assert cfg.freeze_until == 144
    with pytest.raises(CXRConfigError, match="holds a unet_cbam_encoder_d3w16 trunk"):
        pneumonia_freeze.parse(["--data-dir", str(tmp_path), "--weights", pneumonia_freeze.DEFAULT_PRESET,
                                "--backbone", "resnet50"])


def _test_items(kermany_dir, n_per_class=12):
    """kermany224 images of the preset's own held-out test patients."""
    rows = [r for r in csv.DictReader(open(EMBEDDED / "splits.csv"))
            if r["split"] == "test" and r["item"].startswith("kermany224/")]
    out = []
    for label in ("normal", "pneumonia"):
        out += [(kermany_dir.parent / r["item"], label) for r in rows if r["label"] == label][:n_per_class]
    return out


def test_embedded_preset_predicts_its_held_out_real_images(no_cache, kermany_dir, tmp_path, data_dir):
    from cxr_tf.cli.predict import main as predict_main

    items = _test_items(kermany_dir)
    dicoms = sorted((data_dir / "dicom").glob("*.dcm"))
    out = tmp_path / "pred.csv"
    assert predict_main(["--model", f"preset:{NAME}", *map(str, [p for p, _ in items]), *map(str, dicoms),
                         "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == len(items) + len(dicoms)
    thr = P.load_preset(NAME).metadata.thresholds["pneumonia"]
    assert all(float(r["threshold"]) == pytest.approx(thr) for r in rows)
    y = np.array([lab == "pneumonia" for _, lab in items])
    p = np.array([float(r["p_pneumonia"]) for r in rows[:len(items)]])
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, p) > 0.9  # its held-out kermany224 test AUC is 0.998
    assert all(r["decision"] in ("normal", "pneumonia") for r in rows[len(items):])  # DICOM decoded and scored


@pytest.mark.slow
def test_default_path_learns_from_the_preset_on_a_small_real_subset(no_cache, kermany_subset, tmp_path):
    """No --weights: the embedded preset's trunk, its frozen early stages and a new head."""
    data = kermany_subset(30, 15, 15)
    runs = tmp_path / "runs"
    assert pneumonia_freeze.main(["--data-dir", str(data), "--classes", "pneumonia", "--smoke", "--epochs", "2",
                                  "--runs-dir", str(runs), "--saved-models-dir", str(tmp_path / "sm")]) == 0
    [run] = list((runs / "pneumonia_freeze").iterdir())
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["weights"] == pneumonia_freeze.DEFAULT_PRESET and cfg["image_size"] == 128
    m = json.loads((run / "metrics.json").read_text())
    assert m["macro_auc"]["value"] > 0.6  # above chance after 2 short epochs on 48 training images
    assert m["parameters"]["non_trainable"] > 10_000  # the first two encoder stages are frozen
    assert m["export"]["max_abs_diff_vs_keras"]["serving_default"] <= 1e-5
    log = (run / "model.json").read_text()
    assert "unet_cbam_encoder_d3w16" in log


@pytest.mark.slow
def test_train_preset_smoke_writes_a_complete_preset(data_dir, tmp_path, no_cache):
    out = tmp_path / "presets"
    assert train_preset.main(["--smoke", "--data-dir", str(data_dir), "--runs-dir", str(tmp_path / "runs"),
                              "--saved-models-dir", str(tmp_path / "sm"), "--preset-out", str(out),
                              "--preset-name", "smoke_preset"]) == 0
    p = P.read_preset(out / "smoke_preset")
    meta = p.metadata
    assert [d["source"] for d in meta.training_data] == ["kermany224", "nih1000_64", "covid_ieee8023"]
    assert any(k.startswith("covid19_radiography") for k in meta.metrics)
    assert meta.extra["cpu_images_per_second_batch32"] > 0 and meta.extra["shipped_vs_fp32_max_abs_diff"] <= 1e-3
    rows = list(csv.DictReader(open(out / "smoke_preset" / "splits.csv")))
    assert rows and all(not r["item"].startswith("/") for r in rows)
    assert {r["split"] for r in rows} <= {"train", "val", "test"}
    with pytest.raises(CXRConfigError, match="--data-dir is required"):
        train_preset.parse(["--smoke"])


def test_preset_overlap_counts_images_the_preset_trained_on(no_cache, kermany_dir):
    from cxr_tf.datasets import load_kermany, patient_split
    from cxr_tf.training.flow import preset_overlap

    ds = load_kermany(kermany_dir, classes="pneumonia")
    split = patient_split(ds, (0.8, 0.1, 0.1), seed=0)  # 2-class view: the same split as the preset's
    assert preset_overlap(pneumonia_freeze.DEFAULT_PRESET, ds, split) == {"preset": NAME, "val": 0, "test": 0}
    flipped = np.where(split == "train", "test", split)  # now its training images are "test"
    assert preset_overlap(pneumonia_freeze.DEFAULT_PRESET, ds, flipped)["test"] == int((split == "train").sum())
    assert preset_overlap("none", ds, split) is None
