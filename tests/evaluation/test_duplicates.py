"""Near-duplicate audit on real kermany224 radiographs with planted copies."""
from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_tf.datasets import CXRDataset, load_kermany
from cxr_tf.datasets.duplicates import (
    DEFAULT_THRESHOLD,
    dedupe,
    dedupe_mask,
    find_duplicates,
    hamming_pairs,
    hash_items,
)
from cxr_tf.evaluation.duplicates import audit_duplicates, duplicate_counts


def _dataset(paths, patients, sources) -> CXRDataset:
    meta = pd.DataFrame({"patient_id": patients, "source": sources})
    return CXRDataset([str(p) for p in paths], np.ones((len(paths), 1), np.float32), ["x"], meta, name="t")


@pytest.fixture(scope="module")
def distinct_kermany(kermany_dir):
    """200 distinct real radiographs: one image per patient (Kermany repeats some images
    within a patient; across patients they are distinct)."""
    ds = load_kermany(kermany_dir, classes="pneumonia")
    first = ds.meta.groupby("patient_id").head(1).index.to_numpy()
    pick = np.sort(np.random.default_rng(0).choice(first, 200, replace=False))
    return [ds.items[i] for i in pick]


def _copies(path, out_dir, k):
    """Resized, JPEG-q30 re-encoded and ~2% cropped copies of one image."""
    im = Image.open(path).convert("L")
    w, h = im.size
    out = []
    p = out_dir / f"c{k}_resized.png"
    im.resize((331, 290), Image.BICUBIC).save(p)  # another size, another aspect
    out.append(p)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=30)
    p = out_dir / f"c{k}_q30.jpg"
    p.write_bytes(buf.getvalue())
    out.append(p)
    p = out_dir / f"c{k}_crop.png"
    im.crop((2, 2, w - 2, h - 2)).save(p)  # 2 px off each side of 224: 1.8%
    out.append(p)
    return out


@pytest.fixture(scope="module")
def planted(distinct_kermany, tmp_path_factory):
    """200 originals (train, source A) + 3 copies of 10 of them (test, source B, other patients)."""
    d = tmp_path_factory.mktemp("copies")
    copies, of = [], []
    for k, orig in enumerate(distinct_kermany[:10]):
        c = _copies(orig, d, k)
        copies += c
        of += [k] * len(c)
    paths = list(distinct_kermany) + copies
    patients = [f"p{i}" for i in range(200)] + [f"copy{i}" for i in range(len(copies))]
    sources = ["A"] * 200 + ["B"] * len(copies)
    split = np.array(["train"] * 200 + ["test"] * len(copies), dtype=object)
    return _dataset(paths, patients, sources), split, np.array(of)


def test_distinct_real_images_give_no_pairs(distinct_kermany):
    ds = _dataset(distinct_kermany, [f"p{i}" for i in range(200)], ["A"] * 200)
    pairs = find_duplicates(ds, threshold=DEFAULT_THRESHOLD)
    assert len(pairs) == 0, pairs[["item_a", "item_b", "distance"]].head()


def test_planted_copies_are_found_and_nothing_else(planted):
    ds, split, of = planted
    pairs = find_duplicates(ds, split)
    found = {(int(a), int(b)) for a, b in zip(pairs["index_a"], pairs["index_b"])}
    want = set()
    for k in range(10):
        members = [k] + [200 + i for i in np.flatnonzero(of == k)]
        want |= {(a, b) for a in members for b in members if a < b}
    assert found == want  # every copy pairs with its original and its sibling copies; no other pair
    assert pairs["distance"].max() <= DEFAULT_THRESHOLD
    assert (pairs["distance"].to_numpy()[:-1] <= pairs["distance"].to_numpy()[1:]).all()  # closest first
    # original (train, A) vs copy (test, B, another patient): leakage a patient split cannot see
    orig_copy = pairs[pairs["index_a"] < 200]
    assert orig_copy["patient_leakage"].all() and orig_copy["cross_source"].all()
    c = duplicate_counts(pairs)
    assert c["groups"] == 10 and c["images_in_pairs"] == 40
    assert c["cross_split_pairs"] == c["patient_leakage_pairs"] == 30
    assert c["cross_source_pairs"] == 30 and c["by_source"] == {"A / B": 30, "B / B": 30}


def test_dedupe_keeps_one_per_group_preferring_train(planted):
    ds, split, of = planted
    kept, kept_split, pairs = dedupe(ds, split)
    assert len(kept) == 200  # 10 groups of 4 -> 10 kept; 190 singletons untouched
    assert list(kept.items) == list(ds.items[:200])  # the train originals survive, every copy goes
    assert set(kept_split) == {"train"}
    # a group entirely in test keeps its earliest member
    test_only = np.array(["test"] * len(ds), dtype=object)
    keep = dedupe_mask(ds, pairs, test_only)
    assert keep.sum() == 200 and keep[:200].all()
    # a copy in train and its original in test: the train copy is kept instead
    s2 = split.copy()
    s2[0], s2[200] = "test", "train"
    keep = dedupe_mask(ds, pairs, s2)
    assert not keep[0] and keep[200] and not keep[201] and not keep[202]


def test_hamming_pairs_equal_brute_force():
    h = np.random.default_rng(1).integers(0, 2**63, size=(700, 4), dtype=np.uint64)
    h[5] = h[600]  # an exact pair
    h[7] = h[3]
    h[7, 0] ^= np.uint64(0b1011)  # 3 bits apart
    bits = np.unpackbits(h.view(np.uint8), axis=1).astype(np.int32)
    d = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    i, j, dist = hamming_pairs(h, threshold=110, block=128)  # block < N: pairs across blocks
    ii, jj = np.nonzero(np.triu(d <= 110, 1))
    assert set(zip(i.tolist(), j.tolist())) == set(zip(ii.tolist(), jj.tolist()))
    assert (dist == d[i, j]).all()
    assert (5, 600) in set(zip(i.tolist(), j.tolist())) and d[3, 7] == 3


def test_hash_cache_reads_no_image_the_second_time(distinct_kermany, tmp_path, monkeypatch):
    ds = _dataset(distinct_kermany[:20], [str(i) for i in range(20)], ["A"] * 20)
    first = hash_items(ds, tmp_path)
    import cxr_tf.io

    def fail(*a, **k):
        raise AssertionError("image decoded although cached")

    monkeypatch.setattr(cxr_tf.io, "read_image", fail)
    assert (hash_items(ds, tmp_path) == first).all()


def test_audit_writes_csv_png_json(planted, tmp_path):
    ds, split, _ = planted
    counts, keep = audit_duplicates(ds, split, tmp_path, dedupe=True, top=6)
    csv = pd.read_csv(tmp_path / "duplicates.csv")
    assert len(csv) == counts["pairs"] == 60
    assert {"item_a", "item_b", "split_a", "split_b", "source_a", "source_b", "patient_a", "patient_b",
            "distance"} <= set(csv.columns)
    assert json.loads((tmp_path / "duplicates.json").read_text()) == counts
    assert counts["dropped"] == 30 and keep.sum() == 200
    with Image.open(tmp_path / "duplicates.png") as im:
        assert im.size[0] > 400 and im.size[1] > 200


def test_run_flow_audits_dedupes_and_reports(planted, tmp_path):
    """make_split (the shared experiment flow) writes the audit; --dedupe leaves the copies
    in no split, splits.csv reloads that, and the run's report carries the counts."""
    from cxr_tf.datasets import load_splits, save_splits
    from cxr_tf.evaluation import classification_metrics, write_report
    from cxr_tf.training import flow as common
    from cxr_tf.training.config import TrainConfig

    ds, split, _ = planted
    save_splits(tmp_path / "given.csv", ds, split)
    cfg = TrainConfig(split=str(tmp_path / "given.csv"), dedupe=True, cache_dir=str(tmp_path / "cache"))
    run = tmp_path / "run"
    run.mkdir()
    s = common.make_split(cfg, ds, run)
    assert (s == "").sum() == 30 and (s[:200] == "train").all() and len(ds.subset(s == "test")) == 0
    assert (load_splits(run / "splits.csv", ds) == s).all()
    for f in ("duplicates.csv", "duplicates.png", "duplicates.json"):
        assert (run / f).is_file()
    m = classification_metrics([0, 1, 0, 1], [[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]], ["a", "b"], n_boot=0)
    text = (run / write_report(run, m, title="t")).read_text()
    assert "## Near-duplicate audit" in text and "| patient-leakage pairs (different patients, different splits) | 30 |" in text
    assert "| dropped by --dedupe | 30 |" in text
    # without the flags the flow is unchanged: no audit files, split untouched
    run2 = tmp_path / "run2"
    run2.mkdir()
    cfg2 = TrainConfig(split=str(tmp_path / "given.csv"), duplicate_audit=False)
    assert (common.make_split(cfg2, ds, run2) == split).all() and not (run2 / "duplicates.csv").exists()
