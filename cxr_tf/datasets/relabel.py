"""Align any dataset to a model's labels (torchxrayvision's ``relabel_dataset`` idea).

Used wherever a trained model meets data it was not trained on: ``cxr-tf evaluate``,
portable-export checks. Class names match case-insensitively; a Kermany folder is read in
the view (3 classes or normal / pneumonia) the model's classes are.
"""
from __future__ import annotations

from cxr_tf.errors import CXRDatasetError


def match_classes(ds, model_classes: list[str], source=None):
    """Relabel the dataset's classes onto the model's (case-insensitive names)."""
    lower = {c.lower(): c for c in model_classes}
    mapping, unknown = {}, []
    for c in ds.class_names:
        key = c.lower()
        if key in lower:
            mapping[c] = lower[key]
        else:
            unknown.append(c)
    if unknown:
        raise CXRDatasetError(
            source, f"dataset classes {unknown} are not among the model's classes {model_classes}; "
            "rename the folders/labels or evaluate a model trained on these classes")
    return ds.select_classes(mapping, model_classes)


def load_for_model(data_dir: str, fmt: str, model_classes: list[str], on_error: str = "raise"):
    """``data_dir`` (any format) with its classes relabelled onto ``model_classes``."""
    from cxr_tf.datasets import KERMANY_3CLASS, KERMANY_PNEUMONIA, detect_format, load_dataset

    fmt = detect_format(data_dir) if fmt == "auto" else fmt
    kwargs = {}
    if fmt == "kermany":
        if [c.lower() for c in model_classes] == KERMANY_3CLASS:
            kwargs["classes"] = "3class"
        elif [c.lower() for c in model_classes] == KERMANY_PNEUMONIA:
            kwargs["classes"] = "pneumonia"
        else:
            raise CXRDatasetError(data_dir, f"Kermany data has no classes matching the model's {model_classes}")
        kwargs["on_error"] = on_error
    elif fmt in ("folder", "csv"):
        kwargs["on_error"] = on_error  # links out of the data root: per-item errors
    elif fmt == "npz":
        kwargs["class_names"] = None
    ds = load_dataset(data_dir, fmt, **kwargs)
    if fmt == "npz" and len(ds.class_names) == len(model_classes) and all(c.isdigit() for c in ds.class_names):
        ds.class_names = list(model_classes)  # unnamed MedMNIST columns follow the model's order
    listed_skipped = list(getattr(ds, "skipped", None) or [])
    ds = match_classes(ds, model_classes, data_dir)
    ds.skipped = listed_skipped  # entries the loader dropped stay in the skip list
    return ds
