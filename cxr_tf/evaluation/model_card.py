"""Model cards generated from a run's own files (never hand-written numbers).

One writer for every place a model leaves the project: the run folder, the
SavedModel export, the portable exports (ONNX / TFLite, with their checks) and presets
(from their metadata). The card is rendered from a plain dict (:func:`card_from_run`
builds it from ``metrics.json``,
``config.json``, ``split_summary.csv`` and the optional calibration / operating-point /
subgroup / shortcut-audit sections a run wrote), so its numbers are the metrics
file's numbers by construction, and a test checks that.

Sections follow Mitchell et al. 2019 ("Model Cards for Model Reporting") and name the
CLAIM (Mongan et al. 2020) and TRIPOD-AI (Collins et al. 2024) items they cover.

Pure Python / numpy: no TensorFlow import.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from .report import fmt_ci

CARD_FILE = "MODEL_CARD.md"

NOT_CLINICAL = ("Research and education only. Not a medical device: not validated for clinical use, "
                "diagnosis or triage, and not cleared by any regulator.")

# Which checklist items each section answers (only sections that are present are claimed).
CHECKLIST = {
    "intended_use": ["CLAIM 2-3 (intended use, clinical role)", "TRIPOD-AI 3a-3c (background, objectives)"],
    "data": ["CLAIM 7-13 (data sources, inclusion, preprocessing, de-identification)",
             "TRIPOD-AI 5-6, 8 (sources, participants, outcome)"],
    "split": ["CLAIM 21 (partitions, patient-level)", "TRIPOD-AI 9, 12c (sample size, data partitioning)"],
    "model": ["CLAIM 22-24 (model, initialisation)", "TRIPOD-AI 12e (model type, building)"],
    "metrics": ["CLAIM 28-30, 37 (performance metrics with CIs)", "TRIPOD-AI 12g, 23a (performance measures, CIs)"],
    "calibration": ["TRIPOD-AI 12g, 23a (calibration)"],
    "operating_points": ["CLAIM 30 (operating threshold)", "TRIPOD-AI 12f (thresholds)"],
    "subgroups": ["CLAIM 38 (subgroup performance)", "TRIPOD-AI 14, 23b (fairness, subgroups)"],
    "shortcuts": ["CLAIM 39-40 (failure analysis, robustness)", "TRIPOD-AI 12d, 26 (data leakage, bias)"],
    "limitations": ["CLAIM 41 (limitations)", "TRIPOD-AI 27 (limitations)"],
}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def card_from_run(run_dir: str | os.PathLike, *, extra: Mapping | None = None) -> dict:
    """The card's content from a run folder's files (``metrics.json`` is required).

    Optional files: ``config.json``, ``split_summary.csv``, ``calibration.json``,
    ``operating_points.json``, ``subgroups.csv``, ``shortcut_audit.json``,
    ``export.json``. ``extra`` adds or overrides keys (e.g. ``data_sources``).
    """
    run = Path(str(run_dir))  # a RunDir, a str or a Path
    metrics = _read_json(run / "metrics.json")
    if metrics is None:
        from cxr_tf.errors import CXRInputError

        raise CXRInputError(run / "metrics.json", "a model card needs the run's metrics.json")
    card: dict = {"name": run.parent.name, "run": run.name, "metrics": metrics.get("test", metrics)}
    cfg = _read_json(run / "config.json") or {}
    card["config"] = cfg
    for key in ("calibration", "operating_points", "shortcut_audit", "export"):
        v = _read_json(run / f"{key}.json")
        if v is not None:
            card[key] = v
    if (run / "split_summary.csv").exists():
        card["split_summary_csv"] = (run / "split_summary.csv").read_text()
    if (run / "subgroups.md").exists():  # the formatted table evaluate_predictions wrote (CIs, flags)
        card["subgroups_md"] = (run / "subgroups.md").read_text().strip()
    elif (run / "subgroups.csv").exists():
        import pandas as pd

        card["subgroups"] = pd.read_csv(run / "subgroups.csv").to_dict("records")
    card.update(extra or {})
    return card


def _f3(v) -> str:
    return "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def _metric_lines(m: Mapping) -> list[str]:
    """Headline metrics with CIs, exactly as metrics.json holds them."""
    lines = []
    if "accuracy" in m:
        lines.append(f"| accuracy | {fmt_ci(m['accuracy'], 'wilson_ci')} (Wilson) |")
    if m.get("macro_auc"):
        lines.append(f"| macro AUC | {fmt_ci(m['macro_auc'], 'bootstrap_ci')} (bootstrap) |")
    for key in ("averaged_accuracy", "balanced_accuracy", "macro_f1"):
        if m.get(key) is not None:
            lines.append(f"| {key.replace('_', ' ')} | {m[key]:.3f} |")
    if m.get("mean_auc"):  # multi-label
        lines.append(f"| mean AUC | {fmt_ci(m['mean_auc'], 'bootstrap_ci')} |")
    out = ["| metric | value [95% CI] |", "|---|---|", *lines] if lines else []
    per = m.get("per_class") or m.get("per_label") or {}
    if per:
        out += ["", "| class | support | sensitivity | specificity | AUC |", "|---|---|---|---|---|"]
        for name, pc in per.items():
            out.append(f"| {name} | {pc.get('support', pc.get('n_known', ''))} | "
                       f"{fmt_ci(pc.get('sensitivity'), 'wilson_ci')} | {fmt_ci(pc.get('specificity'), 'wilson_ci')} | "
                       f"{fmt_ci(pc.get('auc'), 'bootstrap_ci')} |")
    return out


def _f4(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _export_lines(info: Mapping) -> list[str]:
    """An export's file, input contract and the checks it passed when written."""
    ho, ver = info.get("heldout") or {}, info.get("verification") or {}
    size = info.get("image_size")
    lines = [f"## Export: {info.get('format', 'savedmodel')}, quantisation {info.get('quantize', 'none')}", ""]
    if info.get("file"):
        lines.append(f"- File: `{info['file']}` ({info.get('bytes', 0):,} bytes); made {info.get('created_utc', '?')} "
                     f"by cxr_tf {info.get('cxr_tf_version', '?')} from {info.get('source', '?')}.")
    if info.get("class_names"):
        lines.append(f"- Classes (output columns, in order): {', '.join(info['class_names'])}"
                     + (" (independent sigmoid outputs)." if info.get("multilabel") else " (softmax)."))
    if size:
        lines.append(f"- Input: float32 `[N, {size}, {size}, 1]` in [0, 1]"
                     + (" (or raw encoded images through `serving_default`)." if info.get("format") == "savedmodel"
                        else ": decoded pixels through `preprocess_np.preprocess_images(pixels, "
                             f"{size})` (NumPy only, equal to the SavedModel's in-graph preprocessing)."))
    if ver:
        lines.append(f"- Run by its own runtime on {ver.get('images')} held-out images: max |export - Keras| = "
                     f"{ver.get('max_abs_diff_vs_keras', float('nan')):.3g} (tolerance {ver.get('tolerance')}).")
    if ho:
        lines.append(f"- Held-out split, {ho.get('images')} images: accuracy {_f4((ho.get('export') or {}).get('accuracy'))} "
                     f"(Keras {_f4((ho.get('keras') or {}).get('accuracy'))}), AUC {_f4((ho.get('export') or {}).get('auc'))} "
                     f"(Keras {_f4((ho.get('keras') or {}).get('auc'))})"
                     + (" — **kept with --force despite a drop above the tolerance**" if ho.get("forced") else "") + ".")
    if "int8_calibration" in info:
        c = info["int8_calibration"]
        lines.append(f"- int8 calibrated on {c['images']} training-split images (seed {c['seed']}); "
                     "no held-out image was used.")
    return lines + [""]


def render_card(card: Mapping) -> str:
    """Markdown for ``card``.

    Keys (all optional): ``title``, ``description``, ``run``, ``task``, ``class_names``,
    ``intended_use`` (text), ``metrics`` (a metrics.json test block), ``metrics_sets``
    (``{set: {metric: {"value", "ci95"}}}``), ``config``, ``data_sources`` (``[{"name" or
    "source", "images", "licence"}]``), ``split_summary_csv``, ``calibration``,
    ``operating_points``, ``subgroups``, ``shortcut_audit``, ``export``, ``limitations``,
    ``provenance`` and ``notes``.
    """
    m = card.get("metrics", {})
    cfg = card.get("config", {})
    names = m.get("class_names") or card.get("class_names") or []
    title = card.get("title") or f"Model card: {card.get('name', 'cxr_tf model')}"
    present: list[str] = ["intended_use", "limitations"]
    s = [f"# {title}", ""]
    if card.get("description"):
        s += [card["description"], ""]
    if card.get("run"):
        s += [f"Generated by cxr_tf from run `{card['run']}`'s own files.", ""]

    s += ["## Intended use", "",
          f"- Task: {card.get('task') or ('classify a frontal chest radiograph as ' + ' / '.join(names))}.",
          f"- {card.get('intended_use') or NOT_CLINICAL}"]
    if card.get("intended_use") and "NOT FOR CLINICAL USE" not in card["intended_use"].upper():
        s.append(f"- {NOT_CLINICAL}")  # a custom text never drops the warning
    s += ["- In scope: research on public CXR collections like the training data; teaching; a starting point "
          "for fine-tuning on the user's own labelled data.",
          "- Out of scope: any patient decision; lateral views, children vs adults or scanners not represented "
          "in the data below without re-validation; other modalities.", ""]

    data = card.get("data_sources")
    if not data and card.get("run") and not cfg.get("data_dir"):
        data = [{"name": "synthetic CXRs generated by cxr_tf.datasets.synthetic (no patient data)",
                 "images": cfg.get("synthetic_n", "?"), "licence": "the project's own"}]
    if data or cfg.get("data_dir") or card.get("split_summary_csv"):
        present.append("data")
        s += ["## Data", ""]
        if data:
            s += ["| source | images | licence |", "|---|---:|---|"]
            for d in data:
                n = d.get("images", "?")
                s.append(f"| {d.get('name') or d.get('source')} | {f'{n:,}' if isinstance(n, int) else n} | "
                         f"{d.get('licence', 'unknown')} |")
        elif cfg.get("data_dir"):
            s.append(f"- `{Path(str(cfg['data_dir'])).name}` (format {cfg.get('format', 'auto')})")
        if card.get("split_summary_csv"):
            present.append("split")
            s += ["", f"Split: patient-level, seed {cfg.get('seed', '?')} (`splits.csv` in the run folder):", "",
                  "```", card["split_summary_csv"].strip(), "```"]
        s.append("")

    if cfg.get("backbone"):
        present.append("model")
        s += ["## Model", "",
              f"- {cfg.get('backbone')} at {cfg.get('image_size')} px, head {cfg.get('head', '?')}, "
              + (f"{'sigmoid (multi-label)' if cfg.get('multilabel') else 'softmax'} over {len(names)} classes"
                 f" ({', '.join(names)}, in output order)." if "epochs" not in cfg else
                 f"weights {cfg.get('weights', '?')}, freeze_until {cfg.get('freeze_until', '?')}; "
                 f"{cfg.get('epochs', '?')} epochs, lr {cfg.get('lr', '?')}."),
              "- Input: one grey channel scaled per image to [0, 1], aspect kept, zero padded.", ""]

    if m:
        present.append("metrics")
        s += [f"## Performance (held-out test split, n = {m.get('n', '?')})", "",
              f"Decision rule: {m.get('decision_rule', 'argmax')}.", "", *_metric_lines(m), ""]

    sets = card.get("metrics_sets")
    if sets:
        present.append("metrics")
        s += ["## Metrics (95% CI)", "", "| held-out set | metric | value | 95% CI |", "|---|---|---:|---|"]
        for set_name, ms in sets.items():
            for k, v in ms.items():
                val = v.get("value") if isinstance(v, dict) else v
                ci = v.get("ci95") if isinstance(v, dict) else None
                s.append(f"| {set_name} | {k} | {_f3(val)} | {f'[{ci[0]:.3f}, {ci[1]:.3f}]' if ci else 'n/a'} |")
        s.append("")

    cal = card.get("calibration")
    s += ["## Calibration", ""]
    if cal and "ece_before" in cal:
        present.append("calibration")
        b, a = cal["ece_before"], cal["ece_after"]
        s += [f"Temperature scaling fitted on the validation split: T = {cal['temperature']:.3f}; served "
              f"probabilities are calibrated. Test ECE ({cal.get('n_bins', 15)} bins) {fmt_ci(b, 'ci')} before, "
              f"{fmt_ci(a, 'ci')} after.", ""]
    elif cal:
        present.append("calibration")
        s += [json.dumps(cal, sort_keys=True), ""]
    else:
        s += ["Not calibrated: probabilities are the model's own.", ""]

    op = card.get("operating_points")
    if op:
        present.append("operating_points")
        s += ["## Operating points", "", f"Chosen on validation by rule `{op.get('rule')}`:", "",
              "| class | threshold |", "|---|---|"]
        s += [f"| {k} | {'n/a' if v is None else f'{v:.4f}'} |" for k, v in op.get("thresholds", {}).items()]
        s.append("")

    sub = card.get("subgroups")
    if card.get("subgroups_md"):
        present.append("subgroups")
        s += ["## Subgroups", "", card["subgroups_md"], ""]
    elif sub:
        present.append("subgroups")
        cols = list(sub[0])
        s += ["## Subgroups", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        s += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in sub]
        s.append("")

    sc = card.get("shortcut_audit")
    if sc:
        present.append("shortcuts")
        s += ["## Shortcut audit", ""]
        for k, v in sc.items():
            s.append(f"- {k.replace('_', ' ')}: {v if not isinstance(v, (dict, list)) else json.dumps(v)}")
        s.append("")

    if card.get("export"):
        s += _export_lines(card["export"])

    s += ["## Known limitations", ""]
    s += [f"- {x}" for x in card.get("limitations", [])]
    s += ["- A patient-level test split of the training collection flatters a model: images from another "
          "site, period or scanner score lower. Validate on your own data before relying on any number here.",
          "- Public CXR collections mix sources per class (e.g. pediatric normals vs adult COVID): a model can "
          "learn the source instead of the disease; see the shortcut audit where present.", ""]

    prov = card.get("provenance")
    if prov:
        s += ["## Provenance", ""] + [f"- {k.replace('_', ' ')}: `{v}`" for k, v in prov.items() if v] + [""]
    s += [f"{n}" for n in card.get("notes", [])]
    if card.get("notes"):
        s.append("")

    s += ["## Reporting checklists covered", "",
          "| section | items |", "|---|---|"]
    s += [f"| {k.replace('_', ' ')} | {'; '.join(CHECKLIST[k])} |" for k in CHECKLIST if k in present]
    s.append("")
    return "\n".join(s)


def write_model_card(path: str | os.PathLike, card: Mapping) -> str:
    """Write ``render_card(card)`` to ``path`` (a folder gets ``MODEL_CARD.md``)."""
    from cxr_tf.io.atomic import atomic_write

    p = Path(str(path))
    if p.is_dir():
        p = p / CARD_FILE
    text = render_card(card)
    return atomic_write(str(p), lambda f: f.write(text), mode="w", encoding="utf-8")
