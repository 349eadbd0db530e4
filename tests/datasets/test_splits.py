import numpy as np
import pandas as pd
import pytest

from cxr_tf.datasets import CXRDataset, check_leakage, kfold_patient_splits, load_splits, patient_split, save_splits
from cxr_tf.errors import CXRLeakageError


def _toy(n_patients=200, seed=0):
    rng = np.random.default_rng(seed)
    pids, cls = [], []
    for p in range(n_patients):
        c = rng.integers(0, 3)
        for _ in range(rng.integers(1, 4)):
            pids.append(f"p{p}")
            cls.append(c)
    labels = np.eye(3, dtype=np.float32)[cls]
    items = [f"img{i}.png" for i in range(len(pids))]
    return CXRDataset(items, labels, ["a", "b", "c"], pd.DataFrame({"patient_id": pids, "item": items}), name="toy")


def test_patient_split_disjoint_stratified_repeatable():
    ds = _toy()
    s = patient_split(ds, (0.8, 0.1, 0.1), seed=3)
    check_leakage(s, ds.patient_ids)
    pats = {k: set(ds.patient_ids[s == k]) for k in ("train", "val", "test")}
    assert not (pats["train"] & pats["val"]) and not (pats["train"] & pats["test"]) and not (pats["val"] & pats["test"])
    n_p = len(set(ds.patient_ids))
    assert abs(len(pats["train"]) / n_p - 0.8) < 0.03 and abs(len(pats["test"]) / n_p - 0.1) < 0.03
    # stratified by patient: the class shares of test patients match the whole within rounding
    per_patient = pd.DataFrame({"p": ds.patient_ids, "c": ds.class_index(), "s": s}).drop_duplicates("p")
    whole = per_patient["c"].value_counts(normalize=True).sort_index()
    test = per_patient[per_patient["s"] == "test"]["c"].value_counts(normalize=True).sort_index()
    assert (whole - test).abs().max() < 0.06
    assert (patient_split(ds, (0.8, 0.1, 0.1), seed=3) == s).all()
    assert not (patient_split(ds, (0.8, 0.1, 0.1), seed=4) == s).all()


def test_kfold_disjoint_and_covering():
    ds = _toy()
    folds = kfold_patient_splits(ds, k=5, seed=0)
    val_all = np.concatenate([v for _, v in folds])
    assert sorted(val_all) == list(range(len(ds)))
    for tr, va in folds:
        assert not set(ds.patient_ids[tr]) & set(ds.patient_ids[va])
    assert [list(v) for _, v in kfold_patient_splits(ds, 5, 0)] == [list(v) for _, v in folds]


def test_leakage_fails_loudly():
    with pytest.raises(CXRLeakageError, match="p1"):
        check_leakage(["train", "test", "train"], ["p1", "p1", "p2"])


def test_save_load_roundtrip(tmp_path):
    ds = _toy(50)
    s = patient_split(ds, seed=1)
    save_splits(tmp_path / "splits.csv", ds, s)
    df = pd.read_csv(tmp_path / "splits.csv")
    assert list(df.columns[:3]) == ["item", "patient", "split"]
    assert (load_splits(tmp_path / "splits.csv", ds) == s).all()


def _files(root, n_patients=30):
    """A dataset of file paths under ``root``/{train,test}/<class>/ (no 'item' column)."""
    ds = _toy(n_patients)
    paths = [str(root / ("train" if i % 3 else "test") / ds.class_names[c] / f"img{i}.png")
             for i, c in enumerate(ds.class_index())]
    return CXRDataset(paths, ds.labels, ds.class_names, pd.DataFrame({"patient_id": ds.patient_ids}), name="files")


def test_saved_splits_name_no_machine_folder_and_reload_elsewhere(tmp_path):
    """splits.csv holds paths relative to the data, so it reloads where the data lives on another machine."""
    here = _files(tmp_path / "machine_a" / "data" / "kermany224")
    s = patient_split(here, seed=2)
    save_splits(tmp_path / "splits.csv", here, s)
    text = (tmp_path / "splits.csv").read_text()
    items = pd.read_csv(tmp_path / "splits.csv")["item"].str.replace("\\", "/")
    assert str(tmp_path) not in text and items.str.match(r"^(train|test)/[abc]/img\d+\.png$").all()
    assert (load_splits(tmp_path / "splits.csv", here) == s).all()
    there = _files(tmp_path / "elsewhere" / "kermany224")
    assert (load_splits(tmp_path / "splits.csv", there) == s).all()
    # a subset still matches by its trailing path parts
    sub = there.subset(np.arange(len(there)) % 2 == 0)
    assert (load_splits(tmp_path / "splits.csv", sub) == s[::2]).all()
