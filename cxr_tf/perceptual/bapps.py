"""The BAPPS folder layout (Zhang et al. 2018) used by LPIPS, read and written.

A test-set root ``DIR`` holds::

    DIR/2afc/<subset>/{ref,p0,p1}/<id>.png    reference and two distorted candidates
    DIR/2afc/<subset>/judge/<id>.npy          fraction of raters who chose p1 as closer to ref
    DIR/jnd/<subset>/{p0,p1}/<id>.png         a pair
    DIR/jnd/<subset>/same/<id>.npy            fraction of raters who said "same"
    DIR/manifest.csv                          every item's source image, distortions, parameters, seed

Images are 8-bit gray PNGs; ``<id>`` is a 6-digit zero-padded number. The LPIPS
loaders (``data/dataset/twoafc_dataset.py``, ``jnd_dataset.py``) list each folder,
sort it and pair files by position, so the stems must match across folders; each
``.npy`` holds a float array of shape ``(1,)``. :func:`read_items` pairs by stem
instead and keeps only items that have a judgment file.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_tf.errors import CXRDatasetError

KINDS = {"2afc": ("ref", "p0", "p1"), "jnd": ("p0", "p1")}
JUDGMENT_DIR = {"2afc": "judge", "jnd": "same"}
MANIFEST_COLUMNS = ["kind", "subset", "id", "source_image", "distortion_p0", "severity_p0", "params_p0",
                    "distortion_p1", "severity_p1", "params_p1", "seed"]


def item_id(i: int) -> str:
    return f"{i:06d}"


def write_png(path: Path, image: np.ndarray) -> None:
    """Float [0, 1] (H, W) -> 8-bit gray PNG."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), mode="L").save(path, optimize=False)


def read_png(path: Path) -> np.ndarray:
    """8-bit gray PNG -> float32 (H, W) in [0, 1] (CXRImageError on a bad file)."""
    from cxr_tf.io import read_image

    a = read_image(path)
    return (a / 255.0).astype(np.float32)


def write_judgment(root: Path, kind: str, subset: str, iid: str, value: float) -> Path:
    """Write one judgment file as the LPIPS loaders read it (float32 array of shape (1,))."""
    p = Path(root) / kind / subset / JUDGMENT_DIR[kind] / f"{iid}.npy"
    p.parent.mkdir(parents=True, exist_ok=True)
    np.save(p, np.array([value], np.float32))
    return p


def read_manifest(root) -> pd.DataFrame:
    p = Path(root) / "manifest.csv"
    if not p.is_file():
        raise CXRDatasetError(p, "no manifest.csv: not a test set written by cxr_tf.experiments.perceptual_testset")
    m = pd.read_csv(p, dtype={"id": str})
    missing = [c for c in MANIFEST_COLUMNS if c not in m.columns]
    if missing:
        raise CXRDatasetError(p, f"manifest is missing columns {missing}")
    return m


@dataclasses.dataclass
class Items:
    """The judged items of one (kind, subset): images stacked, judgments, manifest rows."""

    kind: str
    subset: str
    ids: list[str]
    images: dict[str, np.ndarray]  # folder -> (N, H, W) float32
    judgments: np.ndarray  # (N,) fraction p1 chosen (2afc) or "same" (jnd)
    manifest: pd.DataFrame


def has_judgments(root, kind: str, subset: str) -> bool:
    d = Path(root) / kind / subset / JUDGMENT_DIR[kind]
    return d.is_dir() and any(d.glob("*.npy"))


def subsets(root, kind: str) -> list[str]:
    d = Path(root) / kind
    return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []


def read_items(root, kind: str, subset: str, judgments: dict[str, float] | None = None) -> Items:
    """Load one (kind, subset): the images, and judgments from the ``.npy`` files or,
    when ``judgments`` (id -> value) is given, from it. Only judged items are kept."""
    root = Path(root)
    base = root / kind / subset
    man = read_manifest(root)
    man = man[(man["kind"] == kind) & (man["subset"] == subset)].set_index("id", drop=False)
    if judgments is None:
        jd = base / JUDGMENT_DIR[kind]
        judgments = {}
        for p in sorted(jd.glob("*.npy")) if jd.is_dir() else []:
            v = np.load(p).reshape(-1)
            if v.size != 1 or not np.isfinite(v[0]) or not 0 <= v[0] <= 1:
                raise CXRDatasetError(p, f"a judgment file holds one fraction in [0, 1]; found {v[:3]}")
            judgments[p.stem] = float(v[0])
    ids = sorted(i for i in judgments if i in man.index)
    unknown = sorted(set(judgments) - set(man.index))
    if unknown:
        raise CXRDatasetError(base, f"judgments for ids not in the manifest: {unknown[:5]}")
    images = {}
    for folder in KINDS[kind]:
        arrs = []
        for i in ids:
            p = base / folder / f"{i}.png"
            if not p.is_file():
                raise CXRDatasetError(p, "image listed in the manifest is missing")
            arrs.append(read_png(p))
        images[folder] = np.stack(arrs) if arrs else np.zeros((0, 1, 1), np.float32)
    return Items(kind, subset, ids, images, np.array([judgments[i] for i in ids], np.float32),
                 man.loc[ids].reset_index(drop=True))
