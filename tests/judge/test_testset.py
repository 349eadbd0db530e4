"""Reading a BAPPS-layout test set: items from the manifest, strict names, files inside."""
from __future__ import annotations

import csv
import os

import pytest
from _judge_helpers import make_testset

from cxr_tf.errors import CXRDatasetError
from cxr_tf.judge.testset import TestSet


def _rewrite_manifest(root, edit):
    path = root / "manifest.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    rows = edit(rows)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)


def test_items_and_paths(testset):
    ts = TestSet(testset)
    assert [it.key for it in ts.items] == [
        "2afc/traditional/000000", "2afc/traditional/000001", "2afc/traditional/000002",
        "jnd/traditional/000000", "jnd/traditional/000001"]
    it = ts.items[0]
    assert ts.image_path(it, "p1") == testset.resolve() / "2afc/traditional/p1/000000.png"
    assert ts.judgment_path(it) == testset.resolve() / "2afc/traditional/judge/000000.npy"
    assert ts.judgment_path(ts.items[-1]) == testset.resolve() / "jnd/traditional/same/000001.npy"
    with pytest.raises(KeyError):
        ts.image_path(ts.items[-1], "ref")  # JND pairs have no reference


@pytest.mark.parametrize("field,value,cause", [
    ("id", "../../etc/passwd", "must be 1-100"),
    ("subset", "..", "must be 1-100"),
    ("id", "a/b", "must be 1-100"),
    ("kind", "3afc", "is not one of"),
])
def test_unsafe_or_bad_manifest_values_are_refused(testset, field, value, cause):
    def edit(rows):
        rows[0][field] = value
        return rows

    _rewrite_manifest(testset, edit)
    with pytest.raises(CXRDatasetError, match=cause) as e:
        TestSet(testset)
    assert "manifest.csv" in str(e.value) and "line 2" in str(e.value)


def test_duplicate_item_refused(testset):
    _rewrite_manifest(testset, lambda rows: rows + [rows[0]])
    with pytest.raises(CXRDatasetError, match="listed twice"):
        TestSet(testset)


def test_missing_manifest_or_image_names_the_file(testset, tmp_path):
    os.remove(testset / "jnd/traditional/p1/000001.png")
    with pytest.raises(CXRDatasetError, match=r"p1/000001\.png: image listed in the manifest is missing"):
        TestSet(testset)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CXRDatasetError, match="manifest.csv: missing"):
        TestSet(empty)


def test_symlink_leaving_the_test_set_refused(tmp_path):
    root = make_testset(tmp_path / "ts", n_2afc=1, n_jnd=0)
    outside = tmp_path / "secret.png"
    (root / "2afc/traditional/p0/000000.png").rename(outside)
    os.symlink(outside, root / "2afc/traditional/p0/000000.png")
    with pytest.raises(CXRDatasetError, match="outside the test set"):
        TestSet(root)
