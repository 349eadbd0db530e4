"""Read a perceptual test set in the BAPPS layout (Zhang et al. 2018, LPIPS).

Layout (written by ``python -m cxr_tf.experiments.perceptual_testset``)::

    DIR/manifest.csv                              one row per item
    DIR/2afc/<subset>/{ref,p0,p1}/<id>.png        2AFC triplets
    DIR/jnd/<subset>/{p0,p1}/<id>.png             JND pairs
    DIR/2afc/<subset>/judge/<id>.npy              written by ``cxr-tf judge export``
    DIR/jnd/<subset>/same/<id>.npy                written by ``cxr-tf judge export``

The manifest is the list of items; every image it implies must exist as a regular file
inside DIR. Subset names and ids are checked against a strict pattern, so no path built
from them can leave the test set (the web app never builds a path from request data).
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cxr_tf.errors import CXRDatasetError

KINDS = ("2afc", "jnd")
#: image roles per kind, in display order
ROLES = {"2afc": ("ref", "p0", "p1"), "jnd": ("p0", "p1")}
#: folder and meaning of the exported judgment per kind (BAPPS names)
JUDGMENT_FOLDER = {"2afc": "judge", "jnd": "same"}
MANIFEST = "manifest.csv"
REQUIRED_COLUMNS = ("kind", "subset", "id")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


@dataclass(frozen=True)
class TestSetItem:
    """One 2AFC triplet or JND pair, identified by ``(kind, subset, id)``."""

    __test__ = False  # not a pytest class despite the name

    kind: str
    subset: str
    id: str

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.subset}/{self.id}"


class TestSet:
    """The items of a test set folder and the paths of their images.

    Args:
        root: the test set folder (contains ``manifest.csv``).
    """

    __test__ = False

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        manifest = self.root / MANIFEST
        if not self.root.is_dir():
            raise CXRDatasetError(root, "test set folder does not exist")
        if not manifest.is_file():
            raise CXRDatasetError(manifest, "missing: a test set needs a manifest.csv (kind, subset, id, ...)")
        self.items: list[TestSetItem] = self._read_manifest(manifest)
        for item in self.items:
            for role in ROLES[item.kind]:
                self._check_file(self.image_path(item, role))

    def _read_manifest(self, manifest: Path) -> list[TestSetItem]:
        with open(manifest, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise CXRDatasetError(manifest, f"missing column(s) {missing}; found {reader.fieldnames}")
            items, seen = [], set()
            for line, row in enumerate(reader, start=2):
                kind, subset, id_ = (row["kind"] or "").strip(), (row["subset"] or "").strip(), (row["id"] or "").strip()
                if kind not in KINDS:
                    raise CXRDatasetError(manifest, f"line {line}: kind {kind!r} is not one of {KINDS}")
                for what, value in (("subset", subset), ("id", id_)):
                    if not _SAFE_NAME.match(value):
                        raise CXRDatasetError(
                            manifest, f"line {line}: {what} {value!r} must be 1-100 of [A-Za-z0-9_.-], not starting with '.', '_' or '-'")
                item = TestSetItem(kind, subset, id_)
                if item.key in seen:
                    raise CXRDatasetError(manifest, f"line {line}: item {item.key} listed twice")
                seen.add(item.key)
                items.append(item)
        if not items:
            raise CXRDatasetError(manifest, "lists no items")
        return sorted(items, key=lambda it: (KINDS.index(it.kind), it.subset, it.id))

    def _check_file(self, path: Path) -> None:
        if not path.is_file():
            raise CXRDatasetError(path, "image listed in the manifest is missing")
        real = path.resolve()
        if os.path.commonpath([real, self.root]) != str(self.root):
            raise CXRDatasetError(path, f"resolves to {real}, outside the test set {self.root}; copy the file in")

    def image_path(self, item: TestSetItem, role: str) -> Path:
        """Path of ``item``'s image ``role`` (``ref``, ``p0`` or ``p1``)."""
        if role not in ROLES[item.kind]:
            raise KeyError(f"{item.kind} items have no {role!r} image")
        return self.root / item.kind / item.subset / role / f"{item.id}.png"

    def judgment_path(self, item: TestSetItem) -> Path:
        """Where the BAPPS judgment file of ``item`` goes (``judge/`` or ``same/``)."""
        return self.root / item.kind / item.subset / JUDGMENT_FOLDER[item.kind] / f"{item.id}.npy"

    def __len__(self) -> int:
        return len(self.items)
