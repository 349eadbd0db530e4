"""`cxr-tf evaluate` on exports, over the npz, folder (DICOM) and CSV layouts."""
import json
import shutil

import numpy as np
import pytest

from cxr_tf.cli import main as cli
from cxr_tf.export import export_for_serving
from cxr_tf.models import build_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    base = tmp_path_factory.mktemp("exports")
    m = build_model("tiny_cnn", num_classes=2, image_size=32, freeze_until=0, class_names=["normal", "pneumonia"])
    res = export_for_serving(m, base, name="tiny", class_names=m.class_names, image_size=32, metadata={"threshold": 0.5})
    return str(res.path)


def test_evaluate_npz(exported, data_dir, tmp_path):
    out = tmp_path / "eval"
    assert cli(["evaluate", "--model", exported, "--data-dir", str(data_dir / "pneumoniamnist"),
                "--format", "npz", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 5232 and m["class_names"] == ["normal", "pneumonia"]
    assert m["threshold"] == 0.5  # taken from the export's metadata
    for f in ("report.md", "plots/roc.png", "plots/confusion_matrix.png", "threshold_sweep.csv", "predictions.npz"):
        assert (out / f).is_file()
    pred = np.load(out / "predictions.npz")
    assert pred["y_prob"].shape == (5232, 2) and np.allclose(pred["y_prob"].sum(1), 1, atol=1e-5)


def test_evaluate_dicom_folder_and_unknown_classes(exported, data_dir, tmp_path, capsys):
    root = tmp_path / "dicoms"
    for cls, names in {"normal": ["siim_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
                                  "CR-MONO1-10-chest.dcm"],
                       "pneumonia": ["RG1_J2KI.dcm", "txv_Fake_MONOHR1.dcm"]}.items():
        (root / cls).mkdir(parents=True)
        for n in names:
            shutil.copy(data_dir / "dicom" / n, root / cls / n)
    out = tmp_path / "eval"
    assert cli(["evaluate", "--model", exported, "--data-dir", str(root), "--format", "folder", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 4
    items = np.load(out / "predictions.npz")["items"]
    assert any(str(i).endswith("RG1_J2KI.dcm") for i in items)  # reports name the original DICOM, not the cache

    (root / "covid").mkdir()
    shutil.copy(data_dir / "dicom" / "RG1_J2KI.dcm", root / "covid" / "x.dcm")
    assert cli(["evaluate", "--model", exported, "--data-dir", str(root), "--format", "folder"]) == 2
    assert "['covid'] are not among the model's classes" in capsys.readouterr().err


def test_evaluate_bad_file_named_or_skipped(exported, tmp_path, capsys):
    import tensorflow as tf

    root = tmp_path / "ds"
    for cls in ("normal", "pneumonia"):
        (root / cls).mkdir(parents=True)
        for k in range(3):
            img = (np.random.default_rng(k).random((40, 30, 1)) * 255).astype(np.uint8)
            (root / cls / f"{k}.png").write_bytes(tf.io.encode_png(img).numpy())
    (root / "normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    assert cli(["evaluate", "--model", exported, "--data-dir", str(root), "--format", "folder"]) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "Traceback" not in err
    out = tmp_path / "ev"
    assert cli(["evaluate", "--model", exported, "--data-dir", str(root), "--format", "folder",
                "--on-error", "skip", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["n"] == 6
    assert "broken.png" in (out / "skipped.csv").read_text()


@pytest.fixture(scope="module")
def two_exports(tmp_path_factory):
    """Two differently initialised tiny models 'trained on' kermany224 (their metadata says so)."""
    import keras

    base = tmp_path_factory.mktemp("ens")
    out = []
    for seed in (0, 1):
        keras.utils.set_random_seed(seed)
        m = build_model("tiny_cnn", num_classes=2, image_size=32, freeze_until=0, class_names=["normal", "pneumonia"])
        out.append(str(export_for_serving(m, base, name=f"m{seed}", class_names=m.class_names, image_size=32,
                                          metadata={"config": {"data_dir": "/data/kermany224"}}).path))
    return out


def _kermany_and_folder(kermany_subset, tmp_path):
    k = kermany_subset(6, 3, 3, name="kermany224")
    folder = tmp_path / "site_b"
    for cls in ("normal", "pneumonia"):
        (folder / cls).mkdir(parents=True)
    for i, p in enumerate(sorted((k / "train" / "NORMAL").iterdir())[:3]):
        shutil.copy(p, folder / "normal" / p.name)
    for p in sorted((k / "train" / "PNEUMONIA").iterdir())[:3]:
        shutil.copy(p, folder / "pneumonia" / p.name)
    return k, folder


@pytest.mark.slow
def test_evaluate_several_sites_one_table(two_exports, kermany_subset, tmp_path):
    k, folder = _kermany_and_folder(kermany_subset, tmp_path)
    out = tmp_path / "sites"
    assert cli(["evaluate", "--model", two_exports[0], "--data-dir", str(k), "--data-dir", str(folder),
                "--out", str(out)]) == 0
    import pandas as pd

    t = pd.read_csv(out / "sites.csv")
    assert list(t["dataset"]) == ["kermany224", "site_b"] and list(t["site"]) == ["internal", "external"]
    assert list(t["images"]) == [12, 6]
    for sub in ("kermany224", "site_b"):  # every site keeps its own full report
        m = json.loads((out / sub / "metrics.json").read_text())
        assert m["n"] == (12 if sub == "kermany224" else 6)
    assert "| kermany224 | internal | 12 |" in (out / "sites.md").read_text()


@pytest.mark.slow
def test_evaluate_ensemble_and_tta_write_entropy(two_exports, kermany_subset, tmp_path):
    import pandas as pd

    from cxr_tf.export import load_exported

    k, _ = _kermany_and_folder(kermany_subset, tmp_path)
    out = tmp_path / "ens"
    assert cli(["evaluate", "--model", two_exports[0], "--model", two_exports[1], "--data-dir", str(k),
                "--out", str(out)]) == 0
    p = pd.read_csv(out / "predictions.csv")
    assert len(p) == 12 and (p["entropy"] >= 0).all() and (p["entropy"] <= np.log(2) + 1e-6).all()
    # the ensemble's probabilities are the mean of its members'
    files = [str(x) for x in sorted((k / "train").rglob("*.jpeg"))]
    by_item = {row["item"]: row["p_pneumonia"] for _, row in p.iterrows()}
    members = [load_exported(e).predict_bytes([open(f, "rb").read() for f in files]) for e in two_exports]
    mean = (members[0] + members[1]) / 2
    got = np.array([next(v for kk, v in by_item.items() if f.endswith(kk.split("/")[-1])) for f in files])
    np.testing.assert_allclose(got, mean[:, 1], atol=1e-5)
    m = json.loads((out / "metrics.json").read_text())
    assert m["threshold"] is None  # an average has no validated threshold: argmax
    out2 = tmp_path / "tta"
    assert cli(["evaluate", "--model", two_exports[0], "--data-dir", str(k), "--tta", "4", "--out", str(out2)]) == 0
    p2 = pd.read_csv(out2 / "predictions.csv")
    assert len(p2) == 12 and p2["mutual_information"].max() > 0  # the views disagree somewhat


def test_evaluate_decides_by_the_exports_class_thresholds(data_dir, tmp_path):
    """A 3-class export with per-class thresholds (and a temperature): evaluate's per-image
    decisions are the served graph's ``decision`` output on real Kermany radiographs."""
    import keras

    from cxr_tf.export import load_exported

    root = tmp_path / "ds"
    picks = {"normal": "IM-", "bacteria": "_bacteria_", "virus": "_virus_"}
    files = []
    for cls, key in picks.items():
        (root / cls).mkdir(parents=True)
        src = "NORMAL" if cls == "normal" else "PNEUMONIA"
        for p in sorted((data_dir / "kermany224" / "train" / src).glob(f"*{key}*"))[:5]:
            shutil.copy(p, root / cls / p.name)
            files.append(root / cls / p.name)
    names = ["normal", "bacteria", "virus"]
    keras.utils.set_random_seed(3)
    m = build_model("tiny_cnn", num_classes=3, image_size=32, freeze_until=0, class_names=names)
    cal = {"method": "temperature", "temperature": 0.5}  # sharpen: thresholds live on the served scale
    plain = load_exported(export_for_serving(m, tmp_path / "e", name="plain", class_names=names, image_size=32,
                                             calibration=cal).path)
    prob = plain.predict_bytes([f.read_bytes() for f in files])
    # thresholds that change decisions: the most frequent arg-max class never passes, the
    # others pass above their median (below it, the rule falls back to the arg-max)
    top = np.bincount(prob.argmax(1), minlength=3).argmax()
    thr = [1.0 if k == top else float(np.median(prob[:, k])) for k in range(3)]
    served = load_exported(export_for_serving(m, tmp_path / "e", name="ops", class_names=names, image_size=32,
                                              calibration=cal, class_thresholds=thr).path)
    out = tmp_path / "eval"
    assert cli(["evaluate", "--model", str(served.path), "--data-dir", str(root), "--format", "folder",
                "--out", str(out)]) == 0
    pred = np.load(out / "predictions.npz")
    by_item = {str(i).split("/")[-1]: str(d) for i, d in zip(pred["items"], pred["decision"])}
    graph = served.serve_bytes([f.read_bytes() for f in files])["decision"]
    assert [by_item[f.name] for f in files] == [g.decode() for g in graph]
    assert (pred["y_pred"] != pred["y_prob"].argmax(1)).any()  # the thresholds mattered on these images
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["thresholds_from"] == "export metadata class_thresholds"
    assert metrics["class_thresholds"] == pytest.approx(dict(zip(names, thr)), rel=1e-6)
    assert "at or above its threshold" in metrics["decision_rule"]
    assert "at or above its threshold" in (out / "report.md").read_text()
    # a run's operating_points.json overrides the export's (here: plain arg-max thresholds of 0)
    ops = tmp_path / "run"
    ops.mkdir()
    (ops / "operating_points.json").write_text(json.dumps({"rule": "youden", "thresholds": dict.fromkeys(names, 0.0)}))
    out2 = tmp_path / "eval2"
    assert cli(["evaluate", "--model", str(served.path), "--data-dir", str(root), "--format", "folder",
                "--operating-points", str(ops), "--out", str(out2)]) == 0
    pred2 = np.load(out2 / "predictions.npz")
    assert (pred2["y_pred"] == pred2["y_prob"].argmax(1)).all()
    assert json.loads((out2 / "metrics.json").read_text())["thresholds_from"].startswith("--operating-points")
