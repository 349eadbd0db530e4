"""NIH ChestX-ray14 (Wang et al. 2017) -> the dataset contract, and label harmonisation.

Layout: ``Data_Entry_2017.csv`` (or ``Data_Entry_2017_v2020.csv``, plain or .gz;
columns ``Image Index``, ``Finding Labels`` ``A|B``, ``Patient ID``, ``View Position``)
and an image folder (``images/`` or ``images_001/`` ... as published; any depth, files
matched by name). Rows whose image is not in the folder are left out (the label file
covers 112,120 images; a copy usually holds a subset).

NIH labels are 0 / 1 (text-mined, no "uncertain"); "No Finding" is all zeros.

Harmonisation (:data:`HARMONIZATION`) maps NIH names onto CheXpert's where they mean
the same finding and keeps the rest under their own name; :func:`harmonize` relabels any
dataset onto one pathology list, with NaN where a source says nothing about a label.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_tf.datasets.chexpert import CHEXPERT_LABELS
from cxr_tf.datasets.contract import CXRDataset
from cxr_tf.errors import CXRDatasetError

#: The 14 NIH findings, as spelled in ``Finding Labels``.
NIH_LABELS = [
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
]

#: NIH name -> harmonised name. Same finding -> CheXpert's name; otherwise kept.
#: Mass and Nodule are not mapped onto CheXpert's "Lung Lesion": that label is broader
#: (any lesion), so an NIH Mass/Nodule negative is not a Lung Lesion negative.
#: Infiltration has no CheXpert counterpart ("Lung Opacity" is broader). Pleural_Thickening
#: is one of several findings under CheXpert's "Pleural Other": kept.
HARMONIZATION = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Effusion": "Pleural Effusion",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
    "Infiltration": "Infiltration",
    "Mass": "Mass",
    "Nodule": "Nodule",
    "Emphysema": "Emphysema",
    "Fibrosis": "Fibrosis",
    "Pleural_Thickening": "Pleural Thickening",
    "Hernia": "Hernia",
}

#: The one pathology list: CheXpert's 14, then the NIH-only findings.
UNIFIED_LABELS = CHEXPERT_LABELS + [n for n in HARMONIZATION.values() if n not in CHEXPERT_LABELS]

_IMAGE_EXT = (".png", ".jpg", ".jpeg")


def _find_label_csv(path: Path) -> Path:
    if path.is_file():
        return path
    for pattern in ("Data_Entry_2017*.csv", "Data_Entry_2017*.csv.gz", "*/Data_Entry_2017*.csv",
                    "*/Data_Entry_2017*.csv.gz"):
        found = sorted(path.glob(pattern))
        if found:
            return found[0]
    raise CXRDatasetError(path, "no Data_Entry_2017*.csv(.gz) here or one level down (NIH ChestX-ray14 layout)")


def load_nih(
    labels_csv: str | os.PathLike,
    image_dir: str | os.PathLike | None = None,
    views: str = "all",
) -> CXRDataset:
    """Load NIH ChestX-ray14 images that are present, with their 14 findings.

    Args:
        labels_csv: the ``Data_Entry_2017*.csv(.gz)`` file or a folder holding it.
        image_dir: the image folder, searched recursively (default: the CSV's folder).
        views: ``all``, ``PA`` or ``AP`` (``View Position``).

    Returns:
        A multi-label :class:`CXRDataset` (classes :data:`NIH_LABELS`, 0/1) with meta
        ``patient_id``, ``image``, ``view``, ``age``, ``sex``, ``follow_up``, ``finding_labels``.
    """
    csv = _find_label_csv(Path(labels_csv))
    image_dir = Path(image_dir) if image_dir else csv.parent
    if not image_dir.is_dir():
        raise CXRDatasetError(image_dir, "NIH image folder not found")
    try:
        df = pd.read_csv(csv, dtype={"Patient ID": str})
    except Exception as e:
        raise CXRDatasetError(csv, f"cannot parse NIH label CSV: {e}") from None
    need = ["Image Index", "Finding Labels", "Patient ID"]
    if [c for c in need if c not in df.columns]:
        raise CXRDatasetError(csv, f"missing NIH columns {[c for c in need if c not in df.columns]}")
    if views not in ("all", "PA", "AP"):
        raise CXRDatasetError(None, f"views must be all, PA or AP; got {views!r}")
    files = {p.name: p for p in image_dir.rglob("*") if p.suffix.lower() in _IMAGE_EXT and p.is_file()}
    df = df[df["Image Index"].isin(files)].reset_index(drop=True)
    if views != "all":
        df = df[df["View Position"] == views].reset_index(drop=True)
    if len(df) == 0:
        raise CXRDatasetError(image_dir, f"none of the images listed in {csv.name} are in this folder")
    findings = df["Finding Labels"].fillna("").str.split("|")
    unknown = sorted({f for fs in findings for f in fs} - set(NIH_LABELS) - {"No Finding", ""})
    if unknown:
        raise CXRDatasetError(csv, f"unknown findings {unknown[:5]} (expected {NIH_LABELS} or 'No Finding')")
    labels = np.array([[float(n in fs) for n in NIH_LABELS] for fs in findings], np.float32)
    meta = pd.DataFrame({
        "item": [str(files[n]) for n in df["Image Index"]],
        "image": df["Image Index"].to_numpy(),
        "patient_id": df["Patient ID"].astype(str).str.lstrip("0").replace("", "0").to_numpy(),
        "finding_labels": df["Finding Labels"].to_numpy(),
    })
    for src, dst in (("View Position", "view"), ("Patient Age", "age"), ("Patient Gender", "sex"),
                     ("Follow-up #", "follow_up")):
        if src in df.columns:
            meta[dst] = df[src].to_numpy()
    meta["source"] = "nih"
    return CXRDataset(meta["item"].tolist(), labels, list(NIH_LABELS), meta, name="nih_chestxray14", multilabel=True)


def harmonize(ds: CXRDataset, names: list[str] | None = None, mapping: dict[str, str] | None = None) -> CXRDataset:
    """Relabel a multi-label dataset onto one pathology list.

    Each source column is renamed through ``mapping`` (default :data:`HARMONIZATION`;
    names not in it are kept) and placed in ``names`` (default :data:`UNIFIED_LABELS`);
    target labels the source does not have are NaN (unknown), never 0.

    Raises:
        CXRDatasetError: two source columns map onto one name, or a mapped name is not
            in ``names`` (a finding would be lost silently).
    """
    names = list(names or UNIFIED_LABELS)
    mapping = HARMONIZATION if mapping is None else mapping
    new = [mapping.get(c, c) for c in ds.class_names]
    if len(set(new)) != len(new):
        raise CXRDatasetError(None, f"{ds.name}: several columns map onto one name: {new}")
    lost = [c for c in new if c not in names]
    if lost:
        raise CXRDatasetError(None, f"{ds.name}: labels {lost} are not in the target list {names}")
    lab = np.full((len(ds), len(names)), np.nan, np.float32)
    for j, c in enumerate(new):
        lab[:, names.index(c)] = ds.labels[:, j]
    return CXRDataset(ds.items, lab, names, ds.meta, ds.name, multilabel=True)
