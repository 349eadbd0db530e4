"""Normal / pneumonia views of the public sources whose licences allow sharing derived
weights, each split by patient on its own (the embedded preset's training data,
``cxr_tf.experiments.train_preset``).

* kermany224 (CC BY 4.0): normal vs pneumonia (bacterial + viral), with the 3-class patient
  split every Kermany run draws, so 2-class runs, 3-class runs and the preset share it;
* NIH nih1000_64 adults: "No Finding" = normal; Pneumonia, Consolidation or Infiltration =
  pneumonia; other findings left out;
* covid_ieee8023: the CC BY 3.0 / 4.0 frontal images only.

Every loader returns a :class:`~cxr_tf.datasets.CXRDataset` with ``meta['assigned_split']``
(train / val / test per item) and ``meta['source']``. :func:`load_external` reads a collection
never trained on (covid19_radiography, COVID-19 counted as pneumonia) for the external check.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

SOURCES = ("kermany224", "nih1000_64", "covid_ieee8023")
CLASSES = ["normal", "pneumonia"]
NIH_PNEUMONIA_FINDINGS = ("Pneumonia", "Consolidation", "Infiltration")
IEEE_SHAREABLE = ("CC BY 3.0", "CC BY 4.0", "CC BY")
LICENCES = {
    "kermany224": "CC BY 4.0 (Kermany et al. 2018, Mendeley 10.17632/rscbjbr9sj)",
    "nih1000_64": "NIH ChestX-ray14: unrestricted use, cite Wang et al. 2017",
    "covid_ieee8023": "CC BY 3.0 / 4.0 images only (per-image licence in the collection's metadata; Cohen et al.)",
}


def _dataset(items, labels, meta, name):
    import pandas as pd

    from cxr_tf.datasets import CXRDataset

    meta = pd.DataFrame(meta)
    onehot = np.zeros((len(items), 2), np.float32)
    onehot[np.arange(len(items)), [CLASSES.index(c) for c in labels]] = 1.0
    meta["label"] = list(labels)
    meta["source"] = name
    return CXRDataset(list(items), onehot, CLASSES, meta, name=name)


def load_kermany_source(root: Path, seed: int):
    """kermany224 as normal / pneumonia with the 3-class patient split of pneumonia_freeze."""
    from cxr_tf.datasets import load_kermany, patient_split

    k3 = load_kermany(root / "kermany224", classes="3class")
    split = patient_split(k3, (0.8, 0.1, 0.1), seed=seed)
    ds = k3.select_classes({"normal": "normal", "bacterial": "pneumonia", "viral": "pneumonia"}, CLASSES)
    ds.meta["label"] = np.array(CLASSES)[ds.class_index()]
    ds.meta["source"], ds.name = "kermany224", "kermany224"
    ds.meta["assigned_split"] = split
    return ds


def _patient_holdout(patients: np.ndarray, share: float, seed: int) -> set:
    uniq = np.unique(patients)
    rng = np.random.default_rng(seed)
    n = max(1, int(round(share * len(uniq))))
    return set(rng.choice(uniq, n, replace=False).tolist())


def load_nih_source(root: Path, seed: int):
    """nih1000_64: adults, No Finding -> normal, pneumonia-like findings -> pneumonia.
    Published ``valid`` patients -> test; 10% of the other patients -> val."""
    import pandas as pd

    from cxr_tf.errors import CXRDatasetError

    base = root / "nih_chestxray14" / "nih1000_64"
    csv = base / "labels.csv"
    if not csv.is_file():
        raise CXRDatasetError(csv, "nih1000_64 labels.csv not found")
    df = pd.read_csv(csv, dtype={"patient_id": str})
    f = df["finding_labels"].fillna("")
    pneu = f.str.split("|").apply(lambda fs: any(x in NIH_PNEUMONIA_FINDINGS for x in fs))
    keep = (f == "No Finding") | pneu
    df, pneu = df[keep].reset_index(drop=True), pneu[keep].reset_index(drop=True)
    pid = ("nih_" + df["patient_id"].astype(str)).to_numpy()
    test_patients = set(pid[df["split"].to_numpy() == "valid"])
    val_patients = _patient_holdout(np.array([p for p in pid if p not in test_patients]), 0.1, seed)
    split = np.array(["test" if p in test_patients else "val" if p in val_patients else "train" for p in pid], object)
    meta = {"item": [str(base / p) for p in df["path"]], "patient_id": pid, "finding": f[keep].to_numpy(),
            "view": df["view"].to_numpy(), "age": df["age"].to_numpy(), "sex": df["sex"].to_numpy(),
            "assigned_split": split}
    return _dataset(meta["item"], np.where(pneu, "pneumonia", "normal"), meta, "nih1000_64")


def load_ieee_source(root: Path, seed: int):
    """covid_ieee8023, CC BY images only, frontal views; patient-level 8:1:1."""
    import pandas as pd

    from cxr_tf.datasets import patient_split
    from cxr_tf.errors import CXRDatasetError

    base = root / "covid_ieee8023"
    index = base / "index.csv"
    if not index.is_file():
        raise CXRDatasetError(index, "covid_ieee8023 index.csv not found")
    df = pd.read_csv(index, dtype={"patientid": str})
    df = df[df["license"].isin(IEEE_SHAREABLE) & df["view"].isin(("PA", "AP", "AP Supine"))].reset_index(drop=True)
    labels = np.where(df["finding"] == "No Finding", "normal", "pneumonia")
    meta = {"item": [str(base / p) for p in df["png"]], "patient_id": ("ieee_" + df["patientid"]).to_numpy(),
            "finding": df["finding"].to_numpy(), "view": df["view"].to_numpy(), "licence": df["license"].to_numpy()}
    for col in ("sex", "age"):
        if col in df.columns:
            meta[col] = df[col].to_numpy()
    ds = _dataset(meta["item"], labels, meta, "covid_ieee8023")
    ds.meta["assigned_split"] = patient_split(ds, (0.8, 0.1, 0.1), seed=seed)
    return ds


LOADERS = {"kermany224": load_kermany_source, "nih1000_64": load_nih_source, "covid_ieee8023": load_ieee_source}


def load_external(name: str, root: Path):
    """A collection never trained on, as normal / pneumonia (COVID-19 counts as pneumonia)."""
    from cxr_tf.datasets.covid import load_covid19_radiography

    if name != "covid19_radiography":
        from cxr_tf.errors import CXRConfigError

        raise CXRConfigError(f"--external: unknown collection {name!r} (known: covid19_radiography)")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no patient ids": each image is its own patient, as documented
        ds = load_covid19_radiography(root / name)
    labels = np.where(ds.meta["label"] == "normal", "normal", "pneumonia")
    return _dataset(ds.items, labels, {"item": ds.items, "patient_id": ds.meta["patient_id"].to_numpy(),
                                       "original_label": ds.meta["label"].to_numpy()}, name)


# ----------------------------------------------------------------------------- evaluation of the preset
