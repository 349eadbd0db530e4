import numpy as np
import pandas as pd
import pytest

from cxr_tf.datasets import (
    KERMANY_3CLASS,
    detect_format,
    kermany_patient_id,
    load_csv_manifest,
    load_dataset,
    load_folder,
    load_kermany,
    load_medmnist,
)
from cxr_tf.errors import CXRDatasetError


@pytest.mark.parametrize(
    "name,pid",
    [
        ("person1000_bacteria_2931.jpeg", "person1000"),
        ("person447_virus_921_1.jpeg", "person447"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("IM-0629-0001-0002.jpeg", "IM-0629"),
        ("NORMAL2-IM-0383-0001.jpeg", "NORMAL2-IM-0383"),
    ],
)
def test_kermany_patient_ids(name, pid):
    assert kermany_patient_id(name) == pid


def test_kermany_patient_id_unknown_names_the_file():
    with pytest.raises(CXRDatasetError, match="scan_01.jpeg"):
        kermany_patient_id("scan_01.jpeg")


def test_kermany224_real(kermany_dir):
    ds = load_kermany(kermany_dir)
    assert ds.class_names == KERMANY_3CLASS
    assert ds.class_counts() == {"bacterial": 2530, "viral": 1345, "normal": 1341}
    assert len(ds) == 5216 and ds.labels.shape == (5216, 3)
    # the same person can have both bacterial and viral images: ids come from the name
    assert ds.meta["patient_id"].nunique() < len(ds)
    assert set(ds.meta["kermany_split"]) == {"train"}
    # agrees with the patient column published in labels.csv for pneumonia files
    ref = pd.read_csv(kermany_dir / "labels.csv")
    ref = ref[ref["patient"].notna()].set_index("path")["patient"].str.strip()
    rel = ds.meta["item"].str.replace(str(kermany_dir) + "/", "", regex=False)
    got = dict(zip(rel, ds.meta["patient_id"]))
    assert all(got[p] == v for p, v in ref.items())

    two = load_kermany(kermany_dir, classes="pneumonia")
    assert two.class_counts() == {"normal": 1341, "pneumonia": 3875}


def test_kermany_skip_unlabelled(tmp_path):
    (tmp_path / "train" / "PNEUMONIA").mkdir(parents=True)
    (tmp_path / "train" / "NORMAL").mkdir(parents=True)
    (tmp_path / "train" / "PNEUMONIA" / "person1_bacteria_1.jpeg").write_bytes(b"x")
    (tmp_path / "train" / "PNEUMONIA" / "mystery.jpeg").write_bytes(b"x")
    (tmp_path / "train" / "NORMAL" / "IM-0001-0001.jpeg").write_bytes(b"x")
    with pytest.raises(CXRDatasetError, match="mystery.jpeg"):
        load_kermany(tmp_path)
    ds = load_kermany(tmp_path, on_error="skip")
    assert len(ds) == 2 and ds.skipped[0][0].endswith("mystery.jpeg")


def test_medmnist_real(data_dir):
    ds = load_medmnist(data_dir / "pneumoniamnist")
    assert ds.in_memory and ds.items.shape == (5232, 28, 28)
    assert ds.class_names == ["normal", "pneumonia"]
    assert ds.class_counts() == {"normal": 1214 + 135, "pneumonia": 3494 + 389}
    assert set(ds.meta["medmnist_split"]) == {"train", "val"}


def test_medmnist_nan_is_an_error(tmp_path):
    x = np.zeros((4, 8, 8), np.float32)
    x[1, 2, 2] = np.nan
    np.savez(tmp_path / "bad.npz", train_images=x, train_labels=np.zeros((4, 1)))
    with pytest.raises(CXRDatasetError, match="NaN"):
        load_medmnist(tmp_path / "bad.npz", splits=("train",))


def test_folder_and_csv_real(data_dir, caplog):
    d = data_dir / "covid19_radiography"
    with caplog.at_level("WARNING", logger="cxr_tf.datasets.sources"):
        ds = load_folder(d)
    # one logged line with the manifest hint, no UserWarning with a source line
    assert len(caplog.records) == 1 and "own patient" in caplog.text and "patient_id" in caplog.text
    assert ds.class_names == ["COVID", "Normal"] and len(ds) == 1000
    assert "own patient" in ds.patients_from
    m = load_csv_manifest(d / "labels.csv")
    assert m.class_counts() == {"COVID": 500, "Normal": 500}
    assert detect_format(d / "labels.csv") == "csv" and detect_format(data_dir / "kermany224") == "kermany"


def test_folder_patient_regex(tmp_path):
    for c, names in {"a": ["p1_x.png", "p1_y.png"], "b": ["p2_x.png"]}.items():
        (tmp_path / c).mkdir()
        for n in names:
            (tmp_path / c / n).write_bytes(b"")
    ds = load_folder(tmp_path, patient_regex=r"^(p\d+)_")
    assert list(ds.meta["patient_id"]) == ["p1", "p1", "p2"]
    with pytest.raises(CXRDatasetError, match="does not match"):
        load_folder(tmp_path, patient_regex=r"^(q\d+)_")


def test_csv_manifest_errors(tmp_path):
    (tmp_path / "img").mkdir()
    pd.DataFrame({"path": ["img/a.png", "img/b.png"], "label": ["normal", "alien"], "patient_id": [1, 2]}).to_csv(
        tmp_path / "m.csv", index=False
    )
    with pytest.raises(CXRDatasetError, match=r"unknown labels \['alien'\] in rows \[3\]"):
        load_csv_manifest(tmp_path / "m.csv", class_names=["normal", "pneumonia"])
    pd.DataFrame({"path": ["../../etc/passwd"], "label": ["normal"], "patient_id": [1]}).to_csv(
        tmp_path / "esc.csv", index=False
    )
    with pytest.raises(CXRDatasetError, match="escapes the data root"):
        load_csv_manifest(tmp_path / "esc.csv")
    pd.DataFrame({"file": ["a.png"]}).to_csv(tmp_path / "nocol.csv", index=False)
    with pytest.raises(CXRDatasetError, match="missing column 'path'"):
        load_csv_manifest(tmp_path / "nocol.csv")


def test_load_dataset_unknown_format(tmp_path):
    with pytest.raises(CXRDatasetError, match="unknown format"):
        load_dataset(tmp_path, "tiff-stack")


def _kermany_named_class_folders(kermany_dir, dest, n=6):
    """``normal/`` and ``pneumonia/`` folders (lower case, no train/ level) of real Kermany
    files that keep their Kermany names: a user's own 2-class set."""
    train = kermany_dir / "train"
    normal = sorted((train / "NORMAL").iterdir())[:n]
    pneu = sorted(p for p in (train / "PNEUMONIA").iterdir() if "bacteria" in p.name)[:n]
    pneu += sorted(p for p in (train / "PNEUMONIA").iterdir() if "virus" in p.name)[:n]
    for cls, files in (("normal", normal), ("pneumonia", pneu)):
        (dest / cls).mkdir(parents=True)
        for f in files:
            (dest / cls / f.name).symlink_to(f)
    return dest


def test_kermany_named_class_folders_stay_two_classes(kermany_dir, tmp_path, caplog):
    from cxr_tf.datasets import is_kermany_layout

    d = _kermany_named_class_folders(kermany_dir, tmp_path / "mine")
    assert not is_kermany_layout(d) and detect_format(d) == "folder"
    with caplog.at_level("WARNING"):
        ds = load_dataset(d)
    assert ds.class_names == ["normal", "pneumonia"]
    assert ds.class_counts() == {"normal": 6, "pneumonia": 12}
    assert "manifest" in caplog.text
    # upper-case NORMAL/ PNEUMONIA/ without a train/test/val level are still the user's classes
    (tmp_path / "upper").mkdir()
    for a, b in (("normal", "NORMAL"), ("pneumonia", "PNEUMONIA")):
        (tmp_path / "upper" / b).symlink_to(d / a, target_is_directory=True)
    assert detect_format(tmp_path / "upper") == "folder"
    # the published layout is Kermany's, from the root, the split folder or the data root
    assert detect_format(kermany_dir) == "kermany" and detect_format(kermany_dir / "train") == "kermany"


def test_csv_manifest_classes_from_labels_and_named_after_the_csv(tmp_path, caplog):
    (tmp_path / "img").mkdir()
    df = pd.DataFrame({"path": [f"img/{i}.png" for i in range(4)],
                       "label": ["normal", "pneumonia", "pneumonia", "normal"], "patient_id": [1, 2, 3, 4]})
    df.to_csv(tmp_path / "cohort_a.csv", index=False)
    ds = load_csv_manifest(tmp_path / "cohort_a.csv")
    assert ds.class_names == ["normal", "pneumonia"] and ds.name == "cohort_a"
    assert ds.patients_from == "manifest column 'patient_id'"
    with pytest.raises(CXRDatasetError, match="drop --classes"):
        load_csv_manifest(tmp_path / "cohort_a.csv", class_names=["bacterial", "viral", "normal"])
    df.drop(columns="patient_id").to_csv(tmp_path / "nopid.csv", index=False)
    with caplog.at_level("WARNING"):
        load_csv_manifest(tmp_path / "nopid.csv")
    assert "path,label,patient_id" in caplog.text


def test_patient_subset_real_kermany(kermany_dir):
    """--max-images / --fraction on real data: whole patients, class mix kept, reproducible."""
    from cxr_tf.datasets import patient_subset
    from cxr_tf.errors import CXRConfigError

    ds = load_kermany(kermany_dir, classes="pneumonia")
    sub = patient_subset(ds, max_images=300, seed=0)
    assert 250 <= len(sub) <= 300
    full_n = pd.Series(ds.patient_ids).value_counts()
    sub_n = pd.Series(sub.patient_ids).value_counts()
    assert (sub_n == full_n[sub_n.index]).all()  # no patient cut in half
    share = lambda d: d.class_counts()["pneumonia"] / len(d)
    assert abs(share(sub) - share(ds)) < 0.05
    assert list(patient_subset(ds, max_images=300, seed=0).items) == list(sub.items)
    assert list(patient_subset(ds, max_images=300, seed=1).items) != list(sub.items)
    tenth = patient_subset(ds, fraction=0.1, seed=0)
    assert abs(len(tenth) / len(ds) - 0.1) < 0.02 and abs(share(tenth) - share(ds)) < 0.05
    assert patient_subset(ds) is ds
    with pytest.raises(CXRConfigError, match="--fraction"):
        patient_subset(ds, fraction=1.5)
