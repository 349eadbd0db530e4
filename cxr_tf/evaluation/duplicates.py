"""The near-duplicate audit of a split: pairs, counts, a thumbnail sheet, ``--dedupe``.

:func:`audit_duplicates` is what a run calls after splitting: it writes
``duplicates.csv`` (every pair under the threshold), ``duplicates.png`` (the closest
pairs side by side, to look at) and ``duplicates.json`` (the counts for the report)
into the run folder. Hashing and pair finding live in :mod:`cxr_tf.datasets.duplicates`.

Command line (several datasets at once, audited as one pool)::

    python -m cxr_tf.evaluation.duplicates --data-dir $CXR_DATA_DIR/covid_ieee8023 \\
        --data-dir $CXR_DATA_DIR/covid19_radiography --data-dir $CXR_DATA_DIR/kermany224 --out dup_audit
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from cxr_tf.datasets.contract import CXRDataset
from cxr_tf.io import display_name
from cxr_tf.datasets.duplicates import DEFAULT_THRESHOLD, N_BITS, dedupe_mask, find_duplicates

logger = logging.getLogger("cxr_tf.evaluation")

CSV_COLUMNS = ["item_a", "item_b", "split_a", "split_b", "source_a", "source_b", "patient_a", "patient_b",
               "distance", "group", "cross_split", "cross_source", "same_patient", "patient_leakage"]


def duplicate_counts(pairs: pd.DataFrame, n_items: int | None = None) -> dict:
    """Counts for the report: pairs, groups, cross-split, patient-leakage and cross-source
    pairs, and pairs per (source, source) and (split, split) combination."""
    def combo(a, b):  # "x / y" with the names sorted, so (x, y) and (y, x) count together
        x, y = pairs[a].astype(str).to_numpy(), pairs[b].astype(str).to_numpy()
        keys = np.where(x <= y, np.char.add(np.char.add(x.astype("U"), " / "), y.astype("U")),
                        np.char.add(np.char.add(y.astype("U"), " / "), x.astype("U")))
        return pd.Series(keys).value_counts().to_dict() if len(pairs) else {}

    out = {
        "pairs": int(len(pairs)),
        "groups": int(pairs["group"].nunique()) if len(pairs) else 0,
        "images_in_pairs": int(len(set(pairs["index_a"]) | set(pairs["index_b"]))) if len(pairs) else 0,
        "cross_split_pairs": int(pairs["cross_split"].sum()) if len(pairs) else 0,
        "patient_leakage_pairs": int(pairs["patient_leakage"].sum()) if len(pairs) else 0,
        "cross_source_pairs": int(pairs["cross_source"].sum()) if len(pairs) else 0,
        "same_patient_pairs": int(pairs["same_patient"].sum()) if len(pairs) else 0,
        "by_source": {k: int(v) for k, v in combo("source_a", "source_b").items()},
        "by_split": {k: int(v) for k, v in combo("split_a", "split_b").items()},
    }
    if n_items is not None:
        out["images"] = int(n_items)
    return out


def _thumb(item, size: int) -> np.ndarray:
    from PIL import Image

    from cxr_tf.io import read_image

    a = read_image(item) if isinstance(item, (str, os.PathLike)) else np.asarray(item, np.float32)
    a = a.mean(-1) if a.ndim == 3 else a
    lo, hi = np.percentile(a, [0.5, 99.5])
    a = np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1)
    im = Image.fromarray((a * 255).astype(np.uint8))
    scale = size / max(im.size)  # fit the cell, up or down, keeping the aspect: a squashed copy must look squashed
    im = im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))), Image.BILINEAR)
    return np.asarray(im)


def thumbnail_sheet(ds: CXRDataset, pairs: pd.DataFrame, path: str | os.PathLike, top: int = 24,
                    size: int = 160, cols: int = 3, title: str = "closest first", dpi: int = 90) -> str | None:
    """A PNG of the ``top`` closest pairs: image A, image B, with source, split and distance.

    Pairs are taken in order (closest first); pass a filtered table (e.g. only
    cross-source pairs, or a distance band) to look at a particular kind.

    Returns:
        The path written, or ``None`` when there are no pairs.
    """
    if len(pairs) == 0:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = pairs.head(top)
    rows = int(np.ceil(len(sel) / cols))
    # One mosaic image on one axes: 48 separate axes take seconds to lay out and draw.
    label, gap = size // 4, size // 6  # text band above each row, gap between pairs
    cell_w = 2 * size + gap
    mosaic = np.full((rows * (size + label), cols * cell_w), 255, np.uint8)
    texts = []
    for k, (_, r) in enumerate(sel.iterrows()):
        rr, cc = divmod(k, cols)
        y0 = rr * (size + label) + label
        for s_i, side in enumerate(("a", "b")):
            t = _thumb(ds.items[int(r[f"index_{side}"])], size)
            x0 = cc * cell_w + s_i * size
            oy, ox = (size - t.shape[0]) // 2, (size - t.shape[1]) // 2
            mosaic[y0 + oy:y0 + oy + t.shape[0], x0 + ox:x0 + ox + t.shape[1]] = t
            name = display_name(str(r[f"item_{side}"]))  # surrogates: fonts cannot draw them
            texts.append((x0 + size / 2, y0 - 2, f"{r[f'source_{side}']}\n{name[:24]} [{r[f'split_{side}'] or '-'}]",
                          "black", "bottom"))
        texts.append((cc * cell_w + 4, y0 + size - 4, f"d={int(r['distance'])}", "white", "bottom"))
    h, w = mosaic.shape
    fig = plt.figure(figsize=(w / dpi, h / dpi + 0.3), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, h / (h + 0.3 * dpi)))
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.axis("off")
    for x, y, text, color, va in texts:
        if color == "black":
            ax.text(x, y, text, color=color, fontsize=6, ha="center", va=va)
        else:  # the distance, white on a black box: readable on any radiograph and after quantising
            ax.text(x, y, text, color=color, fontsize=8, ha="left", va=va, bbox={"facecolor": "black", "pad": 1})
    fig.suptitle(f"near-duplicate pairs (Hamming distance d of {N_BITS}-bit pHash; {title})", fontsize=9,
                 y=1 - 0.05 / (h / dpi + 0.3))
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    from PIL import Image

    # A 64-colour palette: the sheet is gray radiographs and a little text; this keeps it
    # readable at about a third of the RGBA size (sheets are committed with results).
    with Image.open(path) as im:
        pal = im.convert("RGB").quantize(64, method=Image.Quantize.MEDIANCUT)
    pal.save(path, optimize=True)
    return os.fspath(path)


def audit_duplicates(ds: CXRDataset, split: Sequence[str] | None, out_dir: str | os.PathLike,
                     threshold: int = DEFAULT_THRESHOLD, cache_dir: str | os.PathLike | None = None,
                     dedupe: bool = False, top: int = 24) -> tuple[dict, np.ndarray]:
    """Audit ``ds`` (with its split) and write ``duplicates.csv/.png/.json`` into ``out_dir``.

    Args:
        ds: the dataset as split.
        split: split name per item, or ``None``.
        out_dir: the run folder.
        threshold: Hamming distance (of :data:`~cxr_tf.datasets.duplicates.N_BITS`) at or
            under which two images are near-duplicates.
        cache_dir: hash cache (see :func:`cxr_tf.datasets.duplicates.hash_items`).
        dedupe: also choose the copies to drop (one kept per group, train preferred).
        top: pairs on the thumbnail sheet.

    Returns:
        ``(counts, keep)``: the counts written to ``duplicates.json`` (with ``dropped``
        when deduping) and a bool mask of items to keep (all ``True`` without ``dedupe``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pairs = find_duplicates(ds, split, threshold, cache_dir)
    table = pairs[["index_a", "index_b"] + CSV_COLUMNS].copy()
    names = [str(n) for n in ds.item_names]
    if names and all(os.path.isabs(n) for n in names):
        # relative to the data's common folder: a committed or shared CSV names no folder of this machine
        root = os.path.commonpath([os.path.dirname(n) for n in names])
        for c in ("item_a", "item_b"):
            table[c] = [os.path.relpath(n, root) for n in table[c]]
    # file names that are not valid UTF-8 are written as their own bytes, as in splits.csv
    table.to_csv(out / "duplicates.csv", index=False, encoding="utf-8", errors="surrogateescape")
    counts = {"threshold": int(threshold), "hash_bits": N_BITS, **duplicate_counts(pairs, len(ds))}
    keep = dedupe_mask(ds, pairs, split) if dedupe else np.ones(len(ds), bool)
    if dedupe:
        counts["dropped"] = int((~keep).sum())
    for stale in ("duplicates.png", "duplicates_borderline.png"):  # a rerun must not show an old sheet
        (out / stale).unlink(missing_ok=True)
    sheet = thumbnail_sheet(ds, pairs, out / "duplicates.png", top=top)
    counts["thumbnails"] = None if sheet is None else "duplicates.png"
    if len(pairs) > top:  # the pairs nearest the threshold: where a false pair would show
        far = pairs.iloc[::-1]
        thumbnail_sheet(ds, far, out / "duplicates_borderline.png", top=top, title="farthest first")
        counts["thumbnails_borderline"] = "duplicates_borderline.png"
    (out / "duplicates.json").write_text(json.dumps(counts, indent=2) + "\n")
    return counts, keep


def format_counts(counts: dict) -> str:
    """Counts as a few printable lines (for logs and the report)."""
    lines = [f"near-duplicates (pHash Hamming <= {counts['threshold']} of {counts['hash_bits']} bits): "
             f"{counts['pairs']} pairs in {counts['groups']} groups over {counts['images_in_pairs']} images; "
             f"{counts['cross_split_pairs']} cross-split, {counts['patient_leakage_pairs']} patient-leakage "
             f"(different patients, different splits), {counts['cross_source_pairs']} cross-source"]
    if counts.get("by_source"):
        lines.append("  by source: " + ", ".join(f"{k}: {v}" for k, v in counts["by_source"].items()))
    if counts.get("by_split"):
        lines.append("  by split:  " + ", ".join(f"{k}: {v}" for k, v in counts["by_split"].items()))
    if "dropped" in counts:
        lines.append(f"  --dedupe dropped {counts['dropped']} images (one kept per group, train preferred)")
    return "\n".join(lines)


def duplicates_section(counts: dict) -> str:
    """The report section: a count table and a link to the pairs and thumbnails."""
    from ._utils import md_table

    rows = [["pairs (groups, images)", f"{counts['pairs']} ({counts['groups']}, {counts['images_in_pairs']})"],
            ["cross-split pairs", counts["cross_split_pairs"]],
            ["patient-leakage pairs (different patients, different splits)", counts["patient_leakage_pairs"]],
            ["cross-source pairs", counts["cross_source_pairs"]]]
    rows += [[f"pairs {k}", v] for k, v in counts.get("by_split", {}).items()]
    rows += [[f"pairs {k}", v] for k, v in counts.get("by_source", {}).items()]
    if "dropped" in counts:
        rows.append(["dropped by --dedupe", counts["dropped"]])
    text = (f"Perceptual hash (DCT pHash, {counts['hash_bits']} bits), pairs at Hamming distance <= "
            f"{counts['threshold']}: [duplicates.csv](duplicates.csv)")
    if counts.get("thumbnails"):
        text += f", closest pairs in [{counts['thumbnails']}]({counts['thumbnails']})"
    if counts.get("thumbnails_borderline"):
        text += f", pairs nearest the threshold in [{counts['thumbnails_borderline']}]({counts['thumbnails_borderline']})"
    return text + ".\n\n" + md_table(["", "count"], rows)


def threshold_check(ds: CXRDataset, n_planted: int = 100, seed: int = 0,
                    cache_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """The measurement behind the threshold, on a real file dataset.

    Distances of planted copies (resized to another size and aspect, JPEG quality 30,
    centred crops of 2%, 3% and 5% of each side's length in total) from their originals,
    beside the smallest distances between images of *different* patients (distinct
    radiographs, unless a collection repeats an image under two patients).

    Returns:
        One row per kind: ``kind, n, min, median, p95, max``.
    """
    import io

    from PIL import Image

    from cxr_tf.datasets.duplicates import hamming_pairs, hash_items, phash
    from cxr_tf.io import read_image

    def crop(im, f):
        w, h = im.size
        dx, dy = round(w * f / 2), round(h * f / 2)
        return im.crop((dx, dy, w - dx, h - dy))

    def jpeg(im):
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=30)
        return Image.open(buf).convert("L")

    kinds = {"resized 331x290": lambda im: im.resize((331, 290), Image.BICUBIC), "jpeg q30": jpeg,
             "crop 2%": lambda im: crop(im, 0.02), "crop 3%": lambda im: crop(im, 0.03),
             "crop 5%": lambda im: crop(im, 0.05)}
    h = hash_items(ds, cache_dir)
    pick = np.random.default_rng(seed).choice(len(ds), min(n_planted, len(ds)), replace=False)
    dist = {k: [] for k in kinds}
    for i in pick:
        a = read_image(ds.items[i])
        im = Image.fromarray(np.clip((a - a.min()) / max(np.ptp(a), 1e-6) * 255, 0, 255).astype(np.uint8))
        for k, fn in kinds.items():
            dist[k].append(int(np.bitwise_count(phash(np.asarray(fn(im), np.float32)) ^ h[i]).sum()))
    i, j, d = hamming_pairs(h, threshold=N_BITS // 4)
    other = ds.patient_ids[i] != ds.patient_ids[j]
    dist["distinct patients: 20 closest pairs"] = sorted(d[other].tolist())[:20]
    rows = [{"kind": k, "n": len(v), "min": min(v), "median": float(np.median(v)),
             "p95": float(np.percentile(v, 95)), "max": max(v)} for k, v in dist.items() if v]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- command line


def load_for_audit(path: str | os.PathLike) -> CXRDataset:
    """Any dataset folder, with every image of the public COVID collections (not only
    the classes an experiment uses): the ieee8023 index (all findings and views),
    covid19_radiography's manifest, Kermany folders, or any format ``load_dataset`` reads."""
    from cxr_tf.datasets import load_dataset
    from cxr_tf.datasets.covid import load_covid19_radiography, load_covid_ieee8023

    p = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no patient ids": expected, and the audit is about exactly that
        if (p / "index.csv").is_file() and (p / "images_256").is_dir():
            return load_covid_ieee8023(p, views=None, covid_only=False)
        if (p / "labels.csv").is_file() and (p / "COVID").is_dir():
            return load_covid19_radiography(p)
        ds = load_dataset(p)
    ds.meta["source"] = p.name  # one source per --data-dir, named by its folder
    return ds


def main(argv: Sequence[str] | None = None) -> int:
    from cxr_tf.datasets import concat, patient_split
    from cxr_tf.datasets.duplicates import default_cache_dir
    from cxr_tf.errors import CXRError

    ap = argparse.ArgumentParser(prog="python -m cxr_tf.evaluation.duplicates",
                                 description="near-duplicate audit over one or more datasets")
    ap.add_argument("--data-dir", action="append", required=True, help="a dataset folder (repeat for several)")
    ap.add_argument("--out", default="duplicate_audit", help="folder for duplicates.csv/.png/.json")
    ap.add_argument("--threshold", type=int, default=DEFAULT_THRESHOLD,
                    help=f"Hamming distance of {N_BITS} bits (default {DEFAULT_THRESHOLD})")
    ap.add_argument("--split", default="8:1:1",
                    help="patient-level split train:val:test drawn over the pool (seeded) to count cross-split "
                         "pairs; 'none' for no split")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--top", type=int, default=24, help="pairs on the thumbnail sheet")
    ap.add_argument("--cache-dir", default=None, help=f"hash cache (default {default_cache_dir()})")
    ap.add_argument("--threshold-check", action="store_true",
                    help="print the distances of planted copies and of the closest distinct images instead")
    a = ap.parse_args(argv)
    try:
        if a.threshold_check:
            for d in a.data_dir:
                print(f"{d}:\n" + threshold_check(load_for_audit(d), seed=a.seed,
                                                   cache_dir=a.cache_dir or default_cache_dir()).to_string(index=False))
            return 0
        parts = [load_for_audit(d) for d in a.data_dir]
        for d in parts:
            d.class_names = ["x"]  # labels differ between sources and play no part in the audit
            d.labels = np.ones((len(d), 1), np.float32)
        ds = concat(parts, name="audit") if len(parts) > 1 else parts[0]
        split = None
        if a.split != "none":
            fr = tuple(float(v) for v in a.split.replace(",", ":").split(":"))
            split = patient_split(ds, tuple(v / sum(fr) for v in fr), seed=a.seed)
        counts, _ = audit_duplicates(ds, split, a.out, a.threshold, a.cache_dir or default_cache_dir(), top=a.top)
    except CXRError as e:
        print(f"cxr_tf: error: {e}", file=sys.stderr)
        return 2
    print(format_counts(counts))
    logger.info(f"wrote {a.out}/duplicates.csv, duplicates.png, duplicates.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
