"""Markdown reports, metrics JSON and the one-call ``evaluate_predictions``."""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import numpy as np

from cxr_tf.errors import CXRInputError

from ._utils import as_class_indices, as_prob_matrix, check_class_names, md_table, to_jsonable
from .metrics import classification_metrics
from .plots import plot_confusion_matrix, plot_pr, plot_probability_histograms, plot_roc
from .thresholds import threshold_sweep

PLOT_FILES = ("roc.png", "pr.png", "confusion_matrix.png", "probability_histograms.png")


def write_metrics_json(path, metrics: Mapping) -> str:
    """Write metrics as strict JSON (numpy types converted, NaN/inf -> null).

    Args:
        path: output file path (parent folders are created).
        metrics: dict from ``classification_metrics`` / ``multilabel_metrics`` or any dict.

    Returns:
        ``path`` as a string.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        # allow_nan=False: fail loudly rather than emit the non-standard NaN token.
        json.dump(to_jsonable(metrics), f, indent=2, allow_nan=False)
        f.write("\n")
    return path


# --------------------------------------------------------------------------- formatting


def _num(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    return f"{float(v):.{digits}f}"


def fmt_ci(stat: Mapping | None, ci_key: str, digits: int = 3) -> str:
    """Format ``{"value": v, ci_key: [lo, hi]}`` as ``0.912 [0.871, 0.943]``."""
    if not stat or stat.get("value") is None:
        return "n/a"
    ci = stat.get(ci_key)
    text = _num(stat["value"], digits)
    if ci:
        text += f" [{_num(ci[0], digits)}, {_num(ci[1], digits)}]"
    return text


def _flatten(d: Mapping, prefix: str = "") -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out += _flatten(v, key + ".")
        else:
            out.append((key, v))
    return out


def _config_value(v) -> str:
    v = to_jsonable(v)
    text = v if isinstance(v, str) else json.dumps(v)
    return text if len(text) <= 120 else text[:117] + "..."


def _level(metrics: Mapping) -> str:
    alpha = metrics.get("alpha", 0.05) or 0.05
    return f"{100 * (1 - alpha):g}%"


def _classification_sections(m: Mapping) -> list[str]:
    lvl = _level(m)
    names = list(m["per_class"])
    summary = [
        f"- Examples: {m['n']} ({m.get('n_classes', len(names))} classes); decision rule: `{m.get('decision_rule', 'argmax')}`",
        f"- Overall accuracy: {fmt_ci(m['accuracy'], 'wilson_ci')} (Wilson {lvl} CI)",
        f"- Macro AUC (one-vs-rest): {fmt_ci(m['macro_auc'], 'bootstrap_ci')} "
        f"(percentile bootstrap {lvl} CI, n_boot={m.get('n_boot')}; over {m['macro_auc'].get('n_classes')} classes)",
        f"- Averaged accuracy (mean one-vs-rest accuracy): {_num(m.get('averaged_accuracy'))}",
        f"- Balanced accuracy (mean sensitivity): {_num(m.get('balanced_accuracy'))}",
        f"- Macro F1: {_num(m.get('macro_f1'))}",
    ]
    rows = []
    for name, pc in m["per_class"].items():
        rows.append([name, pc["support"], fmt_ci(pc["accuracy"], "wilson_ci"),
                     fmt_ci(pc["sensitivity"], "wilson_ci"), fmt_ci(pc["specificity"], "wilson_ci"),
                     fmt_ci(pc["precision"], "wilson_ci"), _num(pc["f1"]), fmt_ci(pc["auc"], "bootstrap_ci")])
    per_class = md_table(
        ["Class", "Support", "Accuracy", "Sensitivity", "Specificity", "Precision", "F1", "AUC"], rows)
    normal_rows = [[name] + [fmt_ci(pc[k], "normal_ci") for k in ("accuracy", "sensitivity", "specificity", "precision")]
                   for name, pc in m["per_class"].items()]
    normal = md_table(["Class", "Accuracy", "Sensitivity", "Specificity", "Precision"], normal_rows)
    cm_rows = [[names[i]] + list(r) for i, r in enumerate(m["confusion_matrix"])]
    cm = md_table(["true \\ predicted"] + names, cm_rows)
    return [
        "## Summary\n\n" + "\n".join(summary),
        "## Per-class metrics (one-vs-rest)\n\n" + per_class + "\n\n"
        f"Proportions: value [Wilson {lvl} CI]; AUC: value [percentile bootstrap {lvl} CI].",
        f"### Normal-approximation {lvl} CIs (p ± z·sqrt(p(1-p)/n))\n\n" + normal,
        "## Confusion matrix\n\nRows = true class, columns = predicted class.\n\n" + cm,
    ]


def _multilabel_sections(m: Mapping) -> list[str]:
    lvl = _level(m)
    rows = [[name, pl["n"], pl["n_positive"], pl["n_masked"], fmt_ci(pl["auc"], "bootstrap_ci")]
            for name, pl in m["per_label"].items()]
    return [
        f"## Summary\n\n- Examples: {m['n']}\n- Mean AUC over {m['mean_auc']['n_labels']} labels: "
        f"{_num(m['mean_auc']['value'])}",
        f"## Per-label AUC\n\nAUC [percentile bootstrap {lvl} CI when computed]; "
        "rows with missing (NaN) labels are masked.\n\n"
        + md_table(["Label", "N", "Positives", "Masked", "AUC"], rows),
    ]


def report_link(path: str | os.PathLike, run_dir: str | os.PathLike) -> str:
    """``path`` as a link relative to ``run_dir`` (where report.md lives).

    A relative ``path`` that exists under ``run_dir`` is taken as already relative to it;
    otherwise it is relative to the working directory (``runs/x/plots/roc.png``).
    """
    p, run_dir = os.fspath(path), os.fspath(run_dir)
    if not os.path.isabs(p) and os.path.exists(os.path.join(run_dir, p)):
        rel = p
    else:
        rel = os.path.relpath(os.path.abspath(p), os.path.abspath(run_dir))
    return rel.replace(os.sep, "/")


def write_report(
    run_dir,
    metrics: Mapping,
    *,
    title: str,
    config: Mapping | None = None,
    extra_sections: Mapping[str, str] | None = None,
    plots: Sequence[str | os.PathLike] = (),
) -> str:
    """Write ``run_dir/report.md``.

    Args:
        run_dir: folder to write into (created if needed).
        metrics: dict from ``classification_metrics`` (or ``multilabel_metrics``).
        title: report heading.
        config: run configuration, shown flattened as a key/value table.
        extra_sections: {heading: markdown body} appended after the metrics.
        plots: image paths (inside ``run_dir``, or relative to the working directory),
            embedded with links relative to ``run_dir`` so they resolve from the report
            itself in any Markdown viewer, wherever the run folder is moved.

    Returns:
        Path of the written report.md.
    """
    run_dir = os.fspath(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    parts = [f"# {title}"]
    if config:
        rows = [[f"`{k}`", _config_value(v)] for k, v in _flatten(config)]
        parts.append("## Configuration\n\n" + md_table(["Key", "Value"], rows))
    if "per_class" in metrics:
        parts += _classification_sections(metrics)
    elif "per_label" in metrics:
        parts += _multilabel_sections(metrics)
    else:
        raise CXRInputError(None, "metrics must come from classification_metrics or multilabel_metrics")
    for heading, body in (extra_sections or {}).items():
        parts.append(f"## {heading}\n\n{body.strip()}")
    dup = os.path.join(run_dir, "duplicates.json")  # written by the run's duplicate audit
    if os.path.isfile(dup) and not any("duplicate" in h.lower() for h in (extra_sections or {})):
        from .duplicates import duplicates_section

        with open(dup, encoding="utf-8") as f:
            parts.append("## Near-duplicate audit\n\n" + duplicates_section(json.load(f)))
    if plots:
        lines = ["## Plots"]
        for p in plots:
            rel = report_link(p, run_dir)
            stem = os.path.splitext(os.path.basename(rel))[0].replace("_", " ")
            lines.append(f"### {stem}\n\n[{rel}]({rel})\n\n![{stem}]({rel})")
        parts.append("\n\n".join(lines))
    path = os.path.join(run_dir, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n\n".join(parts) + "\n")
    return path


def _sweep_markdown(df) -> str:
    rows = []
    for r in df.itertuples(index=False):
        target = "" if np.isnan(r.target_sensitivity) else f"sens ≥ {r.target_sensitivity:g}"
        sens = f"{_num(r.sensitivity)} [{_num(r.sensitivity_wilson_lo)}, {_num(r.sensitivity_wilson_hi)}]"
        spec = f"{_num(r.specificity)} [{_num(r.specificity_wilson_lo)}, {_num(r.specificity_wilson_hi)}]"
        rows.append([f"{r.threshold:.4g}", target, sens, spec, _num(r.precision), r.TP, r.FP, r.TN, r.FN])
    return md_table(["Threshold", "Chosen for", "Sensitivity [Wilson CI]", "Specificity [Wilson CI]",
                     "Precision", "TP", "FP", "TN", "FN"], rows)


def evaluate_predictions(
    y_true,
    y_prob,
    class_names,
    out_dir,
    *,
    title: str,
    config: Mapping | None = None,
    threshold: float | None = None,
    class_thresholds=None,
    n_boot: int = 1000,
    seed: int = 0,
    meta=None,
) -> dict:
    """Full evaluation of exported predictions: metrics, plots, JSON and report.

    Writes into ``out_dir``: ``metrics.json``, ``report.md``, ``plots/{roc,pr,
    confusion_matrix,probability_histograms}.png`` and, for binary tasks,
    ``threshold_sweep.csv`` (also summarised in the report).

    Args:
        y_true: (N,) labels or (N, C) one-hot.
        y_prob: (N, C) probabilities (binary: (N,) P(class 1) also accepted).
        class_names: C names.
        out_dir: output folder (created if needed).
        title: report heading.
        config: run configuration to include in the report.
        threshold: binary only; decision threshold on P(class 1) (chosen on validation data).
        class_thresholds: one threshold per class (an export's operating points); decisions
            then follow the served graph's rule (:func:`cxr_tf.evaluation.calibration.decide`).
        n_boot: bootstrap resamples for AUC CIs.
        seed: bootstrap seed.
        meta: row-aligned metadata (``ds.meta``); where it has ``sex``, ``age`` or
            ``view``, a subgroup table (``subgroups.csv/.md``, a report section and
            ``metrics["subgroups"]``) is added (:mod:`cxr_tf.evaluation.subgroups`).

    Returns:
        The metrics dict (as from ``classification_metrics``).
    """
    names = check_class_names(class_names)
    prob = as_prob_matrix(y_prob, len(names))
    y = as_class_indices(y_true, len(names), names)
    metrics = classification_metrics(y, prob, names, threshold=threshold, class_thresholds=class_thresholds,
                                     n_boot=n_boot, seed=seed)
    out_dir = os.fspath(out_dir)
    plot_dir = os.path.join(out_dir, "plots")
    os.makedirs(plot_dir, exist_ok=True)
    roc, pr, cmp, hist = (os.path.join(plot_dir, f) for f in PLOT_FILES)
    plot_roc(y, prob, names, roc, title=f"ROC - {title}")
    plot_pr(y, prob, names, pr, title=f"Precision-recall - {title}")
    plot_confusion_matrix(metrics["confusion_matrix"], names, cmp, title=f"Confusion matrix - {title}")
    plot_probability_histograms(y, prob, names, hist, title=f"Predicted probabilities - {title}",
                                threshold=threshold)
    extra: dict[str, str] = {}
    if len(names) == 2:
        sweep = threshold_sweep(y == 1, prob[:, 1])
        sweep.to_csv(os.path.join(out_dir, "threshold_sweep.csv"), index=False)
        extra[f"Threshold sweep (positive class: {names[1]})"] = (
            f"Predict {names[1]} when P({names[1]}) ≥ threshold. Pick the operating point on "
            "validation data; full table with normal-approximation CIs in `threshold_sweep.csv`.\n\n"
            + _sweep_markdown(sweep)
        )
    if meta is not None:
        from .subgroups import subgroup_attributes, subgroup_metrics, write_subgroups

        attrs = subgroup_attributes(meta)
        if attrs:
            sub = subgroup_metrics(y, prob, meta, names, attributes=attrs, threshold=threshold,
                                   class_thresholds=class_thresholds, n_boot=n_boot, seed=seed)
            write_subgroups(sub, out_dir)
            metrics["subgroups"] = {"attributes": attrs, "flagged": sub.flagged, "table": "subgroups.csv"}
            extra["Subgroups"] = sub.markdown
    write_metrics_json(os.path.join(out_dir, "metrics.json"), metrics)
    write_report(out_dir, metrics, title=title, config=config, extra_sections=extra,
                 plots=[roc, pr, cmp, hist])
    return metrics
