"""Dataset sources: public CXR layouts -> :class:`~cxr_tf.datasets.contract.CXRDataset`.

Each loader reads a layout exactly as it is published and returns the one contract.
Loaders only list files and labels; they never decode pixels (the tf.data pipeline
does, and :func:`cxr_tf.io.validate_images` checks files up front).
"""
from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from cxr_tf.datasets.contract import CXRDataset
from cxr_tf.errors import CXRDatasetError

_log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".npy", ".dcm", ".dicom")

#: Kermany class orders. Seed 004: bacterial 0, viral 1, normal 2.
KERMANY_3CLASS = ["bacterial", "viral", "normal"]
KERMANY_PNEUMONIA = ["normal", "pneumonia"]

_KERMANY_PATIENT = [
    re.compile(r"^(person\d+)_"),  # person1000_bacteria_2931.jpeg
    re.compile(r"^(NORMAL2-IM-\d+)-"),  # NORMAL2-IM-0383-0001.jpeg
    re.compile(r"^(IM-\d+)-"),  # IM-0115-0001.jpeg, IM-0629-0001-0002.jpeg
]


def kermany_patient_id(filename: str) -> str:
    """Patient id from a Kermany file name (``personN``, ``IM-XXXX``, ``NORMAL2-IM-XXXX``).

    Raises:
        CXRDatasetError: the name follows none of the published patterns.
    """
    base = os.path.basename(filename)
    for pat in _KERMANY_PATIENT:
        m = pat.match(base)
        if m:
            return m.group(1)
    raise CXRDatasetError(filename, "file name carries no Kermany patient id (personN_..., IM-XXXX-..., NORMAL2-IM-XXXX-...)")


def kermany_subtype(path: str) -> str:
    """``normal`` / ``bacterial`` / ``viral`` from the folder and file name."""
    parent = Path(path).parent.name.upper()
    name = Path(path).name.lower()
    if parent == "NORMAL":
        return "normal"
    if parent == "PNEUMONIA":
        if "bacteria" in name:
            return "bacterial"
        if "virus" in name:
            return "viral"
        raise CXRDatasetError(path, "PNEUMONIA image whose name says neither 'bacteria' nor 'virus'")
    raise CXRDatasetError(path, f"not under a NORMAL or PNEUMONIA folder (found {parent!r})")


def _list_images(root: Path) -> list[Path]:
    """Every entry under ``root`` named like an image, whatever it is.

    A dangling link, a link loop or a directory named ``x.png`` is listed too, so that
    validation names it in the skip list instead of it vanishing. ``os.walk`` does not
    follow directory links, so a link loop cannot make the walk endless.
    """
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*filenames, *dirnames):
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                out.append(Path(dirpath) / name)
    return sorted(out)


def _check_links(items: Sequence[str], root: Path, on_error: str) -> tuple[list[bool], list[tuple[str, str]]]:
    """Per-item check that a CSV manifest's file stays inside its data root.

    A manifest names files by path, so a row (or a link it names) that leads out of the
    root (``/etc/passwd``, another user's data) is refused, as one item's problem:
    skipped with its cause under ``on_error="skip"``, one named error under ``"raise"``.
    Folder and Kermany layouts do not use this: a dataset built from links into shared
    storage is an ordinary layout there. Loops and dangling links are left to
    validation, which names them.

    Returns:
        ``(keep, skipped)``: a flag per item and ``(path, cause)`` of the dropped ones.
    """
    from cxr_tf.errors import CXRImageError

    if on_error not in ("raise", "skip"):
        raise CXRDatasetError(None, f"on_error must be 'raise' or 'skip'; got {on_error!r}")
    root_real = os.path.realpath(root)
    keep, skipped = [], []
    for item in items:
        real = os.path.realpath(item)  # never raises: a loop resolves as far as it can
        inside = real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)
        if inside or not os.path.lexists(item) or not os.path.exists(item):
            keep.append(True)  # missing / dangling / looping: validation names it
            continue
        cause = f"symbolic link to {real!r}, outside the data root {root_real!r}"
        if on_error == "raise":
            raise CXRImageError(item, cause)
        keep.append(False)
        skipped.append((item, cause))
    return keep, skipped


def load_kermany(
    root: str | os.PathLike,
    classes: str = "3class",
    splits: Sequence[str] | None = None,
    on_error: str = "raise",
) -> CXRDataset:
    """Kermany et al. 2018 ``chest_xray`` layout (Mendeley 10.17632/rscbjbr9sj).

    Accepts the ``chest_xray`` folder (``train/ test/ val/`` each with ``NORMAL/``
    and ``PNEUMONIA/``), a single split folder, or a copy such as ``kermany224``.

    Args:
        root: the folder.
        classes: ``"3class"`` (bacterial / viral / normal, seed 004) or
            ``"pneumonia"`` (normal / pneumonia).
        splits: keep only these published splits (``train``, ``test``, ``val``);
            all when ``None``. The published split is kept in ``meta['kermany_split']``.
        on_error: ``"raise"`` or ``"skip"`` for files whose names carry no label or patient.
    """
    root = Path(root)
    if not root.is_dir():
        raise CXRDatasetError(root, "Kermany root folder not found")
    if classes not in ("3class", "pneumonia"):
        raise CXRDatasetError(None, f"classes must be '3class' or 'pneumonia'; got {classes!r}")
    names = KERMANY_3CLASS if classes == "3class" else KERMANY_PNEUMONIA
    rows, skipped = [], []
    for p in _list_images(root):
        if p.parent.name.upper() not in ("NORMAL", "PNEUMONIA"):
            continue
        split = p.parent.parent.name.lower()
        split = split if split in ("train", "test", "val") else ""
        if splits is not None and split not in splits:
            continue
        try:
            sub = kermany_subtype(str(p))
            pid = kermany_patient_id(p.name)
        except CXRDatasetError as e:
            if on_error == "skip":
                skipped.append((str(p), e.cause))
                continue
            raise
        cls = sub if classes == "3class" else ("normal" if sub == "normal" else "pneumonia")
        # NORMAL IM-XXXX and PNEUMONIA personN live in separate namespaces already.
        rows.append(dict(item=str(p), patient_id=pid, subtype=sub, label=cls, kermany_split=split))
    if not rows:
        raise CXRDatasetError(root, "no Kermany images found (expected NORMAL/ and PNEUMONIA/ folders)")
    meta = pd.DataFrame(rows)
    meta["source"] = "kermany"
    labels = np.zeros((len(meta), len(names)), np.float32)
    labels[np.arange(len(meta)), meta["label"].map(names.index).to_numpy()] = 1.0
    ds = CXRDataset(meta["item"].tolist(), labels, names, meta, name="kermany")
    ds.skipped = skipped
    ds.patients_from = "Kermany file names (personN_..., IM-XXXX-..., NORMAL2-IM-XXXX-...)"
    return ds


def load_medmnist(
    path: str | os.PathLike,
    splits: Sequence[str] = ("train", "val"),
    class_names: Sequence[str] | None = None,
) -> CXRDataset:
    """A MedMNIST v2 ``.npz`` (e.g. PneumoniaMNIST: ``{split}_images``, ``{split}_labels``).

    MedMNIST publishes no patient ids, so each image is its own patient; the
    dataset's own train/val/test split is in ``meta['medmnist_split']`` and should be
    preferred over a re-split (Kermany patients can repeat across images).
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.npz"))
        if not found:
            raise CXRDatasetError(path, "no .npz file in this folder")
        path = found[0]
    try:
        data = np.load(path)
    except Exception as e:  # zip/pickle errors from numpy
        raise CXRDatasetError(path, f"cannot read as .npz: {e}") from None
    imgs, labs, split_col = [], [], []
    for s in splits:
        if f"{s}_images" not in data:
            raise CXRDatasetError(path, f"no '{s}_images' array (has {sorted(data.files)})")
        x = data[f"{s}_images"]
        y = data[f"{s}_labels"].reshape(len(x), -1)
        if not np.isfinite(x.astype(np.float64)).all():
            raise CXRDatasetError(path, f"'{s}_images' contains NaN or inf")
        imgs.append(x)
        labs.append(y)
        split_col += [s] * len(x)
    x = np.concatenate(imgs)
    y = np.concatenate(labs)
    if x.ndim == 4 and x.shape[-1] == 3:  # RGB MedMNIST sets -> gray
        x = x.astype(np.float32).mean(-1)
    n_cls = int(y.max()) + 1 if y.shape[1] == 1 else y.shape[1]
    if class_names is None:
        class_names = ["normal", "pneumonia"] if "pneumonia" in path.name.lower() else [str(i) for i in range(n_cls)]
    if y.shape[1] == 1:
        onehot = np.zeros((len(x), len(class_names)), np.float32)
        onehot[np.arange(len(x)), y[:, 0].astype(int)] = 1.0
    else:
        onehot = y.astype(np.float32)
    stem = path.stem
    meta = pd.DataFrame(
        dict(
            item=[f"{stem}[{s}:{i}]" for i, s in enumerate(split_col)],
            patient_id=[f"{stem}-{i}" for i in range(len(x))],
            medmnist_split=split_col,
        )
    )
    meta["source"] = "medmnist"
    ds = CXRDataset(x, onehot, list(class_names), meta, name=stem, multilabel=y.shape[1] > 1)
    ds.patients_from = "none published by MedMNIST: each image is its own patient"
    return ds


def load_folder(
    root: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    patient_regex: str | None = None,
    on_error: str = "raise",
) -> CXRDataset:
    """Folder-per-class layout ``root/<class>/<image>``.

    Args:
        root: the folder.
        class_names: the classes to use, in order (default: sorted sub-folders).
        patient_regex: a regex whose first group extracts the patient id from the file
            name. Without it each image is its own patient (logged with the manifest hint,
            because a patient with several images could then leak across splits).
        on_error: kept for a uniform loader signature: unreadable entries (broken
            links, loops, folders named like images) are named by validation, which
            skips or raises per ``--on-error``.

    ``ds.patients_from`` says how patient ids were found (the experiments print it).
    """
    root = Path(root)
    if not root.is_dir():
        raise CXRDatasetError(root, "dataset folder not found")
    subdirs = sorted(d.name for d in root.iterdir() if d.is_dir())
    names = list(class_names) if class_names else subdirs
    missing = [c for c in names if c not in subdirs]
    if missing:
        raise CXRDatasetError(root, f"class folders {missing} not found (has {subdirs})")
    rx = re.compile(patient_regex) if patient_regex else None
    rows = []
    for ci, c in enumerate(names):
        for p in _list_images(root / c):
            if rx:
                m = rx.search(p.name)
                if not m:
                    raise CXRDatasetError(p, f"patient_regex {patient_regex!r} does not match the file name")
                pid = m.group(1)
            else:
                pid = f"{c}/{p.stem}"
            rows.append(dict(item=str(p), patient_id=pid, label=c, label_index=ci))
    if not rows:
        raise CXRDatasetError(root, "no images found in the class folders")
    if rx is None:
        _log.warning(own_patient_hint(root, len(rows)))
    meta = pd.DataFrame(rows)
    meta["source"] = root.name
    labels = np.zeros((len(meta), len(names)), np.float32)
    labels[np.arange(len(meta)), meta["label_index"].to_numpy()] = 1.0
    ds = CXRDataset(meta["item"].tolist(), labels, names, meta, name=root.name)
    # No user-given patient ids in a folder: DICOMs group by their PatientID tag, only ever
    # as a salted hash (cxr_tf.datasets.privacy). Here, so that every reader of a folder
    # (training, cxr-tf evaluate, perceptual_testset) splits and reports by the same patients.
    from cxr_tf.datasets.privacy import pseudonymize_dicom_patients

    ds, n = pseudonymize_dicom_patients(ds)
    ds.skipped = []
    ds.pseudonymized = n
    ds.patients_from = (f"file name regex {patient_regex!r}" if rx else "none given: each image is its own patient")
    if n:
        ds.patients_from += f"; {n} DICOM files grouped by their PatientID tag"
    return ds


def own_patient_hint(source, n: int) -> str:
    """The one line printed when a layout carries no patient ids."""
    return (f"{source}: no patient ids, so each of the {n} images is its own patient and one patient's images "
            "can land in both training and test; for a patient-level split give a CSV manifest with columns "
            "path,label,patient_id (--data-dir manifest.csv)")


def load_csv_manifest(
    csv_path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    path_column: str = "path",
    label_column: str = "label",
    patient_column: str | None = None,
    image_root: str | os.PathLike | None = None,
    on_error: str = "raise",
) -> CXRDataset:
    """A CSV manifest: one row per image with a path, a class label and a patient id.

    Paths are relative to ``image_root`` (default: the CSV's folder) and may not
    escape it (a ``..`` path is an error naming the row; a symbolic link out of it is
    one item's error, raised or, with ``on_error="skip"``, listed in ``ds.skipped``).
    The classes are the manifest's labels (sorted) unless ``class_names`` is given; then
    other labels are an error naming the rows. The dataset is named after the CSV file
    (its folder often holds several manifests).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise CXRDatasetError(csv_path, "manifest CSV not found")
    try:
        # dtype=str: ids such as 007 stay strings; index_col=False: a row with more fields
        # than the header must not silently become a (Multi)Index.
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(csv_path, dtype=str, index_col=False)
    except pd.errors.ParserWarning:
        raise CXRDatasetError(csv_path, "some rows have more fields than the header (an unquoted comma?)") from None
    except Exception as e:
        raise CXRDatasetError(csv_path, f"cannot parse CSV: {e}") from None
    df.columns = [str(c).strip() for c in df.columns]
    if patient_column is None:
        patient_column = next((c for c in ("patient_id", "patient", "patientid") if c in df.columns), None)
    for col in (path_column, label_column):
        if col not in df.columns:
            raise CXRDatasetError(csv_path, f"missing column {col!r} (has {list(df.columns)})")
    if len(df) == 0:
        raise CXRDatasetError(csv_path, "the manifest has a header but no rows")

    def rows(mask) -> list[int]:  # 1-based file line numbers (line 1 is the header)
        return [int(i) + 2 for i in np.flatnonzero(np.asarray(mask))[:5]]

    def blank(col: str) -> pd.Series:
        return df[col].isna() | (df[col].fillna("").str.strip() == "")

    for col, what in ((path_column, "path"), (label_column, "label")):
        if blank(col).any():
            raise CXRDatasetError(csv_path, f"rows {rows(blank(col))} have no {what} (column {col!r})")
    root = Path(image_root) if image_root else csv_path.parent
    root_abs = root.resolve()
    labels_str = df[label_column].str.strip()
    names = [str(c) for c in class_names] if class_names else sorted(labels_str.unique())
    unknown = ~labels_str.isin(names)
    if unknown.any():
        vals = sorted(labels_str[unknown].unique())[:5]
        raise CXRDatasetError(csv_path, f"unknown labels {vals} in rows {rows(unknown)} (classes: {names}); "
                                        "fix the labels, or leave the classes to the manifest (drop --classes)")
    items = []
    for i, rel in enumerate(df[path_column]):
        if "\x00" in rel:
            raise CXRDatasetError(csv_path, f"row {i + 2}: unusable path {rel!r} (embedded NUL byte)")
        # Lexical, not resolve(): resolving follows links (a loop raised a bare
        # RuntimeError, a link out of the root aborted the whole run); links are
        # checked per item below and by validation.
        p = Path(os.path.normpath(os.path.join(root_abs, rel.strip())))
        if root_abs not in p.parents:
            raise CXRDatasetError(csv_path, f"row {i + 2}: path {rel!r} escapes the data root {root}")
        items.append(str(p))
    if patient_column is None:
        _log.warning(own_patient_hint(csv_path, len(df)))
        pids = [f"img-{i}" for i in range(len(df))]
    else:
        if blank(patient_column).any():  # "nan" would silently merge them into one patient
            raise CXRDatasetError(csv_path, f"rows {rows(blank(patient_column))} have no patient id "
                                            f"(column {patient_column!r})")
        pids = df[patient_column].str.strip().tolist()
    meta = df.copy()
    meta["item"] = items
    meta["patient_id"] = pids
    meta["source"] = csv_path.stem
    labels = np.zeros((len(df), len(names)), np.float32)
    labels[np.arange(len(df)), labels_str.map(names.index).to_numpy()] = 1.0
    keep, skipped = _check_links(items, root_abs, on_error)
    ds = CXRDataset(items, labels, names, meta, name=csv_path.stem)
    if not all(keep):
        ds = ds.subset(np.asarray(keep, dtype=bool))
        if len(ds) == 0:
            raise CXRDatasetError(csv_path, "no usable rows: every path is a link out of the data root")
    ds.skipped = skipped
    ds.patients_from = (f"manifest column {patient_column!r}" if patient_column
                        else "no patient column: each image is its own patient")
    return ds


FORMATS: dict[str, Callable[..., CXRDataset]] = {
    "kermany": load_kermany,
    "npz": load_medmnist,
    "folder": load_folder,
    "csv": load_csv_manifest,
}


def is_kermany_layout(path: str | os.PathLike) -> bool:
    """Whether ``path`` is Kermany's published ``chest_xray`` layout.

    That is ``NORMAL/`` and ``PNEUMONIA/`` (upper case, as published) side by side inside a
    ``train``/``test``/``val`` folder (``path`` itself or below it). File names are not
    looked at: a folder per class whose files merely carry Kermany names is the user's own
    class-folder set, and reading it as Kermany would change its task to 3 classes.
    """
    p = Path(path)
    if not p.is_dir():
        return False
    for d in [p, *(c for c in p.rglob("*") if c.is_dir())]:
        if d.name.lower() in ("train", "test", "val"):
            # exact names from the listing: a case-insensitive file system would let
            # (d / "NORMAL").is_dir() match a user's own normal/ folder
            subdirs = {c.name for c in d.iterdir() if c.is_dir()}
            if {"NORMAL", "PNEUMONIA"} <= subdirs:
                return True
    return False


def detect_format(path: str | os.PathLike) -> str:
    """Guess the layout of ``path``: npz file/folder, CSV, Kermany or folder-per-class."""
    p = Path(path)
    if p.suffix == ".npz" or (p.is_dir() and any(p.glob("*.npz"))):
        return "npz"
    if p.suffix == ".csv":
        return "csv"
    if p.is_dir():
        return "kermany" if is_kermany_layout(p) else "folder"
    raise CXRDatasetError(p, "cannot tell the dataset format; pass --format kermany|folder|npz|csv")


def describe_format(path: str | os.PathLike, fmt: str) -> str:
    """One line saying what layout ``path`` was read as and why (printed by the runs)."""
    p = Path(path)
    if fmt == "kermany":
        return "Kermany chest_xray layout (train/test/val folders with NORMAL/ and PNEUMONIA/)"
    if fmt == "folder" and p.is_dir():
        subdirs = sorted(d.name for d in p.iterdir() if d.is_dir())
        return f"one folder per class, classes from the folder names {subdirs}"
    if fmt == "csv":
        return "CSV manifest (path, label, patient columns)"
    if fmt == "npz":
        return "MedMNIST .npz arrays"
    return fmt


def load_dataset(path: str | os.PathLike, format: str = "auto", **kwargs) -> CXRDataset:
    """Load any supported layout through the one contract."""
    fmt = detect_format(path) if format == "auto" else format
    if fmt not in FORMATS:
        raise CXRDatasetError(None, f"unknown format {fmt!r}; choose from {sorted(FORMATS)}")
    return FORMATS[fmt](path, **kwargs)
