"""Patient-level splits: hold-out (8:1:1 by default) and k-fold, stratified by class.

Splits are by patient, always: a patient's images never straddle train and test.
Every split can be saved with the run (``splits.csv``: item, patient, split) and
loaded back, and :func:`check_leakage` fails loudly if a patient spans splits.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from cxr_tf.datasets.contract import CXRDataset
from cxr_tf.datasets.sources import KERMANY_3CLASS
from cxr_tf.errors import CXRConfigError, CXRDatasetError, CXRLeakageError

SPLIT_NAMES = ("train", "val", "test")


def _patient_strata(ds: CXRDataset) -> tuple[np.ndarray, np.ndarray]:
    """Unique patients and one stratum per patient (their most frequent class)."""
    pids = ds.patient_ids
    if ds.multilabel:
        uniq = np.unique(pids)
        return uniq, np.zeros(len(uniq), int)
    cls = ds.class_index()
    if "subtype" in ds.meta.columns and ds.meta["subtype"].isin(KERMANY_3CLASS).all():
        # Kermany: stratify by bacterial / viral / normal whatever the class view, so the
        # 2-class and 3-class runs (and the preset trained on them) share one patient split
        cls = ds.meta["subtype"].map(KERMANY_3CLASS.index).to_numpy()
    df = pd.DataFrame({"p": pids, "c": cls})
    strata = df.groupby("p")["c"].agg(lambda s: s.value_counts().index[0])
    return strata.index.to_numpy(), strata.to_numpy()


def _stratify_or_none(strata: np.ndarray, n_test: float) -> np.ndarray | None:
    _, counts = np.unique(strata, return_counts=True)
    # sklearn needs >= 2 members per stratum and room for every stratum in each side.
    if counts.min() < 2 or n_test < len(counts):
        return None
    return strata


def patient_split(
    ds: CXRDataset, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> np.ndarray:
    """Assign every item to ``train``/``val``/``test`` by patient, stratified by class.

    Args:
        ds: the dataset.
        fractions: train, val, test fractions of *patients* (summing to 1).
        seed: the shuffling seed (saved with the run, so the split is reproducible).

    Returns:
        An array of split names aligned with ``ds.items``.
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise CXRConfigError(f"split fractions must be three non-negative numbers summing to 1; got {fractions}")
    patients, strata = _patient_strata(ds)
    if len(patients) < 3:
        raise CXRDatasetError(None, f"{ds.name}: {len(patients)} patients cannot be split three ways")
    f_train, f_val, f_test = fractions
    rest_frac = f_val + f_test
    n_rest = max(2, int(round(rest_frac * len(patients))))
    p_train, p_rest, _, s_rest = train_test_split(
        patients, strata, test_size=n_rest, random_state=seed, stratify=_stratify_or_none(strata, n_rest)
    )
    n_test = max(1, int(round(len(p_rest) * f_test / rest_frac))) if rest_frac else 0
    p_val, p_test = train_test_split(
        p_rest, test_size=n_test, random_state=seed, stratify=_stratify_or_none(s_rest, min(n_test, len(p_rest) - n_test))
    )
    where = {p: "train" for p in p_train}
    where.update({p: "val" for p in p_val})
    where.update({p: "test" for p in p_test})
    split = np.array([where[p] for p in ds.patient_ids], dtype=object)
    check_leakage(split, ds.patient_ids)
    return split


def patient_subset(ds: CXRDataset, max_images: int = 0, fraction: float = 0.0, seed: int = 0) -> CXRDataset:
    """A smaller dataset for a quick run: whole patients, stratified by class.

    Patients are drawn like :func:`patient_split` draws them (sklearn
    ``train_test_split`` over patients, stratified by each patient's class), so a subset
    never cuts a patient in half and keeps the class mix. ``fraction`` keeps about that
    share of the images; ``max_images`` caps the count (patients are dropped from the
    end of the seeded draw until it fits). 0 for either means no limit.

    Args:
        ds: the dataset.
        max_images: at most this many images (0: no cap).
        fraction: about this share of the images, in (0, 1] (0: all).
        seed: the draw's seed (the run's ``--seed``, so the subset is reproducible).
    """
    if max_images < 0:
        raise CXRConfigError(f"--max-images must be >= 0; got {max_images}")
    if not 0 <= fraction <= 1:
        raise CXRConfigError(f"--fraction must be in (0, 1]; got {fraction}")
    target = len(ds) * (fraction or 1.0)
    if max_images:
        target = min(target, max_images)
    if target >= len(ds):
        return ds
    patients, strata = _patient_strata(ds)
    n_keep = int(np.clip(round(target / len(ds) * len(patients)), 1, len(patients) - 1))
    keep, rest = train_test_split(patients, train_size=n_keep, random_state=seed,
                                  stratify=_stratify_or_none(strata, min(n_keep, len(patients) - n_keep)))
    if max_images:
        # Patients differ in image counts: walk the (shuffled) draw, then the other patients,
        # taking each patient whose images still fit, so one large patient does not end the
        # subset early.
        per_patient = pd.Series(ds.patient_ids).value_counts()
        taken, total = [], 0
        for p, n in zip(np.concatenate([keep, rest]), per_patient[np.concatenate([keep, rest])].to_numpy()):
            if total + n <= max_images:
                taken.append(p)
                total += n
                if total == max_images:
                    break
        if not taken:
            raise CXRConfigError(f"--max-images {max_images} is smaller than any patient's image count")
        keep = np.asarray(taken)
    return ds.subset(np.isin(ds.patient_ids, keep))


def kfold_patient_splits(ds: CXRDataset, k: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """k patient-disjoint folds, stratified by class: ``[(train_idx, val_idx), ...]``.

    With k=9 each fold is train:val 8:1 (seed 004); the default k=5 gives 4:1.
    """
    if k < 2:
        raise CXRConfigError(f"k must be >= 2; got {k}")
    y = np.zeros(len(ds), int) if ds.multilabel else ds.class_index()
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    folds = []
    for tr, va in cv.split(np.zeros(len(ds)), y, groups=ds.patient_ids):
        s = np.full(len(ds), "", dtype=object)
        s[tr], s[va] = "train", "val"
        check_leakage(s, ds.patient_ids)
        folds.append((tr, va))
    return folds


def kfold_with_validation(ds: CXRDataset, k: int = 5, val_fraction: float = 1 / 9, seed: int = 0) -> list[np.ndarray]:
    """k-fold cross-validation by patient, each fold with its own validation part.

    Fold ``i`` tests on the i-th patient-disjoint fold (:func:`kfold_patient_splits`);
    the other patients are split train:val by ``val_fraction`` of patients (1/9 gives
    the seed's train:val 8:1), stratified by class, for model selection. Every image is
    tested exactly once across the folds.

    Returns:
        one split array per fold ("train" / "val" / "test" per item).
    """
    if not 0 < val_fraction < 1:
        raise CXRConfigError(f"val_fraction must be in (0, 1); got {val_fraction}")
    out = []
    for i, (rest, held) in enumerate(kfold_patient_splits(ds, k, seed)):
        sub = ds.subset(rest)
        patients, strata = _patient_strata(sub)
        n_val = max(1, int(round(val_fraction * len(patients))))
        p_train, p_val = train_test_split(patients, test_size=n_val, random_state=seed + i,
                                          stratify=_stratify_or_none(strata, n_val))
        val_set = set(p_val)
        split = np.full(len(ds), "test", dtype=object)
        split[rest] = ["val" if p in val_set else "train" for p in sub.patient_ids]
        check_leakage(split, ds.patient_ids)
        out.append(split)
    return out


def check_leakage(split: Sequence[str], patient_ids: Sequence[str]) -> None:
    """Raise :class:`CXRLeakageError` if any patient has items in two splits."""
    df = pd.DataFrame({"s": np.asarray(split), "p": np.asarray(patient_ids)})
    df = df[df["s"] != ""]
    n = df.groupby("p")["s"].nunique()
    bad = n[n > 1]
    if len(bad):
        ex = ", ".join(map(str, bad.index[:5]))
        raise CXRLeakageError(f"{len(bad)} patients appear in more than one split (e.g. {ex})")


def portable_item_names(ds: CXRDataset) -> list[str]:
    """Item names for files written with a run: file paths relative to the items' common
    folder (``train/NORMAL/IM-0115-0001.jpeg``), so a splits file names no folder of the
    machine that wrote it and reloads wherever the data lives; other items (array names such as
    ``synth-000001_0``) keep their names. Loaders that list paths in ``meta['item']`` (Kermany,
    the COVID and NIH sources) are relativised too; a multi-source dataset's names keep their
    source folder (``kermany224/train/...``, ``covid_ieee8023/images_256/...``)."""
    names = ds.item_names
    if ds.in_memory or not names or not all(os.path.isabs(n) for n in names):
        return names
    root = os.path.commonpath([os.path.dirname(os.path.abspath(n)) for n in names])
    return [os.path.relpath(os.path.abspath(n), root) for n in names]


def _match_saved(saved: Sequence[str], names: Sequence[str]) -> list[str | None]:
    """For each current item name, the saved name it is: the same string, or the longest
    saved path that is a trailing part of it (the file was saved relative to another root)."""
    saved = set(saved)
    out = []
    for n in names:
        if n in saved:
            out.append(n)
            continue
        parts = n.replace(os.sep, "/").split("/")
        out.append(next(("/".join(parts[k:]) for k in range(1, len(parts)) if "/".join(parts[k:]) in saved), None))
    return out


def save_splits(path: str | os.PathLike, ds: CXRDataset, split: Sequence[str]) -> None:
    """Write ``item, patient, split`` (plus class) as CSV, for the run folder (item paths
    relative to the data, see :func:`portable_item_names`)."""
    df = pd.DataFrame({"item": portable_item_names(ds), "patient": ds.patient_ids, "split": np.asarray(split)})
    if not ds.multilabel:
        df["label"] = np.array(ds.class_names)[ds.class_index()]
    # surrogateescape: a file name that is not valid UTF-8 is written back as its own
    # bytes (and read back the same way below) instead of crashing the run.
    df.to_csv(path, index=False, encoding="utf-8", errors="surrogateescape")


def load_splits(path: str | os.PathLike, ds: CXRDataset) -> np.ndarray:
    """Read a saved ``splits.csv`` back onto ``ds`` (items matched by name)."""
    # keep_default_na=False: an empty split ("", an item in no split, e.g. dropped by
    # --dedupe) must read back as "", not as the string "nan" (which check_leakage counts).
    # surrogateescape: non-UTF-8 file names were written as their own bytes.
    df = pd.read_csv(path, keep_default_na=False, encoding="utf-8", encoding_errors="surrogateescape")
    where = dict(zip(df["item"].astype(str), df["split"].astype(str)))
    names = ds.item_names
    keys = _match_saved(where, names)
    missing = [n for n, k in zip(names, keys) if k is None]
    if missing:
        raise CXRDatasetError(path, f"{len(missing)} items of {ds.name} are not in the split file (e.g. {missing[0]})")
    split = np.array([where[k] for k in keys], dtype=object)
    check_leakage(split, ds.patient_ids)
    return split


def split_summary(ds: CXRDataset, split: Sequence[str]) -> pd.DataFrame:
    """Images per class and patients per split, as a table to print and save."""
    split = np.asarray(split)
    rows = []
    for s in SPLIT_NAMES:
        m = split == s
        if not m.any():
            continue
        sub = ds.subset(m)
        row = {"split": s, "images": int(m.sum()), "patients": int(sub.meta["patient_id"].nunique())}
        row.update(sub.class_counts())
        rows.append(row)
    return pd.DataFrame(rows)
