"""A 3-class COVID-19 / pneumonia / normal dataset assembled from public sources (SPEC S0, S3).

Sources (folders under ``CXR_DATA_DIR``, layouts as published):

* ``covid_ieee8023/`` (Cohen et al. 2020): ``index.csv`` rows with ``covid == 1`` ->
  COVID-19; patient ids from its ``patientid`` column; frontal views only by default
  (PA, AP, AP Supine), as torchxrayvision and Deep-COVID use it.
* ``covid19_radiography/`` (Chowdhury et al. 2020): ``labels.csv`` ``COVID`` -> COVID-19,
  ``Normal`` -> normal. It publishes no patient ids: each image is its own patient.
* ``kermany224/`` (Kermany et al. 2018, pediatric): ``PNEUMONIA`` -> pneumonia,
  ``NORMAL`` -> normal; patient ids from the file names.

The result is one :class:`~cxr_tf.datasets.CXRDataset` with classes
``normal, pneumonia, covid`` (the seed-000 table's N / P / C order), ``meta['source']``
naming the source of every image and patient ids prefixed by their source.

Why the source-mix table matters: when a class comes mostly from one source (here
*pneumonia is 100% Kermany, i.e. pediatric*), a classifier can separate the classes by
hospital, age or scanner, which the test split of the same mix rewards.
:func:`source_mix` and :func:`shortcut_warnings` make that visible for every split.
Known limits of the sources: covid19_radiography has no patient ids (a patient with
several images can straddle splits), and it re-publishes images of the other sources
(measured: 75 of its 500 COVID images correlate > 0.95 with an ieee8023 image on 16x16
thumbnails). :func:`group_cross_source_duplicates` (on by default) gives such a copy the
patient id of its twin, so a radiograph and its copy always land in the same split.
"""
from __future__ import annotations

import os
import logging
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from cxr_tf.datasets.contract import CXRDataset, concat
from cxr_tf.datasets.sources import load_kermany
from cxr_tf.errors import CXRDatasetError

_log = logging.getLogger("cxr_tf.datasets")

COVID_3CLASS = ["normal", "pneumonia", "covid"]
COVID_BINARY = ["non_covid", "covid"]
SOURCES = ("covid_ieee8023", "covid19_radiography", "kermany224")
FRONTAL_VIEWS = ("PA", "AP", "AP Supine")
#: a class whose largest source supplies at least this share is flagged as a shortcut risk.
SHORTCUT_SHARE = 0.8


def _one_hot(labels: Sequence[str], names: Sequence[str]) -> np.ndarray:
    y = np.zeros((len(labels), len(names)), np.float32)
    y[np.arange(len(labels)), [names.index(v) for v in labels]] = 1.0
    return y


def load_covid_ieee8023(root: str | os.PathLike, views: Sequence[str] | None = FRONTAL_VIEWS,
                        covid_only: bool = True) -> CXRDataset:
    """COVID-19 images of the ieee8023 collection (``index.csv``; ``images_256/`` PNGs).

    ``meta`` carries ``view``, ``finding`` and, where ``index.csv`` has them, ``sex`` and
    ``age`` (for subgroup metrics). ``covid_only=False`` keeps every finding (labelled
    ``pneumonia`` for non-COVID findings, ``normal`` for "No Finding"): the duplicate
    audit looks at every image of the collection.
    """
    root = Path(root)
    index = root / "index.csv"
    if not index.is_file():
        raise CXRDatasetError(index, "covid_ieee8023 index.csv not found")
    df = pd.read_csv(index, dtype={"patientid": str})
    for col in ("png", "patientid", "covid", "view"):
        if col not in df.columns:
            raise CXRDatasetError(index, f"missing column {col!r} (has {list(df.columns)})")
    if covid_only:
        df = df[df["covid"] == 1]
    if views is not None:
        df = df[df["view"].isin(views)]
    if df.empty:
        raise CXRDatasetError(index, f"no COVID-19 rows with views {views}")
    items = [str(root / p) for p in df["png"]]
    missing = [p for p in items if not os.path.isfile(p)]
    if missing:
        raise CXRDatasetError(missing[0], f"listed in {index} but missing ({len(missing)} files)")
    label = np.where(df["covid"] == 1, "covid", np.where(df["finding"] == "No Finding", "normal", "pneumonia"))
    meta = pd.DataFrame({"item": items, "patient_id": df["patientid"].astype(str).to_numpy(),
                         "label": label, "view": df["view"].to_numpy(), "finding": df["finding"].to_numpy()})
    for col in ("sex", "age"):  # subgroup metadata (cxr_tf.evaluation.subgroups)
        if col in df.columns:
            meta[col] = df[col].to_numpy()
    meta["source"] = "covid_ieee8023"
    return CXRDataset(items, _one_hot(meta["label"], COVID_3CLASS), COVID_3CLASS, meta, name="covid_ieee8023")


def load_covid19_radiography(root: str | os.PathLike) -> CXRDataset:
    """COVID-19 Radiography Database (``labels.csv``: path, label in {COVID, Normal}).

    No patient ids are published, so each image is its own patient (warned).
    """
    root = Path(root)
    csv = root / "labels.csv"
    if not csv.is_file():
        raise CXRDatasetError(csv, "covid19_radiography labels.csv not found")
    df = pd.read_csv(csv, dtype=str)
    mapping = {"COVID": "covid", "Normal": "normal"}
    bad = sorted(set(df["label"]) - set(mapping) - {"Viral Pneumonia", "Lung_Opacity"})
    if bad:
        raise CXRDatasetError(csv, f"unknown labels {bad} (expected COVID / Normal)")
    df = df[df["label"].isin(mapping)]
    items = [str(root / p) for p in df["path"]]
    missing = [p for p in items if not os.path.isfile(p)]
    if missing:
        raise CXRDatasetError(missing[0], f"listed in {csv} but missing ({len(missing)} files)")
    labels = df["label"].map(mapping).tolist()
    meta = pd.DataFrame({"item": items, "patient_id": [Path(p).stem for p in df["path"]], "label": labels})
    meta["source"] = "covid19_radiography"
    warnings.warn(f"{root}: no patient ids published; each image is treated as its own patient", stacklevel=2)
    return CXRDataset(items, _one_hot(labels, COVID_3CLASS), COVID_3CLASS, meta, name="covid19_radiography")


def load_kermany_pneumonia_normal(root: str | os.PathLike) -> CXRDataset:
    """Kermany (pediatric) NORMAL -> normal, PNEUMONIA (bacterial and viral) -> pneumonia."""
    k = load_kermany(root, classes="pneumonia")
    ds = k.select_classes({"normal": "normal", "pneumonia": "pneumonia"}, COVID_3CLASS)
    ds.meta["label"] = np.array(COVID_3CLASS)[ds.class_index()]
    ds.meta["source"] = "kermany224"
    ds.name = "kermany224"
    return ds


def load_covid_dataset(
    data_dir: str | os.PathLike,
    sources: Sequence[str] = SOURCES,
    per_class: int | None = None,
    seed: int = 0,
    binary: bool = False,
    views: Sequence[str] | None = FRONTAL_VIEWS,
    dedupe: bool = True,
    ieee_all_findings: bool = False,
) -> CXRDataset:
    """The 3-class (or COVID vs non-COVID) dataset from the sources under ``data_dir``.

    Args:
        data_dir: folder holding ``covid_ieee8023/``, ``covid19_radiography/``, ``kermany224/``.
        sources: which of them to use.
        per_class: draw at most this many images per class (seeded, uniformly over the
            class's images, so the source mix is kept in expectation); ``None``: all.
            The seed used 607 per class.
        seed: the draw's seed.
        binary: ``non_covid`` (normal + pneumonia) vs ``covid`` (Deep-COVID, seed 003).
        views: ieee8023 views to keep (``None``: all, laterals included).
        dedupe: group covid19_radiography images that copy another source's image with
            that image's patient (:func:`group_cross_source_duplicates`; the count is in
            ``ds.n_cross_source_duplicates``).
        ieee_all_findings: also take ieee8023's non-COVID images (other pneumonias ->
            pneumonia, "No Finding" -> normal): adult non-COVID images from the COVID
            collection itself, which a source-balanced design needs.
    """
    data_dir = Path(data_dir)
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown:
        raise CXRDatasetError(None, f"unknown sources {unknown}; choose from {list(SOURCES)}")
    loaders = {"covid_ieee8023": lambda p: load_covid_ieee8023(p, views, covid_only=not ieee_all_findings),
               "covid19_radiography": load_covid19_radiography, "kermany224": load_kermany_pneumonia_normal}
    parts = []
    for s in sources:
        if not (data_dir / s).is_dir():
            raise CXRDatasetError(data_dir / s, "source folder not found")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the no-patient-id warning is repeated once below
            parts.append(loaders[s](data_dir / s))
    if "covid19_radiography" in sources:
        warnings.warn("covid19_radiography has no patient ids: each of its images is its own patient", stacklevel=2)
    ds = concat(parts, name="covid3")  # patient ids become "<source>:<id>"
    if per_class is not None:
        rng = np.random.default_rng(seed)
        cls = ds.class_index()
        keep = np.concatenate([rng.permutation(np.flatnonzero(cls == c))[:per_class] for c in range(ds.num_classes)])
        ds = ds.subset(np.sort(keep), name=ds.name)
    n_dup = 0
    if dedupe and "covid19_radiography" in sources and len(sources) > 1:
        ds, n_dup = group_cross_source_duplicates(ds)
    missing = [c for c, n in ds.class_counts().items() if n == 0]
    if missing:
        raise CXRDatasetError(data_dir, f"no images for classes {missing} with sources {list(sources)}")
    if binary:
        ds = ds.select_classes({"normal": "non_covid", "pneumonia": "non_covid", "covid": "covid"}, COVID_BINARY)
        ds.name = "covid_binary"
    ds.n_cross_source_duplicates = n_dup
    return ds


def load_covid_experiment_data(cfg, binary: bool = False, ieee_all_findings: bool = False) -> CXRDataset:
    """The COVID experiments' data from their config: ``cfg.data_dir`` (required),
    ``cfg.per_class`` (when the config has it), ``cfg.seed``; the loader's warnings are
    logged as ``warning: ...`` lines. ``--max-images`` / ``--fraction`` are the caller's
    (``cxr_tf.training.flow.take_subset``)."""
    from cxr_tf.errors import CXRConfigError

    if not cfg.data_dir:
        raise CXRConfigError("--data-dir (or CXR_DATA_DIR) must point to the folder with covid_ieee8023/, "
                             "covid19_radiography/ and kermany224/")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_covid_dataset(cfg.data_dir, per_class=getattr(cfg, "per_class", None) or None, seed=cfg.seed,
                                binary=binary, ieee_all_findings=ieee_all_findings)
    for w in caught:
        _log.info(f"warning: {w.message}")
    return ds


def _thumbnails(paths, size: int) -> np.ndarray:
    """Standardised ``size x size`` gray thumbnails (aspect ignored: one source squashed its images)."""
    from PIL import Image

    out = np.empty((len(paths), size * size), np.float32)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            a = np.asarray(im.convert("L").resize((size, size), Image.BILINEAR), np.float32).ravel()
        out[i] = (a - a.mean()) / (a.std() + 1e-6)
    return out


def group_cross_source_duplicates(ds: CXRDataset, source: str = "covid19_radiography", threshold: float = 0.95,
                                  size: int = 16) -> tuple[CXRDataset, int]:
    """Give near-duplicates of ``source``'s images in other sources one patient id.

    An image of ``source`` whose thumbnail correlates >= ``threshold`` with an image of
    another source in the same class takes that image's patient id (and
    ``meta['duplicate_of']`` names it), so patient-level splits keep the copies together.

    Returns:
        The dataset (a copy) and the number of images regrouped.
    """
    meta = ds.meta.copy()
    src = meta["source"].to_numpy()
    cls = ds.class_index()
    items = np.asarray([str(p) for p in ds.items])
    meta["duplicate_of"] = ""
    n = 0
    for c in range(ds.num_classes):
        a = np.flatnonzero((src == source) & (cls == c))
        b = np.flatnonzero((src != source) & (cls == c))
        if len(a) == 0 or len(b) == 0:
            continue
        corr = _thumbnails(items[a], size) @ _thumbnails(items[b], size).T / (size * size)
        best = corr.argmax(1)
        for i, j, r in zip(a, b[best], corr[np.arange(len(a)), best]):
            if r >= threshold:
                meta.loc[i, "patient_id"] = meta.loc[j, "patient_id"]
                meta.loc[i, "duplicate_of"] = items[j]
                n += 1
    return CXRDataset(ds.items, ds.labels, ds.class_names, meta, ds.name, ds.multilabel), n


def source_mix(ds: CXRDataset, split: Sequence[str] | None = None) -> pd.DataFrame:
    """Images per (split, class, source) with each source's share of its class in that split.

    Returns:
        Long table with columns ``split, class, source, images, share``; ``split`` is
        ``all`` when no split is given.
    """
    df = pd.DataFrame({"split": "all" if split is None else np.asarray(split),
                       "class": np.array(ds.class_names)[ds.class_index()],
                       "source": ds.meta["source"].astype(str).to_numpy()})
    t = df.groupby(["split", "class", "source"]).size().rename("images").reset_index()
    t["share"] = t["images"] / t.groupby(["split", "class"])["images"].transform("sum")
    order = {s: i for i, s in enumerate(("train", "val", "test", "all"))}
    cls_order = {c: i for i, c in enumerate(ds.class_names)}
    t = t.sort_values(["split", "class", "source"], key=lambda c: c.map(order) if c.name == "split"
                      else (c.map(cls_order) if c.name == "class" else c))
    return t.reset_index(drop=True)


def format_source_mix(table: pd.DataFrame) -> str:
    """The long table as one printable block: a row per split and class, a column per source."""
    wide = table.pivot_table(index=["split", "class"], columns="source", values="images", fill_value=0, sort=False)
    share = table.pivot_table(index=["split", "class"], columns="source", values="share", fill_value=0.0, sort=False)
    out = wide.astype(int).astype(str) + " (" + (share * 100).round(0).astype(int).astype(str) + "%)"
    return out.reset_index().to_string(index=False)


def shortcut_warnings(table: pd.DataFrame, threshold: float = SHORTCUT_SHARE) -> list[str]:
    """Shortcut risks: a (split, class) whose largest source supplies >= ``threshold`` of
    it, and a source whose images are >= ``threshold`` one class (its look alone then
    predicts the label)."""
    msgs = []
    for (s, c), g in table.groupby(["split", "class"], sort=False):
        top = g.loc[g["share"].idxmax()]
        if top["share"] >= threshold:
            msgs.append(f"shortcut risk: {s} '{c}' is {top['share']:.0%} {top['source']} "
                        f"({int(top['images'])} of {int(g['images'].sum())} images); a model can learn the source "
                        "instead of the disease")
    for src, g in table.groupby("source", sort=False):
        per_class = g.groupby("class")["images"].sum()
        if len(table["class"].unique()) > 1 and per_class.max() / per_class.sum() >= threshold:
            msgs.append(f"shortcut risk: source {src} is {per_class.max() / per_class.sum():.0%} "
                        f"'{per_class.idxmax()}' over all splits")
    return msgs


def balance_sources(ds: CXRDataset, seed: int = 0) -> CXRDataset:
    """A source-balanced design: every class drawn from the same sources in the same proportions.

    Per source, as many images of each class as that source's rarest class has (seeded
    draw); a source that lacks any of the classes is left out, because its look alone
    would predict the label. Then the source no longer tells the class: a model must
    learn the finding. Raises when no source holds every class (the data do not allow it).
    """
    rng = np.random.default_rng(seed)
    src = ds.meta["source"].astype(str).to_numpy()
    cls = ds.class_index()
    keep, used = [], []
    for s in sorted(set(src)):
        counts = [int(((src == s) & (cls == c)).sum()) for c in range(ds.num_classes)]
        n = min(counts)
        if n == 0:
            continue
        used.append(f"{s} ({n} per class)")
        for c in range(ds.num_classes):
            keep.append(rng.permutation(np.flatnonzero((src == s) & (cls == c)))[:n])
    if not keep:
        raise CXRDatasetError(None, f"{ds.name}: no source holds every class {ds.class_names}; a source-balanced "
                              "design is impossible with these sources (per source and class: "
                              + source_mix(ds).to_string(index=False) + ")")
    out = ds.subset(np.sort(np.concatenate(keep)), name=ds.name)
    out.balanced_sources = used
    return out
