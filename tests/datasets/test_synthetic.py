"""Tests of the synthetic chest X-ray generator (the embedded default dataset)."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from cxr_tf.datasets.contract import CXRDataset
from cxr_tf.datasets.synthetic import (
    KERMANY_CLASS_WEIGHTS,
    make_synthetic_cxr,
    preview_grid,
    write_synthetic_folder,
)
from cxr_tf.errors import CXRConfigError

N, SIZE = 600, 64


@pytest.fixture(scope="module")
def big():
    """600 images at 64 px with masks (shared: generating costs a few seconds)."""
    return make_synthetic_cxr(n=N, image_size=SIZE, seed=0, return_masks=True)


def _lung_stats(ds: CXRDataset, masks: dict, window: int):
    """Per image: mean lung intensity, and peak local (window-mean) minus median lung intensity."""
    mean, peak = [], []
    for img, lung in zip(ds.items, masks["lung"]):
        img = img.astype(np.float32)
        core = ndimage.binary_erosion(lung, iterations=window // 2)  # window fully inside the lung
        local = ndimage.uniform_filter(img, window)
        mean.append(img[lung].mean())
        peak.append(local[core].max() - np.median(img[lung]))
    return np.array(mean), np.array(peak)


# --------------------------------------------------------------------------- contract
def test_contract_fields():
    ds = make_synthetic_cxr(n=30, image_size=48, seed=1)
    assert isinstance(ds, CXRDataset) and ds.in_memory
    assert ds.items.shape == (30, 48, 48) and ds.items.dtype == np.uint8
    assert ds.labels.dtype == np.float32 and ds.labels.shape == (30, 3)
    assert np.all(ds.labels.sum(1) == 1) and set(np.unique(ds.labels)) == {0.0, 1.0}
    assert ds.class_names == ["bacterial", "viral", "normal"]
    assert (ds.meta["source"] == "synthetic").all()
    assert ds.meta["patient_id"].str.fullmatch(r"synth-\d{6}").all()
    assert ds.meta["item"].is_unique
    assert list(ds.meta["label"]) == [ds.class_names[i] for i in ds.class_index()]
    assert set(ds.meta["sex"]) <= {"M", "F"} and ds.meta["age"].between(1, 5).all()
    for col in ("finding", "severity", "n_lesions", "lesion_side", "marker", "view"):
        assert col in ds.meta.columns


def test_deterministic_and_seed_dependent():
    a = make_synthetic_cxr(n=12, image_size=40, seed=5)
    b = make_synthetic_cxr(n=12, image_size=40, seed=5)
    c = make_synthetic_cxr(n=12, image_size=40, seed=6)
    assert np.array_equal(a.items, b.items) and np.array_equal(a.labels, b.labels)
    pd.testing.assert_frame_equal(a.meta, b.meta)
    assert not np.array_equal(a.items, c.items)
    # Asking for masks draws nothing extra: same images.
    d, masks = make_synthetic_cxr(n=12, image_size=40, seed=5, return_masks=True)
    assert np.array_equal(a.items, d.items)
    assert masks["lung"].shape == masks["lesion"].shape == (12, 40, 40)


def test_class_balance_and_weights(big):
    ds, _ = big
    assert ds.class_counts() == {"bacterial": 200, "viral": 200, "normal": 200}
    odd = make_synthetic_cxr(n=31, image_size=16, seed=2)
    counts = list(odd.class_counts().values())
    assert sum(counts) == 31 and max(counts) - min(counts) <= 1
    kerm = make_synthetic_cxr(n=100, image_size=16, seed=2, class_weights=KERMANY_CLASS_WEIGHTS)
    assert kerm.class_counts() == {"bacterial": 47, "viral": 26, "normal": 27}
    only = make_synthetic_cxr(n=10, image_size=16, class_weights=[1, 0, 0])
    assert only.class_counts()["bacterial"] == 10


def test_patients_have_one_to_three_images_of_one_class(big):
    ds, _ = big
    g = ds.meta.groupby("patient_id")
    sizes = g.size()
    assert sizes.between(1, 3).all() and (sizes > 1).mean() > 0.4
    assert (g["label"].nunique() == 1).all()  # a patient's films share the class ...
    assert (g["age"].nunique() == 1).all() and (g["sex"].nunique() == 1).all()  # ... and who they are
    # 4 images per class: exactly two patients of two (a class count that is not a
    # multiple leaves its last patient with fewer images).
    pair = make_synthetic_cxr(n=12, image_size=16, images_per_patient=(2, 2))
    assert (pair.meta.groupby("patient_id").size() == 2).all()


def test_same_patient_images_are_alike_but_not_identical(big):
    ds, _ = big
    x = ds.items.reshape(len(ds), -1).astype(np.float32)
    pid = ds.patient_ids
    multi = [np.flatnonzero(pid == p) for p in np.unique(pid) if (pid == p).sum() > 1][:40]
    within = np.mean([np.abs(x[i[0]] - x[i[1]]).mean() for i in multi])
    rng = np.random.default_rng(0)
    pairs = rng.integers(0, len(ds), (200, 2))
    across = np.mean([np.abs(x[i] - x[j]).mean() for i, j in pairs if pid[i] != pid[j]])
    assert 0 < within < 0.8 * across


# --------------------------------------------------------------------------- image content
def test_images_look_like_radiographs(big):
    ds, masks = big
    img = ds.items.astype(np.float32)
    assert (img.reshape(len(ds), -1).std(1) > 20).all()  # not constant
    lung = masks["lung"]
    assert 0.12 < lung.mean() < 0.45  # lungs occupy a plausible share of the film
    # Dark lungs; bright mediastinum/spine (central column between the lungs).
    c = SIZE // 2
    mediastinum = img[:, int(SIZE * 0.3) : int(SIZE * 0.55), c - 2 : c + 2].mean((1, 2))
    lung_mean = np.array([im[m].mean() for im, m in zip(img, lung)])
    assert (lung_mean < mediastinum - 30).mean() > 0.95
    # Lower corners (below the diaphragm, inside the body) are brighter than the lungs.
    abdomen = img[:, -8:, c - 16 : c + 16].mean((1, 2))
    assert (abdomen > lung_mean).mean() > 0.95


def test_class_intensity_statistics(big):
    ds, masks = big
    y = ds.class_index()
    b, v, n = (ds.class_names.index(c) for c in ("bacterial", "viral", "normal"))
    mean, peak = _lung_stats(ds, masks, window=5)  # 5 px at 64 px ~ 16 px at 224 px
    # Viral haze makes the lung fields brighter on average than in normal films.
    assert mean[y == v].mean() > mean[y == n].mean() + 4
    # A consolidation is a localized bright region: higher local peak than normal lungs.
    assert peak[y == b].mean() > peak[y == n].mean() + 8
    assert np.median(peak[y == b]) > np.median(peak[y == n])


def test_lesion_masks(big):
    ds, masks = big
    y = ds.class_index()
    les, lung = masks["lesion"], masks["lung"]
    area = les.reshape(len(ds), -1).mean(1)
    assert (area[y == ds.class_names.index("normal")] == 0).all()
    assert (area[y == ds.class_names.index("bacterial")] > 0).mean() > 0.9
    assert (area[y == ds.class_names.index("viral")] > 0).mean() > 0.9
    # Lesions lie in the lungs (some behind the heart, outside the visible fields).
    assert (les & ~lung).sum() < 0.2 * les.sum()
    bac = ds.meta["finding"] == "bacterial"
    assert set(ds.meta.loc[bac, "lesion_side"]) == {"left", "right"}


def test_side_markers_are_not_a_shortcut(big):
    ds, _ = big
    rate = ds.meta.groupby("label")["marker"].mean()
    assert rate.between(0.15, 0.45).all(), rate


def test_difficulty_lowers_lesion_contrast():
    # Same seed = same draws; only lesion contrast and noise change with difficulty.
    kw = dict(n=30, image_size=48, seed=3, class_weights=[1, 0, 0], return_masks=True)
    easy, m = make_synthetic_cxr(difficulty=0.25, **kw)
    hard, _ = make_synthetic_cxr(difficulty=3.0, **kw)

    def contrast(ds):
        img = ds.items.astype(np.float32)
        return np.mean([im[le].mean() - im[lu & ~le].mean() for im, le, lu in zip(img, m["lesion"], m["lung"])])

    assert contrast(easy) > contrast(hard) + 10
    with pytest.raises(CXRConfigError):
        make_synthetic_cxr(n=3, image_size=16, difficulty=-1)


def test_learnable_but_not_linearly_trivial(big):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    ds, _ = big
    # 32x32 pixels, split by patient: the first patients until 400 images train.
    x = ds.items.astype(np.float32).reshape(N, 32, 2, 32, 2).mean((2, 4)).reshape(N, -1) / 255.0
    y = ds.class_index()
    sizes = ds.meta.groupby("patient_id", sort=False).size()
    train_p = set(sizes.index[np.cumsum(sizes.to_numpy()) <= 400])
    tr = ds.meta["patient_id"].isin(train_p).to_numpy()
    mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-3
    clf = LogisticRegression(C=0.01, max_iter=2000).fit((x[tr] - mu) / sd, y[tr])
    acc = balanced_accuracy_score(y[~tr], clf.predict((x[~tr] - mu) / sd))
    print(f"linear probe balanced accuracy: {acc:.3f} (train {tr.sum()}, test {(~tr).sum()})")
    assert 0.5 < acc < 0.98


# --------------------------------------------------------------------------- options / files
def test_other_class_sets_and_sizes():
    ds = make_synthetic_cxr(n=40, image_size=16, seed=0, class_names=("normal", "pneumonia"))
    assert ds.class_names == ["normal", "pneumonia"] and ds.labels.shape == (40, 2)
    pneu = ds.meta["label"] == "pneumonia"
    assert set(ds.meta.loc[pneu, "finding"]) == {"bacterial", "viral"}
    assert (ds.meta.loc[~pneu, "finding"] == "normal").all()
    big = make_synthetic_cxr(n=2, image_size=256, seed=0)  # above the internal anatomy grid
    assert big.items.shape == (2, 256, 256)
    for bad in (dict(class_names=("cat", "normal")), dict(class_weights=[1, 1]),
                dict(images_per_patient=(0, 2)), dict(class_names=("normal", "normal"))):
        with pytest.raises(CXRConfigError):
            make_synthetic_cxr(n=4, image_size=16, **bad)


def test_write_synthetic_folder(tmp_path):
    root = tmp_path / "synth"
    files = write_synthetic_folder(root, n=12, image_size=32, seed=4)
    ref = make_synthetic_cxr(n=12, image_size=32, seed=4)
    assert not files.in_memory and len(files) == 12
    assert np.array_equal(files.labels, ref.labels)
    csv = pd.read_csv(root / "labels.csv")
    assert list(csv.columns) == ["path", "label", "patient"]
    for i, row in csv.iterrows():
        cls, name = row["path"].split("/")
        assert cls == row["label"] and name.startswith(row["patient"] + "_") and name.endswith(".png")
        png = np.asarray(Image.open(root / row["path"]))
        assert png.dtype == np.uint8 and np.array_equal(png, ref.items[i])
        assert files.items[i] == str((root / row["path"]).resolve())
    assert sorted(p.name for p in root.iterdir()) == ["bacterial", "labels.csv", "normal", "viral"]


def test_write_folder_reads_back_with_the_csv_loader(tmp_path):
    sources = pytest.importorskip("cxr_tf.datasets.sources")
    if not hasattr(sources, "load_csv_manifest"):
        pytest.skip("no CSV manifest loader")
    write_synthetic_folder(tmp_path, n=9, image_size=16, seed=0)
    ds = sources.load_csv_manifest(tmp_path / "labels.csv", class_names=["bacterial", "viral", "normal"])
    ref = make_synthetic_cxr(n=9, image_size=16, seed=0)
    assert np.array_equal(ds.labels, ref.labels)
    assert list(ds.patient_ids) == list(ref.patient_ids)


def test_preview_grid(tmp_path):
    ds = make_synthetic_cxr(n=30, image_size=32, seed=0)
    grid = preview_grid(ds, per_class=6, pad=2)
    assert grid.shape == (3 * 34 + 2, 6 * 34 + 2) and grid.dtype == np.uint8
    Image.fromarray(grid).save(tmp_path / "preview.png")
    first_bacterial = ds.items[ds.class_index() == 0][0]
    assert np.array_equal(grid[2:34, 2:34], first_bacterial)


def test_generation_speed():
    # Budget: 600 images at 224 px in < 15 s on one core. 60 images get a generous
    # share (shared CI machines are noisy); the real figure is ~5 s for 600.
    t = time.process_time()
    make_synthetic_cxr(n=60, image_size=224, seed=0)
    assert time.process_time() - t < 4.0
