"""One dataset contract for every CXR source.

A :class:`CXRDataset` is what every source (Kermany folders, MedMNIST npz,
folder-per-class, CSV manifests, the synthetic generator, ...) returns, and what
every pipeline, split and experiment consumes:

* ``items``: file paths (``str``) or an in-memory ``uint8``/``float`` array
  ``(N, H, W)`` / ``(N, H, W, 1)``;
* ``labels``: ``float32`` matrix ``(N, C)``; ``1`` positive, ``0`` negative,
  ``NaN`` unknown (multi-class sources are one-hot rows);
* ``class_names``: the ``C`` column names;
* ``meta``: a :class:`pandas.DataFrame` row-aligned with ``items`` that always has a
  ``patient_id`` column (splits are by patient, always) and a ``source`` column.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import pandas as pd

from cxr_tf.errors import CXRDatasetError


@dataclasses.dataclass
class CXRDataset:
    items: np.ndarray | list
    labels: np.ndarray
    class_names: list[str]
    meta: pd.DataFrame
    name: str = "dataset"
    multilabel: bool = False

    def __post_init__(self):
        if isinstance(self.items, list):
            self.items = np.asarray(self.items, dtype=object)
        self.labels = np.asarray(self.labels, dtype=np.float32)
        self.class_names = [str(c) for c in self.class_names]
        n = len(self.items)
        if self.labels.ndim != 2 or self.labels.shape[0] != n:
            raise CXRDatasetError(None, f"{self.name}: labels must be (N={n}, C); got {self.labels.shape}")
        if self.labels.shape[1] != len(self.class_names):
            raise CXRDatasetError(
                None, f"{self.name}: {self.labels.shape[1]} label columns but {len(self.class_names)} class names"
            )
        if len(self.meta) != n:
            raise CXRDatasetError(None, f"{self.name}: metadata has {len(self.meta)} rows for {n} items")
        self.meta = self.meta.reset_index(drop=True)
        if "patient_id" not in self.meta.columns:
            raise CXRDatasetError(None, f"{self.name}: metadata needs a 'patient_id' column")
        if self.meta["patient_id"].isna().any():
            bad = int(self.meta["patient_id"].isna().sum())
            raise CXRDatasetError(None, f"{self.name}: {bad} items have no patient id")
        self.meta["patient_id"] = self.meta["patient_id"].astype(str)
        if "source" not in self.meta.columns:
            self.meta["source"] = self.name

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return len(self.items)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.items, np.ndarray) and self.items.dtype != object

    @property
    def patient_ids(self) -> np.ndarray:
        return self.meta["patient_id"].to_numpy()

    @property
    def item_names(self) -> list[str]:
        """A printable name per item (the path, or ``name[i]`` for arrays)."""
        if "item" in self.meta.columns:
            return self.meta["item"].astype(str).tolist()
        if self.in_memory:
            return [f"{self.name}[{i}]" for i in range(len(self))]
        return [str(p) for p in self.items]

    def class_index(self) -> np.ndarray:
        """Integer class per item for single-label (one-hot) datasets."""
        if self.multilabel:
            raise CXRDatasetError(None, f"{self.name} is multi-label: no single class index")
        lab = np.nan_to_num(self.labels, nan=0.0)
        return lab.argmax(axis=1).astype(np.int64)

    def class_counts(self) -> dict[str, int]:
        lab = np.nan_to_num(self.labels, nan=0.0)
        return {c: int(v) for c, v in zip(self.class_names, lab.sum(axis=0))}

    def subset(self, idx: Sequence[int] | np.ndarray, name: str | None = None) -> "CXRDataset":
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return CXRDataset(
            items=self.items[idx],
            labels=self.labels[idx],
            class_names=list(self.class_names),
            meta=self.meta.iloc[idx].reset_index(drop=True),
            name=name or self.name,
            multilabel=self.multilabel,
        )

    def select_classes(self, mapping: dict[str, str], class_names: Sequence[str]) -> "CXRDataset":
        """Relabel onto ``class_names`` by mapping old class -> new class (single-label).

        Old classes not in ``mapping`` are dropped.
        """
        new_names = list(class_names)
        old = np.array(self.class_names)[self.class_index()]
        keep = np.array([o in mapping for o in old])
        ds = self.subset(keep)
        lab = np.zeros((len(ds), len(new_names)), np.float32)
        for i, o in enumerate(old[keep]):
            lab[i, new_names.index(mapping[o])] = 1.0
        return CXRDataset(ds.items, lab, new_names, ds.meta, ds.name, False)

    def summary(self) -> str:
        counts = ", ".join(f"{c}: {n}" for c, n in self.class_counts().items())
        return f"{self.name}: {len(self)} images, {self.meta['patient_id'].nunique()} patients ({counts})"


def concat(datasets: Sequence[CXRDataset], name: str = "combined") -> CXRDataset:
    """Stack datasets with the same class names (path-based or array-based, not mixed)."""
    if not datasets:
        raise CXRDatasetError(None, "concat: no datasets given")
    names = datasets[0].class_names
    for d in datasets[1:]:
        if d.class_names != names:
            raise CXRDatasetError(None, f"concat: class names differ: {names} vs {d.class_names}")
    kinds = {d.in_memory for d in datasets}
    if len(kinds) != 1:
        raise CXRDatasetError(None, "concat: cannot mix in-memory and path-based datasets")
    items = np.concatenate([np.asarray(d.items) for d in datasets])
    metas = []
    for d in datasets:
        m = d.meta.copy()
        m["patient_id"] = d.meta["source"].astype(str) + ":" + m["patient_id"].astype(str)
        metas.append(m)
    return CXRDataset(
        items=items,
        labels=np.concatenate([d.labels for d in datasets]),
        class_names=list(names),
        meta=pd.concat(metas, ignore_index=True),
        name=name,
        multilabel=any(d.multilabel for d in datasets),
    )
