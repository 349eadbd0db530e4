"""Subgroup metrics (sex, age band, view) with CIs, flagged where a subgroup differs.

A model that is good on average can fail a subgroup (Seyyed-Kalantari et al. 2021,
"CheXclusion": under-diagnosis of female, young and minority patients in CXR
classifiers). The table gives every subgroup's AUC (bootstrap CI) and accuracy
(Wilson CI), plus sensitivity and specificity for binary tasks, and flags a subgroup
whose CI excludes the overall value: its difference from the whole test set is beyond
what its sample size explains.

Metadata columns come from the dataset contract (``ds.meta``): NIH (``sex``, ``age``,
``view``), covid_ieee8023 (``sex``, ``age``, ``view``), CSV manifests (any column).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np
import pandas as pd

from cxr_tf.errors import CXRInputError

from ._utils import as_class_indices, as_prob_matrix, check_class_names, md_table
from .ci import _rank_auc, bootstrap_ci
from .metrics import classification_metrics

#: Age-band edges in years: [0, 18), [18, 40), [40, 60), [60, 80), [80, inf).
AGE_BANDS = (0, 18, 40, 60, 80)
DEFAULT_ATTRIBUTES = ("sex", "age_band", "view")
MISSING = "unknown"


def age_band(age, edges: Sequence[float] = AGE_BANDS) -> np.ndarray:
    """Age (years; numbers or strings such as ``"058Y"``, NIH's older spelling) -> band
    label (``"18-39"``, ``"80+"``); :data:`MISSING` where the age is absent or unreadable."""
    def years(v):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return np.nan
        m = re.search(r"\d+(\.\d+)?", str(v))
        return float(m.group()) if m else np.nan

    a = np.array([years(v) for v in np.asarray(age, dtype=object)], dtype=float)
    labels = [f"<{edges[1]}" if k == 0 else f"{edges[k]}-{edges[k + 1] - 1}" for k in range(len(edges) - 1)]
    labels.append(f"{edges[-1]}+")
    idx = np.searchsorted(np.asarray(edges, float), a, side="right") - 1
    out = np.full(len(a), MISSING, dtype=object)
    ok = np.isfinite(a) & (idx >= 0)
    out[ok] = np.array(labels, dtype=object)[idx[ok]]
    return out


def _group_values(meta: pd.DataFrame, attribute: str) -> np.ndarray | None:
    if attribute == "age_band":
        if "age_band" in meta.columns:
            col = meta["age_band"]
        elif "age" in meta.columns:
            return age_band(meta["age"])
        else:
            return None
    elif attribute not in meta.columns:
        return None
    else:
        col = meta[attribute]
    v = col.astype(object).where(col.notna(), MISSING).astype(str).str.strip()
    return v.replace({"": MISSING, "nan": MISSING}).to_numpy(dtype=object)


def subgroup_attributes(meta: pd.DataFrame, attributes: Sequence[str] = DEFAULT_ATTRIBUTES) -> list[str]:
    """The attributes ``meta`` can be split by (``age_band`` from an ``age`` column), with
    at least one known value: a column that is all missing gives no subgroups."""
    out = []
    for a in attributes:
        v = _group_values(meta, a)
        if v is not None and (v != MISSING).any():
            out.append(a)
    return out


@dataclasses.dataclass
class SubgroupTable:
    """The subgroup table: ``frame`` (one row per subgroup, the overall row first) and
    its ``markdown``; ``flagged`` lists ``attribute=group`` names that differ."""

    frame: pd.DataFrame
    markdown: str
    flagged: list[str]


def _ml_mean_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Mean over labels of the AUC on the rows where the label is known (NaN masked)."""
    aucs = []
    for j in range(y.shape[1]):
        m = ~np.isnan(y[:, j])
        if m.sum() > 1:
            a = float(_rank_auc(y[m, j] == 1, p[m, j]))
            if np.isfinite(a):
                aucs.append(a)
    return float(np.mean(aucs)) if aucs else float("nan")


def _stats(y, prob, names, multilabel, threshold, n_boot, seed, alpha, min_class: int = 0,
           class_thresholds=None) -> dict:
    """Point values and CIs of one group: auc, accuracy (+ sensitivity, specificity).

    The AUC is left out (None) when a class has fewer than ``min_class`` examples in the
    group: a bootstrap over one positive only resamples the negatives, and its interval
    would look narrow while saying nothing."""
    if multilabel:
        auc = _ml_mean_auc(y, prob)
        lo, hi = bootstrap_ci(_ml_mean_auc, y, prob, n_boot=n_boot, seed=seed, alpha=alpha, stratified=False) \
            if n_boot and np.isfinite(auc) else (np.nan, np.nan)
        return {"n": len(y), "auc": auc if np.isfinite(auc) else None,
                "auc_ci": [lo, hi] if np.isfinite(lo) else None}
    m = classification_metrics(y, prob, names, threshold=threshold, class_thresholds=class_thresholds, n_boot=n_boot,
                               seed=seed, alpha=alpha)
    out = {"n": m["n"], "auc": m["macro_auc"]["value"], "auc_ci": m["macro_auc"]["bootstrap_ci"],
           "accuracy": m["accuracy"]["value"], "accuracy_ci": m["accuracy"]["wilson_ci"]}
    if min(pc["support"] for pc in m["per_class"].values()) < min_class:
        out["auc"], out["auc_ci"] = None, None
    if len(names) == 2:  # sensitivity / specificity of the positive (second) class
        pos = m["per_class"][names[1]]
        out["n_positive"] = pos["support"]
        for k in ("sensitivity", "specificity"):
            out[k], out[f"{k}_ci"] = pos[k]["value"], pos[k]["wilson_ci"]
    return out


def subgroup_metrics(
    y_true,
    y_prob,
    meta: pd.DataFrame,
    class_names: Sequence[str],
    *,
    attributes: Sequence[str] = DEFAULT_ATTRIBUTES,
    multilabel: bool = False,
    threshold: float | None = None,
    class_thresholds=None,
    min_size: int = 10,
    min_class: int = 5,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> SubgroupTable:
    """Metrics per subgroup of each metadata attribute present, with CIs and flags.

    Args:
        y_true: single-label (class indices / one-hot) or, with ``multilabel``, an
            ``(N, L)`` 0/1/NaN matrix.
        y_prob: ``(N, C)`` probabilities (binary also ``(N,)``).
        meta: row-aligned metadata (``ds.meta``); ``age`` gives ``age_band``.
        class_names: class (or label) names.
        attributes: metadata columns to split by; absent ones are skipped.
        multilabel: mean per-label AUC (NaN labels masked) instead of class metrics.
        threshold: binary decision threshold (default argmax), as in
            :func:`~cxr_tf.evaluation.classification_metrics`.
        class_thresholds: per-class operating thresholds (the served decision rule),
            as in :func:`~cxr_tf.evaluation.classification_metrics`.
        min_size: groups smaller than this are listed with ``n`` only (no metrics,
            never flagged): their CIs would span everything.
        min_class: a group with fewer examples of some class gets no AUC (single-label);
            its proportions keep their Wilson CIs, which stay honest at small counts.
        n_boot, seed, alpha: bootstrap resamples, seed and 1 - confidence level.

    Returns:
        A :class:`SubgroupTable`. Columns: ``attribute, group, n`` (``n_positive``),
        then for each metric ``<m>, <m>_lo, <m>_hi, <m>_flag``, and ``flagged``.
        A flag means the subgroup's CI excludes the overall point value.
    """
    names = check_class_names(class_names) if not multilabel else [str(c) for c in class_names]
    if multilabel:
        y = np.asarray(y_true, np.float64)
        prob = np.asarray(y_prob, np.float64)
        if y.shape != prob.shape or y.ndim != 2:
            raise CXRInputError(None, f"multi-label y_true {y.shape} and y_prob {prob.shape} must match (N, L)")
    else:
        prob = as_prob_matrix(y_prob, len(names))
        y = as_class_indices(y_true, len(names), names)
    if len(meta) != len(y):
        raise CXRInputError(None, f"metadata has {len(meta)} rows for {len(y)} predictions")
    meta = meta.reset_index(drop=True)
    overall = _stats(y, prob, names, multilabel, threshold, n_boot, seed, alpha, class_thresholds=class_thresholds)
    metrics = [k for k in ("auc", "accuracy", "sensitivity", "specificity") if k in overall]
    rows = [{"attribute": "all", "group": "all", **overall}]
    for attr in attributes:
        vals = _group_values(meta, attr)
        if vals is None:
            continue
        for g in sorted(set(vals), key=lambda v: (v == MISSING, v)):
            idx = np.flatnonzero(vals == g)
            if len(idx) < min_size:
                rows.append({"attribute": attr, "group": g, "n": len(idx)})
                continue
            try:
                st = _stats(y[idx], prob[idx], names, multilabel, threshold, n_boot, seed, alpha, min_class,
                            class_thresholds)
            except CXRInputError:  # e.g. a group of one class only: no AUC, but keep the row
                st = {"n": len(idx)}
            rows.append({"attribute": attr, "group": g, **st})
    table = []
    flagged = []
    for r in rows:
        row = {"attribute": r["attribute"], "group": r["group"], "n": r["n"]}
        if "n_positive" in overall:
            row["n_positive"] = r.get("n_positive")
        any_flag = False
        for m in metrics:
            v, ci = r.get(m), r.get(f"{m}_ci")
            row[m] = v
            row[f"{m}_lo"], row[f"{m}_hi"] = (ci if ci else (None, None))
            ref = overall.get(m)
            flag = bool(r["attribute"] != "all" and ci and ref is not None and not (ci[0] <= ref <= ci[1]))
            row[f"{m}_flag"] = flag
            any_flag |= flag
        row["flagged"] = any_flag
        if any_flag:
            flagged.append(f"{r['attribute']}={r['group']}")
        table.append(row)
    frame = pd.DataFrame(table)
    return SubgroupTable(frame, _markdown(frame, metrics, alpha), flagged)


def _markdown(frame: pd.DataFrame, metrics: list[str], alpha: float) -> str:
    def cell(r, m):
        v = r.get(m)
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return "n/a"
        text = f"{v:.3f}"
        if r.get(f"{m}_lo") is not None and not pd.isna(r.get(f"{m}_lo")):
            text += f" [{r[f'{m}_lo']:.3f}, {r[f'{m}_hi']:.3f}]"
        return text + (" **\u2691**" if r.get(f"{m}_flag") else "")

    header = ["attribute", "group", "n"] + (["positives"] if "n_positive" in frame.columns else []) + metrics
    rows = []
    for _, r in frame.iterrows():
        row = [r["attribute"], r["group"], int(r["n"])]
        if "n_positive" in frame.columns:
            row.append("" if pd.isna(r["n_positive"]) else int(r["n_positive"]))
        rows.append(row + [cell(r, m) for m in metrics])
    ci = f"{100 * (1 - alpha):.0f}%"
    note = (f"\n\n{ci} CIs (AUC: percentile bootstrap; proportions: Wilson). \u2691 = the subgroup's CI "
            "excludes the overall value.")
    return md_table(header, rows) + note


def write_subgroups(table: SubgroupTable, out_dir) -> None:
    """``subgroups.csv`` and ``subgroups.md`` into ``out_dir`` (a run or eval folder)."""
    from pathlib import Path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table.frame.to_csv(out / "subgroups.csv", index=False)
    (out / "subgroups.md").write_text(table.markdown + "\n")

