"""Shortcut checks on predictions: does the model still separate the classes when the
source cannot tell them apart?

A COVID classifier trained on COVID images from adult collections and normals from a
pediatric one can score an excellent AUC on a test split of the same mix by learning the
collection. :func:`within_source_auc` scores it again inside each source that holds both
classes (held-out patients, one hospital/collection, so the source is constant), beside the
mixed figure; :func:`lead_figure` says which one a report must lead with.

Pure numpy / scikit-learn: no TensorFlow import.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from .ci import bootstrap_ci

logger = logging.getLogger("cxr_tf.evaluation")


def report_source_mix(ds, split, run) -> list[str]:
    """Log and save (``<run>/source_mix.csv``) the source mix per class and split; return
    the shortcut warnings (also logged)."""
    from cxr_tf.datasets import format_source_mix, shortcut_warnings, source_mix

    table = source_mix(ds, split)
    table.to_csv(run / "source_mix.csv", index=False)
    logger.info("source mix per class and split:\n" + format_source_mix(table))
    warns = shortcut_warnings(table)
    for w in warns:
        logger.info("WARNING " + w)
    return warns


def within_source_auc(y_true_binary, score, sources, min_per_class: int = 10, n_boot: int = 1000,
                      seed: int = 0) -> pd.DataFrame:
    """AUC (with a bootstrap CI) on all test images, then inside each source with both classes.

    Args:
        y_true_binary: (N,) 1 = positive class.
        score: (N,) positive-class score.
        sources: (N,) source name per image.
        min_per_class: a source needs at least this many positives and negatives.

    Returns:
        Rows ``evaluation, source, n_pos, n_neg, auc, auc_lo, auc_hi``: ``mixed`` (all)
        first, then ``within-source`` rows.
    """
    y = np.asarray(y_true_binary).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    src = np.asarray(sources).astype(str)
    rows = []

    def row(kind, name, mask):
        yy, ss = y[mask], s[mask]
        auc = float(roc_auc_score(yy, ss))
        lo, hi = bootstrap_ci(roc_auc_score, yy.astype(int), ss, n_boot=n_boot, seed=seed)
        rows.append({"evaluation": kind, "source": name, "n_pos": int(yy.sum()), "n_neg": int((~yy).sum()),
                     "auc": auc, "auc_lo": lo, "auc_hi": hi})

    if y.any() and (~y).any():
        row("mixed", "all", np.ones(len(y), bool))
    for name in sorted(set(src)):
        m = src == name
        if (y[m]).sum() >= min_per_class and (~y[m]).sum() >= min_per_class:
            row("within-source", name, m)
    return pd.DataFrame(rows, columns=["evaluation", "source", "n_pos", "n_neg", "auc", "auc_lo", "auc_hi"])


def lead_figure(table: pd.DataFrame) -> dict | None:
    """The row a report must lead with: the within-source figure when it disagrees with the
    mixed one (its CI excludes the mixed AUC), else the mixed figure. ``None`` if empty."""
    if table.empty:
        return None
    mixed = table[table["evaluation"] == "mixed"]
    within = table[table["evaluation"] == "within-source"]
    if mixed.empty:
        return within.iloc[0].to_dict() if len(within) else None
    m = mixed.iloc[0]
    for _, w in within.iterrows():
        if not (w["auc_lo"] <= m["auc"] <= w["auc_hi"]):
            return {**w.to_dict(), "disagrees_with_mixed": True, "mixed_auc": float(m["auc"])}
    return {**m.to_dict(), "disagrees_with_mixed": False}


def markdown(table: pd.DataFrame) -> str:
    """The table as markdown (AUC with its 95% CI)."""
    lines = ["| evaluation | source | positive / negative | AUC [95% CI] |", "|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(f"| {r['evaluation']} | {r['source']} | {r['n_pos']} / {r['n_neg']} | "
                     f"{r['auc']:.3f} [{r['auc_lo']:.3f}, {r['auc_hi']:.3f}] |")
    return "\n".join(lines)
