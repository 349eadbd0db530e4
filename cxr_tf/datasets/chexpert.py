"""CheXpert (Irvin et al. 2019) in its public layout -> the dataset contract.

Layout (``CheXpert-v1.0-small`` or ``CheXpert-v1.0``)::

    ROOT/CheXpert-v1.0-small/train.csv
    ROOT/CheXpert-v1.0-small/valid.csv
    ROOT/CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg

The CSV's ``Path`` column is relative to ``ROOT`` (it starts with the dataset folder
name). ``root`` may be ``ROOT`` or the ``CheXpert-v1.0-small`` folder itself.

Labels are kept exactly as the NLP labeller wrote them: ``1`` positive, ``0``
negative, ``-1`` uncertain, blank -> ``NaN`` (not mentioned). The uncertain ``-1``
therefore stays in the label matrix; the training code turns it into targets and
weights with a policy (:mod:`cxr_tf.noisy.uncertainty`) and evaluation masks it.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_tf.datasets.contract import CXRDataset
from cxr_tf.errors import CXRDatasetError

#: The 14 CheXpert observations, in the order of the public CSV.
CHEXPERT_LABELS = [
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
]

_PATIENT_RE = re.compile(r"(patient\d+)")
_STUDY_RE = re.compile(r"(patient\d+)/(study\d+)")
_DATASET_DIRS = ("CheXpert-v1.0-small", "CheXpert-v1.0")
_VIEWS = ("frontal", "lateral", "all")


def chexpert_patient_id(path: str) -> str:
    """``.../train/patient00002/study1/view1_frontal.jpg`` -> ``patient00002``."""
    m = _PATIENT_RE.search(str(path))
    if not m:
        raise CXRDatasetError(path, "CheXpert path carries no 'patientNNNNN' folder")
    return m.group(1)


def _find_csv(root: Path, split: str) -> tuple[Path, Path]:
    """(csv path, the folder the CSV's paths are relative to)."""
    for name in (f"{split}.csv", f"{split}.csv.gz"):
        if (root / name).is_file() and root.name in _DATASET_DIRS:
            return root / name, root.parent
        for d in _DATASET_DIRS:
            if (root / d / name).is_file():
                return root / d / name, root
    raise CXRDatasetError(root, f"no {split}.csv here or in {'/ or '.join(_DATASET_DIRS)}/ (CheXpert public layout)")


def read_chexpert_csv(csv_path: str | os.PathLike) -> pd.DataFrame:
    """Read a CheXpert label CSV (plain or .gz), checking its columns."""
    try:
        df = pd.read_csv(csv_path)
    except Exception as e:
        raise CXRDatasetError(csv_path, f"cannot parse CheXpert CSV: {e}") from None
    # Some redistributions write "No_Finding"; the public CSV uses spaces.
    df.columns = [str(c).strip().replace("_", " ") if c != "Path" else c for c in df.columns]
    need = ["Path", "Frontal/Lateral"] + CHEXPERT_LABELS
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise CXRDatasetError(csv_path, f"missing CheXpert columns {missing} (has {list(df.columns)[:8]}...)")
    bad = ~df[CHEXPERT_LABELS].isin([1.0, 0.0, -1.0]) & df[CHEXPERT_LABELS].notna()
    if bad.to_numpy().any():
        r, c = np.argwhere(bad.to_numpy())[0]
        raise CXRDatasetError(csv_path, f"row {r + 2}, column {CHEXPERT_LABELS[c]!r}: label "
                                        f"{df[CHEXPERT_LABELS[c]].iloc[r]!r} is not 1, 0, -1 or blank")
    return df


def load_chexpert(
    root: str | os.PathLike,
    split: str = "train",
    views: str = "frontal",
    csv_path: str | os.PathLike | None = None,
    missing: str = "raise",
) -> CXRDataset:
    """Load CheXpert ``train`` or ``valid`` with its labels as published.

    Args:
        root: the folder holding ``CheXpert-v1.0-small/`` (or that folder itself).
        split: ``train`` or ``valid`` (the CSV name).
        views: ``frontal``, ``lateral`` or ``all`` (the ``Frontal/Lateral`` column).
        csv_path: read labels from this file instead of ``<root>/.../<split>.csv``
            (e.g. a gzipped copy); image paths stay relative to the root.
        missing: listed images that are not on disk: ``raise`` (an error naming the
            first and the count) or ``drop`` (kept out, counted in ``ds.skipped``).

    Returns:
        A multi-label :class:`CXRDataset` with labels 1 / 0 / -1 / NaN, classes
        :data:`CHEXPERT_LABELS`, and meta ``patient_id``, ``study``, ``view``,
        ``sex``, ``age``, ``ap_pa``.
    """
    if views not in _VIEWS:
        raise CXRDatasetError(None, f"views must be one of {_VIEWS}; got {views!r}")
    if missing not in ("raise", "drop"):
        raise CXRDatasetError(None, f"missing must be 'raise' or 'drop'; got {missing!r}")
    root = Path(root)
    if not root.is_dir():
        raise CXRDatasetError(root, "CheXpert root folder not found")
    if csv_path is None:
        csv_path, base = _find_csv(root, split)
    else:
        base = root.parent if root.name in _DATASET_DIRS else root
    df = read_chexpert_csv(csv_path)
    if views != "all":
        df = df[df["Frontal/Lateral"].astype(str).str.lower() == views]
    df = df.reset_index(drop=True)
    rel = df["Path"].astype(str)
    if len(rel) and not rel.str.startswith(_DATASET_DIRS).all():
        # Some copies carry absolute paths of the machine that wrote them: keep the part
        # from the dataset folder on, which is what the public layout has.
        rel = rel.str.replace(r"^.*?(CheXpert-v1\.0(?:-small)?/)", r"\1", regex=True)
    items = (str(base) + os.sep + rel).to_numpy()
    exists = np.fromiter((os.path.isfile(p) for p in items), bool, len(items))
    skipped = []
    if not exists.all():
        if missing == "raise":
            first = items[np.flatnonzero(~exists)[0]]
            raise CXRDatasetError(first, f"listed in {csv_path} but not on disk ({int((~exists).sum())} of "
                                         f"{len(items)} listed images missing; pass missing='drop' to use the rest)")
        skipped = [(p, "listed in the CSV but not on disk") for p in items[~exists]]
        df, rel, items = df[exists].reset_index(drop=True), rel[exists].reset_index(drop=True), items[exists]
    if len(df) == 0:
        raise CXRDatasetError(root, f"no CheXpert {split} images ({views}) found on disk")
    meta = pd.DataFrame({
        "item": items,
        "path": rel.to_numpy(),
        "patient_id": [chexpert_patient_id(p) for p in rel],
        "study": [("/".join(m.groups()) if (m := _STUDY_RE.search(p)) else "") for p in rel],
        "view": df["Frontal/Lateral"].astype(str).str.lower().to_numpy(),
    })
    for src, dst in (("Sex", "sex"), ("Age", "age"), ("AP/PA", "ap_pa")):
        if src in df.columns:
            meta[dst] = df[src].to_numpy()
    meta["source"] = "chexpert"
    labels = df[CHEXPERT_LABELS].to_numpy(np.float32)  # blank -> NaN by pandas
    ds = CXRDataset(items.tolist(), labels, list(CHEXPERT_LABELS), meta, name=f"chexpert_{split}", multilabel=True)
    ds.skipped = skipped
    return ds


def label_rates(csv_path: str | os.PathLike, views: str = "frontal") -> pd.DataFrame:
    """Per-label fractions of 1 / 0 / -1 / blank in a CheXpert CSV (the noise study's rates)."""
    df = read_chexpert_csv(csv_path)
    if views != "all":
        df = df[df["Frontal/Lateral"].astype(str).str.lower() == views]
    v = df[CHEXPERT_LABELS]
    return pd.DataFrame({
        "positive": (v == 1).mean(), "negative": (v == 0).mean(),
        "uncertain": (v == -1).mean(), "blank": v.isna().mean(),
    })
