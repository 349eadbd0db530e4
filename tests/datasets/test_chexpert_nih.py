import gzip

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_tf.datasets.chexpert import CHEXPERT_LABELS, chexpert_patient_id, label_rates, load_chexpert
from cxr_tf.datasets.nih import HARMONIZATION, NIH_LABELS, UNIFIED_LABELS, harmonize, load_nih
from cxr_tf.errors import CXRDatasetError


@pytest.fixture(scope="module")
def chexpert_csv(data_dir):
    p = data_dir / "chexpert_labels" / "chexpert_train.csv.gz"
    if not p.is_file():
        pytest.skip("chexpert_labels not present")
    return p


def _materialise(root, rel_paths, seed=0):
    rng = np.random.default_rng(seed)
    for rel in rel_paths:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 28), dtype=np.uint8)).save(p, format="JPEG")


@pytest.mark.slow
def test_chexpert_loader_on_real_train_csv(chexpert_csv, tmp_path):
    df = pd.read_csv(chexpert_csv, nrows=400)
    picks = df.iloc[[0, 1, 2, 5, 9, 17, 30]]
    lateral = df[df["Frontal/Lateral"] == "Lateral"].iloc[:2]
    lateral = lateral[~lateral.index.isin(picks.index)]
    _materialise(tmp_path, list(picks["Path"]) + list(lateral["Path"]))
    with pytest.raises(CXRDatasetError, match="not on disk"):
        load_chexpert(tmp_path, csv_path=chexpert_csv)
    ds = load_chexpert(tmp_path, csv_path=chexpert_csv, missing="drop", views="frontal")
    front = picks[picks["Frontal/Lateral"] == "Frontal"]
    assert len(ds) == len(front) and ds.multilabel and ds.class_names == CHEXPERT_LABELS
    # labels exactly as published: -1 stays -1, blank is NaN
    ref = front[CHEXPERT_LABELS].to_numpy(np.float32)
    np.testing.assert_array_equal(np.isnan(ds.labels), np.isnan(ref))
    np.testing.assert_array_equal(np.nan_to_num(ds.labels, nan=9), np.nan_to_num(ref, nan=9))
    assert (ds.labels == -1).any()
    assert list(ds.meta["patient_id"]) == [p.split("/")[2] for p in front["Path"]]
    assert all(str(tmp_path) in i for i in ds.items)
    lat = load_chexpert(tmp_path, csv_path=chexpert_csv, missing="drop", views="lateral")
    n_lat = int((picks["Frontal/Lateral"] == "Lateral").sum()) + len(lateral)
    assert set(lat.meta["view"]) == {"lateral"} and len(lat) == n_lat > 0
    both = load_chexpert(tmp_path, csv_path=chexpert_csv, missing="drop", views="all")
    assert len(both) == len(picks) + len(lateral)


@pytest.mark.slow
def test_chexpert_loader_finds_real_train_csv_from_root(chexpert_csv, tmp_path):
    """The real train.csv at <root>/CheXpert-v1.0-small/train.csv, found from the root alone."""
    d = tmp_path / "CheXpert-v1.0-small"
    d.mkdir()
    with gzip.open(chexpert_csv, "rb") as src, open(d / "train.csv", "wb") as dst:
        dst.write(src.read())
    df = pd.read_csv(d / "train.csv")
    assert len(df) == 223414  # the whole real CSV, uncompressed
    picks = df.iloc[[0, 3, 8, 100, 2000, 150000, 223413]]
    _materialise(tmp_path, list(picks["Path"]))
    with pytest.raises(CXRDatasetError, match="not on disk"):
        load_chexpert(tmp_path)
    for root in (tmp_path, d):  # the parent or the dataset folder itself
        ds = load_chexpert(root, missing="drop", views="all")
        assert len(ds) == len(picks) and ds.class_names == CHEXPERT_LABELS
        assert list(ds.meta["path"]) == list(picks["Path"])
        assert all(str(tmp_path / p) == i for p, i in zip(picks["Path"], ds.items))
        ref = picks[CHEXPERT_LABELS].to_numpy(np.float32)
        np.testing.assert_array_equal(np.nan_to_num(ds.labels, nan=9), np.nan_to_num(ref, nan=9))
        assert len(ds.skipped) == len(df) - len(picks)
    front = load_chexpert(tmp_path, missing="drop")  # default views="frontal"
    assert len(front) == int((picks["Frontal/Lateral"] == "Frontal").sum()) and set(front.meta["view"]) == {"frontal"}


def test_chexpert_public_layout_and_errors(tmp_path):
    d = tmp_path / "CheXpert-v1.0-small"
    d.mkdir()
    rows = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT_LABELS) + "\n"
    rel = "CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg"
    rows += f"{rel},Male,73,Frontal,AP," + ",".join(["1.0", "", "-1.0"] + ["0.0"] * 11) + "\n"
    (d / "valid.csv").write_text(rows)
    _materialise(tmp_path, [rel])
    for root in (tmp_path, d):  # the parent or the dataset folder itself
        ds = load_chexpert(root, split="valid")
        assert len(ds) == 1 and ds.meta["patient_id"][0] == "patient64541"
        assert ds.labels[0, 0] == 1 and np.isnan(ds.labels[0, 1]) and ds.labels[0, 2] == -1
    (d / "train.csv").write_text(rows.replace(",-1.0,", ",2.0,"))
    with pytest.raises(CXRDatasetError, match="is not 1, 0, -1 or blank"):
        load_chexpert(tmp_path, split="train")
    with pytest.raises(CXRDatasetError, match="no test.csv"):
        load_chexpert(tmp_path, split="test")
    with pytest.raises(CXRDatasetError):
        chexpert_patient_id("foo/bar.jpg")


@pytest.mark.slow
def test_label_rates_on_real_csv(chexpert_csv):
    r = label_rates(chexpert_csv)
    assert list(r.index) == CHEXPERT_LABELS
    np.testing.assert_allclose(r.sum(axis=1), 1.0, atol=1e-9)
    # well-known facts of CheXpert: Atelectasis has many uncertain labels, No Finding none
    assert r.loc["Atelectasis", "uncertain"] > 0.1 and r.loc["No Finding", "uncertain"] == 0


@pytest.fixture(scope="module")
def nih_dir(data_dir):
    d = data_dir / "nih_chestxray14"
    if not (d / "nih1000_64").is_dir():
        pytest.skip("nih_chestxray14 not present")
    return d


@pytest.mark.slow
def test_nih_loader_on_real_files(nih_dir):
    ds = load_nih(nih_dir / "labels", nih_dir / "nih1000_64")
    ref = pd.read_csv(nih_dir / "nih1000_64" / "labels.csv")
    assert len(ds) == len(ref) == 800 and ds.class_names == NIH_LABELS
    got = dict(zip(ds.meta["image"], ds.labels))
    for _, row in ref.sample(50, random_state=0).iterrows():
        name = row["path"].split("/")[-1]
        fs = set(row["finding_labels"].split("|"))
        assert [float(n in fs) for n in NIH_LABELS] == list(got[name])
    pids = dict(zip(ds.meta["image"], ds.meta["patient_id"]))
    assert all(pids[p.split("/")[-1]] == str(i) for p, i in zip(ref["path"], ref["patient_id"]))
    assert not np.isnan(ds.labels).any()
    pa = load_nih(nih_dir / "labels", nih_dir / "nih1000_64", views="PA")
    assert 0 < len(pa) < len(ds) and set(pa.meta["view"]) == {"PA"}


@pytest.mark.slow
def test_harmonize_maps_and_keeps(nih_dir):
    ds = harmonize(load_nih(nih_dir / "labels", nih_dir / "nih1000_64"))
    assert ds.class_names == UNIFIED_LABELS
    j_eff, j_orig = UNIFIED_LABELS.index("Pleural Effusion"), NIH_LABELS.index("Effusion")
    raw = load_nih(nih_dir / "labels", nih_dir / "nih1000_64")
    np.testing.assert_array_equal(ds.labels[:, j_eff], raw.labels[:, j_orig])
    for name in ("Lung Opacity", "Fracture", "Support Devices", "Lung Lesion"):  # CheXpert-only: unknown
        assert np.isnan(ds.labels[:, UNIFIED_LABELS.index(name)]).all()
    for name in ("Mass", "Nodule", "Infiltration", "Hernia"):  # NIH-only: kept
        assert not np.isnan(ds.labels[:, UNIFIED_LABELS.index(name)]).any()
    assert len(UNIFIED_LABELS) == 14 + 7 and set(HARMONIZATION) == set(NIH_LABELS)
    with pytest.raises(CXRDatasetError, match="map onto one name"):
        harmonize(raw, mapping={**HARMONIZATION, "Mass": "Nodule"})
