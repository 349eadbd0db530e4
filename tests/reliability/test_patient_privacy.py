"""Nothing identifying a patient leaves the input files (cxr_tf.datasets.privacy).

A folder-per-class DICOM dataset whose headers carry planted identifiers is trained
on, evaluated and exported by the real entry point; every file written (run folder,
TensorBoard events, checkpoints, splits, reports, plots, the decode cache, the
SavedModel with its variables and assets) and everything printed is searched for the
planted values as UTF-8, UTF-16-LE and UTF-16-BE bytes. File names are the user's
choice (neutral here). Patient grouping comes from PatientID through a salted hash.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from _rel_helpers import dicom_bytes

SALT = "test-site-secret-7f3a9c"
PLANTED = {
    "PatientName": "Zaphod^Beeblebrox",
    "PatientBirthDate": "19420525",
    "OtherPatientIDs": "MRN-OTHER-555777",
    "AccessionNumber": "ACC-98765-QQ",
    "InstitutionName": "Magrathea General Hospital",
    "ReferringPhysicianName": "Slartibartfast^Doctor",
    "StudyID": "STUDY-4242-HHGG",
    "StudyInstanceUID": "1.2.826.0.1.3680043.9.424242.1",
    "StudyDate": "20120314",
}
PATIENT_ID = "PHI-123456-XYZ"  # + "-<k>" per patient


def _needles(n_patients: int) -> list[str]:
    vals = list(PLANTED.values()) + [PATIENT_ID] + [f"{PATIENT_ID}-{k:02d}" for k in range(n_patients)]
    vals += ["Zaphod", "Beeblebrox", "Zaphod Beeblebrox", "Slartibartfast", "1942-05-25", "424242", SALT]
    return vals


@pytest.fixture
def dicom_folder(tmp_path):
    from cxr_tf.datasets.synthetic import make_synthetic_cxr

    ds = make_synthetic_cxr(n=48, image_size=32, seed=1, class_names=("normal", "pneumonia"))
    root = tmp_path / "dicoms"
    patients = {p: k for k, p in enumerate(sorted(set(ds.patient_ids)))}
    truth = {}
    for i, (img, pid) in enumerate(zip(ds.items, ds.patient_ids)):
        cls = ds.class_names[ds.class_index()[i]]
        (root / cls).mkdir(parents=True, exist_ok=True)
        raw_id = f"{PATIENT_ID}-{patients[pid]:02d}"
        pixels = np.round(np.asarray(img, np.float64) * 4095).astype(np.uint16)
        path = root / cls / f"img_{i:03d}.dcm"
        path.write_bytes(dicom_bytes(pixels, PatientID=raw_id, **PLANTED))
        truth[str(path)] = raw_id
    return root, truth, len(patients)


def test_planted_identifiers_never_leave_the_dicoms(dicom_folder, tmp_path, monkeypatch, capfd):
    from cxr_tf.experiments import pneumonia_freeze
    from cxr_tf.datasets.privacy import find_identifiers, pseudonymize

    root, truth, n_patients = dicom_folder
    monkeypatch.setenv("CXR_TF_PATIENT_SALT", SALT)
    sanity = find_identifiers([root], _needles(n_patients))
    assert {v for _, v, _ in sanity} >= {PLANTED["PatientName"], PATIENT_ID, PLANTED["PatientBirthDate"]}

    out = tmp_path / "out"
    argv = ["--data-dir", str(root), "--format", "folder", "--classes", "pneumonia", "--smoke",
            "--backbone", "tiny_cnn", "--freeze-until", "0", "--image-size", "32", "--epochs", "1",
            "--runs-dir", str(out / "runs"), "--saved-models-dir", str(out / "saved_models"),
            "--cache-dir", str(out / "cache")]
    assert pneumonia_freeze.main(argv) == 0
    printed = capfd.readouterr()
    (out / "stdout.txt").write_text(printed.out)
    (out / "stderr.txt").write_text(printed.err)

    [run] = list((out / "runs" / "pneumonia_freeze").iterdir())
    export = json.loads((run / "metrics.json").read_text())["export"]["path"]
    written = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()]
    for part in ("splits.csv", "tensorboard/", "checkpoints/best.weights.h5", "report.md", "variables/variables.data",
                 "assets.extra/tf_serving_warmup_requests", "assets.extra/cxr_tf_metadata.json", "cache/"):
        assert any(part in w for w in written), part  # the search below really covers these
    assert (out / "saved_models").joinpath(*export.split("/")[-2:]).is_dir()

    assert find_identifiers([out], _needles(n_patients)) == []

    # patients were grouped by PatientID, and only the salted pseudonym was written
    splits = pd.read_csv(run / "splits.csv")
    expected = {p: pseudonymize(raw, SALT.encode()) for p, raw in truth.items()}
    assert sorted(splits["patient"]) == sorted(expected.values())
    assert splits["patient"].nunique() == n_patients < len(splits)
    assert splits.groupby("patient")["split"].nunique().max() == 1  # no patient in two splits
    assert "PatientID tag (salted hash" in printed.out


def test_pseudonyms_are_salted_and_the_salt_is_a_private_file(tmp_path, monkeypatch):
    from cxr_tf.datasets.privacy import dicom_patient_pseudonym, patient_salt, pseudonymize

    monkeypatch.delenv("CXR_TF_PATIENT_SALT", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    salt = patient_salt()
    f = tmp_path / "config" / "cxr_tf" / "patient_salt"
    assert f.is_file() and (f.stat().st_mode & 0o777) == 0o600 and len(salt) == 64
    assert patient_salt() == salt  # stable: the same split next time
    a, b = pseudonymize(PATIENT_ID, b"site-a"), pseudonymize(PATIENT_ID, b"site-b")
    assert a != b and a.startswith("dcm-") and len(a) == 24 and PATIENT_ID not in a
    assert pseudonymize(f" {PATIENT_ID} ", b"site-a") == a
    p = tmp_path / "x.dcm"
    p.write_bytes(dicom_bytes(np.zeros((8, 8), np.uint8), PatientID=PATIENT_ID, PatientName="Zaphod^Beeblebrox"))
    assert dicom_patient_pseudonym(p, b"site-a") == a
    p.write_bytes(dicom_bytes(np.zeros((8, 8), np.uint8)))
    assert dicom_patient_pseudonym(p, b"site-a") is None


def test_find_identifiers_sees_utf16_and_chunk_borders(tmp_path):
    from cxr_tf.datasets.privacy import find_identifiers

    (tmp_path / "a.bin").write_bytes(b"x" * 10 + "Zaphod".encode("utf-16-le") + b"y")
    (tmp_path / "b.bin").write_bytes(b"x" * 5 + b"Beeblebrox" + b"y" * 5)
    (tmp_path / "c.bin").write_bytes(b"clean")
    hits = find_identifiers([tmp_path], ["Zaphod", "Beeblebrox"], chunk=8)  # needles straddle chunks
    assert sorted((h[0].rsplit("/", 1)[1], h[1], h[2]) for h in hits) == [
        ("a.bin", "Zaphod", "utf-16-le"), ("b.bin", "Beeblebrox", "utf-8")]


def test_folder_loader_itself_pseudonymizes(dicom_folder, monkeypatch):
    """Every reader of a folder gets the grouping (cxr-tf evaluate and perceptual_testset
    load folders through load_dataset, not through the experiments' data step)."""
    from cxr_tf.datasets import load_dataset
    from cxr_tf.datasets.privacy import pseudonymize

    root, truth, n_patients = dicom_folder
    monkeypatch.setenv("CXR_TF_PATIENT_SALT", SALT)
    ds = load_dataset(str(root), "folder")
    assert ds.pseudonymized == len(truth) and "grouped by their PatientID tag" in ds.patients_from
    got = dict(zip(map(str, ds.items), ds.meta["patient_id"]))
    assert got == {p: pseudonymize(raw, SALT.encode()) for p, raw in truth.items()}
    assert ds.meta["patient_id"].nunique() == n_patients and ds.skipped == []
