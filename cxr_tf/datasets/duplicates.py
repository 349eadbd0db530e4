"""Near-duplicate images: perceptual hashes, pairs under a Hamming threshold, dedupe.

Public CXR collections re-publish each other's radiographs (resized, re-encoded,
cropped). A patient-level split cannot see that: the copy carries another patient id
(or another source's), so the same radiograph can sit in train and test. This module
finds such pairs for any :class:`CXRDataset`; :mod:`cxr_tf.evaluation.duplicates`
writes the audit (CSV, thumbnail sheet, counts) for a run.

The hash is a 256-bit DCT perceptual hash (pHash, Zauner 2010) on a 64x64 resize of the
image as :func:`cxr_tf.io.read_image` decodes it: the 16x16 lowest spatial frequencies
(DC left out) compared with their median. 64-bit hashes (the imagehash default) are
too coarse for chest radiographs, which all share one layout: distinct Kermany images
then come within a few bits of each other (measured in experiments/results/duplicates.md).
The resize ignores the aspect ratio on purpose: one public source squashed its images
to a square, another kept the aspect, and both must hash alike. The hash is computed
with numpy/scipy (``imagehash`` is not a dependency of the project) and cached per file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image
from scipy.fft import dctn
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cxr_tf.datasets.contract import CXRDataset
from cxr_tf.errors import CXRDatasetError

#: pHash side: the image is resized to RESIZE x RESIZE and the HASH x HASH lowest DCT
#: frequencies give HASH*HASH bits.
RESIZE = 64
HASH = 16
N_BITS = HASH * HASH
#: Default Hamming threshold (pairs with distance <= it are near-duplicates), out of
#: 256 bits; chosen on real images (experiments/results/duplicates.md): resized and
#: JPEG-q30 copies of kermany224 images stay <= 14 bits from their original and 3%-cropped
#: copies mostly <= 34, while the closest two distinct radiographs among all 5,216
#: kermany224 images are 38 apart. Precision first: a false pair costs a real image under
#: ``--dedupe``. Crops beyond ~3% or off-centre crops are missed (a global hash moves).
DEFAULT_THRESHOLD = 36
#: Bump when the hash changes so stale caches are never read.
HASH_VERSION = "phash256-v1"

SPLIT_PREFERENCE = ("train", "val", "test")


def phash(image: np.ndarray) -> np.ndarray:
    """The 256-bit DCT perceptual hash of one gray image, as 4 ``uint64`` words.

    Args:
        image: ``(H, W)`` or ``(H, W, 1|3)`` array, any range (float or integer).
    """
    a = np.asarray(image, np.float32)
    if a.ndim == 3:
        a = a.mean(axis=-1)
    if a.ndim != 2 or min(a.shape) < 2:
        raise CXRDatasetError(None, f"phash needs a 2-D image; got shape {np.shape(image)}")
    # Box (area) resampling averages every pixel, so a re-encoded or resized copy lands
    # on the same 64x64 grid as its original; "F" mode keeps 16-bit data unscaled.
    small = np.asarray(Image.fromarray(a, mode="F").resize((RESIZE, RESIZE), Image.BOX), np.float64)
    coef = dctn(small, norm="ortho")[:HASH, :HASH].ravel()[1:]  # drop DC: brightness is not content
    bits = np.concatenate([[False], coef > np.median(coef)])
    return np.packbits(bits).view(">u8").astype(np.uint64)


def _file_key(path: str) -> str:
    st = os.stat(path)
    return f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"


def _load_cache(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["version"]) != HASH_VERSION:
                return {}
            return dict(zip(z["keys"].tolist(), z["hashes"]))
    except (OSError, ValueError, KeyError):  # a half-written or foreign file: rehash
        return {}


def _save_cache(path: Path, cache: dict[str, np.ndarray]) -> None:
    from cxr_tf.io.atomic import atomic_path

    keys = np.array(list(cache), dtype=str)
    hashes = np.stack(list(cache.values())) if cache else np.zeros((0, N_BITS // 64), np.uint64)
    with atomic_path(path) as tmp:  # readers never see a partial file
        np.savez(tmp, version=HASH_VERSION, keys=keys, hashes=hashes)


def hash_items(ds: CXRDataset, cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """Perceptual hashes of every item, ``(N, 4)`` ``uint64``.

    Files are decoded with :func:`cxr_tf.io.read_image` (the project's decoding: DICOM
    windowing, 16-bit PNG, colour to luminance). With ``cache_dir`` the hashes are kept
    in ``cache_dir/phash.npz`` keyed by path, size and modification time, so a second
    audit of the same data reads no image.
    """
    if ds.in_memory:
        return np.stack([phash(x) for x in ds.items]) if len(ds) else np.zeros((0, N_BITS // 64), np.uint64)
    from cxr_tf.io import read_image

    cache_path = Path(cache_dir) / "phash.npz" if cache_dir else None
    cache = _load_cache(cache_path) if cache_path else {}
    out = np.zeros((len(ds), N_BITS // 64), np.uint64)
    n_new = 0
    for i, p in enumerate(ds.items):
        p = str(p)
        key = _file_key(p)
        h = cache.get(key)
        if h is None:
            h = phash(read_image(p))
            cache[key] = h
            n_new += 1
        out[i] = h
    if cache_path and n_new:
        _save_cache(cache_path, cache)
    return out


def hamming_pairs(hashes: np.ndarray, threshold: int = DEFAULT_THRESHOLD, block: int | None = None,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs ``i < j`` with Hamming distance ``<= threshold``.

    Vectorised: XOR of the packed words of a block of rows against all later rows and
    ``np.bitwise_count``, so 6,754 images (23M pairs) take about a second. Quadratic:
    100,000 images (NIH-sized) would take minutes.

    Returns:
        ``(i, j, distance)`` int arrays, sorted by distance then ``i``, ``j``.
    """
    h = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(h)
    if block is None:  # bound the (block, n, words) XOR temporary to about 160 MB
        block = int(max(1, min(512, 20_000_000 // max(1, n * h.shape[1]))))
    ii, jj, dd = [], [], []
    for s in range(0, n, block):
        a = h[s:s + block]
        d = np.bitwise_count(a[:, None, :] ^ h[None, s:, :]).sum(-1, dtype=np.int32)
        r, c = np.nonzero(d <= threshold)
        c = c + s
        r = r + s
        keep = c > r  # each unordered pair once, no self-pairs
        ii.append(r[keep])
        jj.append(c[keep])
        dd.append(d[r[keep] - s, c[keep] - s])
    i = np.concatenate(ii) if ii else np.zeros(0, int)
    j = np.concatenate(jj) if jj else np.zeros(0, int)
    d = np.concatenate(dd) if dd else np.zeros(0, np.int32)
    order = np.lexsort((j, i, d))
    return i[order], j[order], d[order]


def find_duplicates(ds: CXRDataset, split: Sequence[str] | None = None, threshold: int = DEFAULT_THRESHOLD,
                    cache_dir: str | os.PathLike | None = None, hashes: np.ndarray | None = None) -> pd.DataFrame:
    """Near-duplicate pairs of ``ds`` as a table, closest first.

    Args:
        ds: any dataset (files or in-memory arrays).
        split: optional split name per item (``train``/``val``/``test``).
        threshold: largest Hamming distance (of :data:`N_BITS`) that counts as a duplicate.
        cache_dir: hash cache folder (see :func:`hash_items`).
        hashes: precomputed hashes (skips hashing).

    Returns:
        Columns ``index_a, index_b, item_a, item_b, split_a, split_b, source_a, source_b,
        patient_a, patient_b, distance, group`` plus the flags ``cross_split``,
        ``cross_source``, ``same_patient`` and ``patient_leakage`` (different patients in
        different splits: the copy defeats the patient-level split).
    """
    if split is not None and len(split) != len(ds):
        raise CXRDatasetError(None, f"split has {len(split)} entries for {len(ds)} items")
    h = hash_items(ds, cache_dir) if hashes is None else np.asarray(hashes, np.uint64)
    i, j, d = hamming_pairs(h, threshold)
    names = np.asarray(ds.item_names, dtype=object)
    sp = np.asarray(split, dtype=object) if split is not None else np.full(len(ds), "", dtype=object)
    src = ds.meta["source"].astype(str).to_numpy()
    pid = ds.patient_ids
    groups = duplicate_groups(len(ds), i, j)
    df = pd.DataFrame({
        "index_a": i, "index_b": j, "item_a": names[i], "item_b": names[j],
        "split_a": sp[i], "split_b": sp[j], "source_a": src[i], "source_b": src[j],
        "patient_a": pid[i], "patient_b": pid[j], "distance": d, "group": groups[i],
    })
    df["cross_split"] = df["split_a"] != df["split_b"]
    df["cross_source"] = df["source_a"] != df["source_b"]
    df["same_patient"] = df["patient_a"] == df["patient_b"]
    df["patient_leakage"] = df["cross_split"] & ~df["same_patient"]
    return df


def duplicate_groups(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Group id per item: connected components of the duplicate-pair graph (a singleton
    is its own group). Transitive on purpose: A~B and B~C put A, B, C in one group."""
    g = coo_matrix((np.ones(len(i), np.int8), (np.asarray(i, int), np.asarray(j, int))), shape=(n, n))
    return connected_components(g, directed=False)[1]


def dedupe_mask(ds: CXRDataset, pairs: pd.DataFrame, split: Sequence[str] | None = None) -> np.ndarray:
    """Which items to keep: one per duplicate group, preferring ``train``, then ``val``,
    then ``test``, then the earliest item.

    Keeping the training copy removes the evaluation copies, which is what a leak-free
    test split needs, and costs training at most one image per group.

    Returns:
        Bool ``(N,)``, ``True`` for items to keep.
    """
    n = len(ds)
    keep = np.ones(n, bool)
    if len(pairs) == 0:
        return keep
    groups = duplicate_groups(n, pairs["index_a"].to_numpy(), pairs["index_b"].to_numpy())
    sp = np.asarray(split, dtype=object) if split is not None else np.full(n, "", dtype=object)
    rank = np.array([SPLIT_PREFERENCE.index(s) if s in SPLIT_PREFERENCE else len(SPLIT_PREFERENCE) for s in sp])
    order = np.lexsort((np.arange(n), rank, groups))  # by group, then preferred split, then index
    first = np.ones(n, bool)
    first[1:] = groups[order][1:] != groups[order][:-1]
    keep[order] = first
    return keep


def dedupe(ds: CXRDataset, split: Sequence[str] | None = None, threshold: int = DEFAULT_THRESHOLD,
           cache_dir: str | os.PathLike | None = None) -> tuple[CXRDataset, np.ndarray | None, pd.DataFrame]:
    """Drop later copies of every near-duplicate group (see :func:`dedupe_mask`).

    Returns:
        ``(kept dataset, kept split or None, the pairs found)``.
    """
    pairs = find_duplicates(ds, split, threshold, cache_dir)
    keep = dedupe_mask(ds, pairs, split)
    kept_split = None if split is None else np.asarray(split, dtype=object)[keep]
    return ds.subset(keep), kept_split, pairs


def default_cache_dir() -> Path:
    """``$CXR_CACHE_DIR/duplicates`` or ``~/.cache/cxr_tf/duplicates``."""
    base = os.environ.get("CXR_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "cxr_tf")
    return Path(base) / "duplicates"

