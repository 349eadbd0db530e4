"""The 3-class COVID-19 / pneumonia / normal dataset, on the real sources under CXR_DATA_DIR."""
import numpy as np
import pandas as pd
import pytest

from cxr_tf.datasets import check_leakage, load_covid_dataset, patient_split
from cxr_tf.datasets.covid import (COVID_3CLASS, format_source_mix, load_covid19_radiography, load_covid_ieee8023,
                                   shortcut_warnings, source_mix)
from cxr_tf.errors import CXRDatasetError


@pytest.fixture(scope="module")
def covid3(data_dir):
    for s in ("covid_ieee8023", "covid19_radiography", "kermany224"):
        if not (data_dir / s).is_dir():
            pytest.skip(f"{s} not present")
    with pytest.warns(UserWarning, match="no patient ids"):
        return load_covid_dataset(data_dir)


def test_harmonised_labels_and_sources(covid3, data_dir):
    assert covid3.class_names == COVID_3CLASS == ["normal", "pneumonia", "covid"]
    assert not np.isnan(covid3.labels).any() and (covid3.labels.sum(1) == 1).all()
    lab = np.array(covid3.class_names)[covid3.class_index()]
    src = covid3.meta["source"].to_numpy()
    idx = pd.read_csv(data_dir / "covid_ieee8023" / "index.csv")
    n_ieee = int(((idx.covid == 1) & idx.view.isin(["PA", "AP", "AP Supine"])).sum())
    assert (src == "covid_ieee8023").sum() == n_ieee and set(lab[src == "covid_ieee8023"]) == {"covid"}
    assert set(lab[src == "kermany224"]) == {"normal", "pneumonia"}
    assert (lab[src == "kermany224"] == "pneumonia").sum() == 3875  # bacterial + viral
    assert dict(pd.Series(lab[src == "covid19_radiography"]).value_counts()) == {"covid": 500, "normal": 500}
    # patient ids: per source, prefixed; ieee8023 patients with several images stay one patient
    pid = covid3.patient_ids
    ieee = pid[src == "covid_ieee8023"]
    assert all(p.startswith("covid_ieee8023:") for p in ieee) and len(set(ieee)) < len(ieee)
    assert all(p.startswith("kermany224:person") or p.startswith("kermany224:") for p in pid[src == "kermany224"])


def test_patient_split_and_source_mix_table(covid3):
    split = patient_split(covid3, (0.8, 0.1, 0.1), seed=0)
    check_leakage(split, covid3.patient_ids)
    t = source_mix(covid3, split)
    assert set(t["split"]) == {"train", "val", "test"}
    assert np.allclose(t.groupby(["split", "class"])["share"].sum(), 1.0)
    assert t["images"].sum() == len(covid3)
    text = format_source_mix(t)
    assert "kermany224" in text and "%" in text
    warns = shortcut_warnings(t)
    # pediatric Kermany is the only pneumonia source: flagged in every split
    assert sum("'pneumonia' is 100% kermany224" in w for w in warns) == 3
    assert any("source covid_ieee8023 is 100% 'covid'" in w for w in warns)
    assert not any("'normal'" in w and "train" in w for w in warns)  # normal is 73/27: below 80%


def test_per_class_draw_and_binary(data_dir, covid3):
    with pytest.warns(UserWarning):
        b = load_covid_dataset(data_dir, per_class=40, seed=3, binary=True)
    assert b.class_names == ["non_covid", "covid"]
    assert b.class_counts() == {"non_covid": 80, "covid": 40}
    with pytest.warns(UserWarning):
        b2 = load_covid_dataset(data_dir, per_class=40, seed=3, binary=True)
    assert list(b.items) == list(b2.items)  # seeded


def test_cross_source_copies_share_a_patient(covid3):
    """covid19_radiography re-publishes ieee8023 images: copies are grouped with their original's patient."""
    assert covid3.n_cross_source_duplicates > 20
    dup = covid3.meta[covid3.meta["duplicate_of"] != ""]
    assert set(dup["source"]) == {"covid19_radiography"}
    orig = covid3.meta.set_index("item").loc[dup["duplicate_of"], "patient_id"].to_numpy()
    assert (dup["patient_id"].to_numpy() == orig).all()
    split = patient_split(covid3, (0.8, 0.1, 0.1), seed=0)
    where = dict(zip(covid3.item_names, split))
    assert all(where[a] == where[b] for a, b in zip(dup["item"], dup["duplicate_of"]))


def test_bad_layouts_are_clear_errors(tmp_path):
    with pytest.raises(CXRDatasetError, match="index.csv not found"):
        load_covid_ieee8023(tmp_path)
    (tmp_path / "labels.csv").write_text("path,label\nCOVID/a.png,COVID\n")
    with pytest.raises(CXRDatasetError, match="a.png.*missing"):
        load_covid19_radiography(tmp_path)
    (tmp_path / "labels.csv").write_text("path,label\nX/a.png,Flu\n")
    with pytest.raises(CXRDatasetError, match="unknown labels"):
        load_covid19_radiography(tmp_path)
    with pytest.raises(CXRDatasetError, match="unknown sources"):
        load_covid_dataset(tmp_path, sources=["nih"])
