"""Write the collected judgments in the BAPPS layout the LPIPS loaders read.

* ``DIR/2afc/<subset>/judge/<id>.npy``: float32 array of shape (1,), the fraction of raters
  who chose p1 as closer to the reference.
* ``DIR/jnd/<subset>/same/<id>.npy``: float32 array of shape (1,), the fraction of raters
  who answered "same".
* ``judgments.csv`` (default ``DIR/judgments.csv``): every raw judgment with the rater's
  name, never a token.

Only items with at least one judgment get a ``.npy``. The original LPIPS loaders pair the
sorted file lists of ``ref/ p0/ p1/ judge/`` by index, so they need every item judged; the
export reports how many items are still unjudged (``require_complete`` makes that an error).
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np

from cxr_tf.errors import CXRDatasetError
from cxr_tf.io.atomic import atomic_write

from .db import JudgmentStore
from .testset import TestSet

CSV_COLUMNS = ("judgment_id", "rater", "kind", "subset", "id", "answer", "shown_swapped", "response_ms",
               "revisions", "created_at", "updated_at")
POSITIVE = {"2afc": "p1", "jnd": "same"}


@dataclass(frozen=True)
class ExportSummary:
    written: int
    unjudged: int
    judgments: int
    csv_path: str


def aggregate(rows: list[dict]) -> dict[str, tuple[int, int]]:
    """item key -> (number of raters, number answering p1 / same)."""
    out: dict[str, list[int]] = {}
    for r in rows:
        c = out.setdefault(f"{r['kind']}/{r['subset']}/{r['id']}", [0, 0])
        c[0] += 1
        c[1] += int(r["answer"] == POSITIVE[r["kind"]])
    return {k: (n, pos) for k, (n, pos) in out.items()}


def export_judgments(testset: TestSet | str, store: JudgmentStore, csv_path: str | None = None,
                     require_complete: bool = False) -> ExportSummary:
    """Write the judge/same ``.npy`` files and the raw CSV; returns what was written."""
    ts = testset if isinstance(testset, TestSet) else TestSet(testset)
    rows = [r for r in store.all_judgments()]
    counts = aggregate(rows)
    unjudged = [it.key for it in ts.items if it.key not in counts]
    if require_complete and unjudged:
        raise CXRDatasetError(ts.root, f"{len(unjudged)} item(s) have no judgment yet, e.g. {unjudged[:3]}")
    written = 0
    for it in ts.items:
        if it.key not in counts:
            continue
        n, pos = counts[it.key]
        value = np.array([pos / n], dtype=np.float32)
        atomic_write(str(ts.judgment_path(it)), lambda f, v=value: np.save(f, v))
        written += 1
    csv_path = str(csv_path or ts.root / "judgments.csv")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
    w.writeheader()
    for r in rows:
        w.writerow({k: (r[k].isoformat() if hasattr(r[k], "isoformat") else r[k]) for k in CSV_COLUMNS})
    atomic_write(csv_path, lambda f: f.write(buf.getvalue()), mode="w", newline="", encoding="utf-8")
    return ExportSummary(written, len(unjudged), len(rows), csv_path)
