"""Evaluation plots (ROC, PR, confusion matrix, training curves, histograms).

Figures are drawn on the Agg canvas directly (``matplotlib.figure.Figure`` +
``FigureCanvasAgg``) instead of pyplot: no global backend switch, no GUI, no figure
manager leaking memory in long training runs, and safe from worker threads.
Every ``plot_*`` function writes a PNG and returns its path.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import auc as _sk_auc
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

from cxr_tf.errors import CXRInputError

from ._utils import as_binary, as_class_indices, as_prob_matrix, check_class_names

_LR_COLUMNS = ("lr", "learning_rate")


def _new_figure(width: float, height: float, dpi: int = 100, layout: str | None = None) -> Figure:
    fig = Figure(figsize=(width, height), dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path) -> str:
    if path is None:
        raise CXRInputError(None, "an output path is required")
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _binary_curves(y_true, y_prob, class_names) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(label, y_binary, score) per curve: one per class, or one per model for a dict."""
    if isinstance(y_true, Mapping):
        if y_prob is not None:
            raise CXRInputError(None, "pass either a {model: (y_true, score)} dict or y_true, y_prob")
        if not y_true:
            raise CXRInputError(None, "the model dict is empty")
        curves = []
        for model, pair in y_true.items():
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise CXRInputError(None, f"model {model!r}: expected a (y_true, score) pair")
            yb, s = as_binary(*pair)
            curves.append((str(model), yb, s))
        return curves
    names = check_class_names(class_names)
    prob = as_prob_matrix(y_prob, len(names))
    y = as_class_indices(y_true, len(names), names)
    if len(y) != len(prob):
        raise CXRInputError(None, f"y_true has {len(y)} rows but y_prob has {len(prob)}")
    # Binary: both one-vs-rest curves carry the same information; show class 1's.
    classes = [1] if len(names) == 2 else range(len(names))
    return [(names[k], y == k, prob[:, k]) for k in classes]


def _both_classes(yb: np.ndarray) -> bool:
    return bool(yb.any() and not yb.all())


def plot_roc(y_true, y_prob=None, class_names=None, path=None, title: str | None = None) -> str:
    """One-vs-rest ROC curves, AUC in the legend.

    Args:
        y_true: (N,) labels / (N, C) one-hot; or a dict {model_name: (y_true_binary,
            score)} to compare models on a binary task (then leave y_prob/class_names None).
        y_prob: (N, C) probabilities (binary: (N,) P(class 1) also accepted).
        class_names: C names. For C == 2 only the class-1 curve is drawn.
        path: output PNG path.
        title: figure title.

    Returns:
        ``path``.
    """
    curves = _binary_curves(y_true, y_prob, class_names)
    fig = _new_figure(6, 5.5)
    ax = fig.add_subplot(1, 1, 1)
    for label, yb, s in curves:
        if not _both_classes(yb):
            ax.plot([], [], label=f"{label} (AUC n/a: one class only)")
            continue
        fpr, tpr, _ = roc_curve(yb, s)
        ax.plot(fpr, tpr, lw=1.8, label=f"{label} (AUC = {_sk_auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate (1 - specificity)",
           ylabel="True positive rate (sensitivity)", title=title or "ROC curves")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def plot_pr(y_true, y_prob=None, class_names=None, path=None, title: str | None = None) -> str:
    """One-vs-rest precision-recall curves, average precision (AP) in the legend.

    Args: as :func:`plot_roc`. A dotted line marks the prevalence (the AP of a
    random classifier) when all curves share one binary task.

    Returns:
        ``path``.
    """
    curves = _binary_curves(y_true, y_prob, class_names)
    fig = _new_figure(6, 5.5)
    ax = fig.add_subplot(1, 1, 1)
    prevalences = {}
    for label, yb, s in curves:
        if not yb.any():
            ax.plot([], [], label=f"{label} (AP n/a: no positives)")
            continue
        prec, rec, _ = precision_recall_curve(yb, s)
        ap = average_precision_score(yb, s)
        line, = ax.plot(rec, prec, lw=1.8, drawstyle="steps-post", label=f"{label} (AP = {ap:.3f})")
        prevalences[label] = (round(float(yb.mean()), 6), line.get_color())
    if len({p for p, _ in prevalences.values()}) == 1:  # one binary task (one class or several models on it)
        prev = next(iter(prevalences.values()))[0]
        ax.axhline(prev, ls=":", lw=1, c="grey", label=f"prevalence = {prev:.3f} (chance)")
    else:  # one-vs-rest per class: each curve's chance level is its own class's prevalence
        for label, (prev, color) in prevalences.items():
            ax.axhline(prev, ls=":", lw=1, c=color, label=f"{label} prevalence = {prev:.3f} (chance)")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="Recall (sensitivity)", ylabel="Precision",
           title=title or "Precision-recall curves")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize="small")
    return _save(fig, path)


# --------------------------------------------------------------------------- confusion matrix


def _check_cm(cm, class_names) -> tuple[np.ndarray, list[str]]:
    cm = np.asarray(cm)
    names = [str(c) for c in class_names]
    if cm.ndim != 2 or cm.shape != (len(names), len(names)):
        raise CXRInputError(None, f"confusion matrix {cm.shape} does not match {len(names)} class names")
    if np.any(cm < 0):
        raise CXRInputError(None, "confusion matrix has negative counts")
    return cm, names


def _draw_confusion_matrix(fig: Figure, cm, class_names, normalize, title) -> None:
    cm, names = _check_cm(cm, class_names)
    if normalize not in ("true", None, False):
        raise CXRInputError(None, f'normalize must be "true" (row-normalised colours) or None, got {normalize!r}')
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    shown = frac if normalize == "true" else cm.astype(np.float64)
    vmax = 1.0 if normalize == "true" else max(float(cm.max()), 1.0)
    ax = fig.add_subplot(1, 1, 1)
    # aspect="auto": square cells leave the axes box wider than the image, which
    # makes layout engines mis-place (clip) the y tick labels.
    im = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=vmax, aspect="auto")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04,
                 label="fraction of true class" if normalize == "true" else "count")
    fontsize = max(6, 11 - len(names) // 3)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            # Count and row-normalised percentage (= per-class recall on the diagonal).
            v = float(cm[i, j])
            count = f"{int(v)}" if v.is_integer() else f"{v:.2f}"
            ax.text(j, i, f"{count}\n{100 * frac[i, j]:.1f}%", ha="center", va="center",
                    fontsize=fontsize, color="white" if shown[i, j] > vmax / 2 else "black")
    ticks = np.arange(len(names))
    ax.set_xticks(ticks, labels=names, rotation=45 if len(names) > 3 else 0, ha="right" if len(names) > 3 else "center")
    ax.set_yticks(ticks, labels=names)
    ax.set(xlabel="Predicted", ylabel="True", title=title or "Confusion matrix")


def _cm_figsize(n: int) -> float:
    return max(4.5, 1.0 * n + 2.5)


def plot_confusion_matrix(cm, class_names, path, normalize: str | None = "true", title: str | None = None) -> str:
    """Confusion-matrix heatmap annotated with counts and row percentages.

    Args:
        cm: (C, C) counts, rows = true class, columns = predicted.
        class_names: C names.
        path: output PNG path.
        normalize: "true" colours by row fraction (readable with class imbalance);
            None colours by raw counts. Annotations show both either way.
        title: figure title.

    Returns:
        ``path``.
    """
    size = _cm_figsize(len(class_names))
    fig = _new_figure(size + 1, size, layout="constrained")
    _draw_confusion_matrix(fig, cm, class_names, normalize, title)
    return _save(fig, path)


def confusion_matrix_image(cm, class_names, normalize: str | None = "true", title: str | None = None,
                           dpi: int = 100) -> np.ndarray:
    """Render the confusion matrix to an in-memory RGB image (e.g. for TensorBoard).

    Args: as :func:`plot_confusion_matrix`; ``dpi`` sets the resolution.

    Returns:
        uint8 array of shape (H, W, 3). Add a batch axis for ``tf.summary.image``.
    """
    size = _cm_figsize(len(class_names))
    fig = _new_figure(size + 1, size, dpi=dpi, layout="constrained")
    _draw_confusion_matrix(fig, cm, class_names, normalize, title)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


# --------------------------------------------------------------------------- training curves


def _history_frame(history) -> pd.DataFrame:
    if hasattr(history, "history") and isinstance(history.history, Mapping):
        history = history.history  # keras.callbacks.History, without importing keras
    if isinstance(history, (str, os.PathLike)):
        try:
            df = pd.read_csv(history)
        except (OSError, pd.errors.EmptyDataError, pd.errors.ParserError) as e:
            raise CXRInputError(history, f"cannot read training history CSV ({e})") from None
    elif isinstance(history, pd.DataFrame):
        df = history.copy()
    elif isinstance(history, Mapping):
        # Series tolerate per-key lengths differing (e.g. val metrics every k epochs).
        df = pd.DataFrame({str(k): pd.Series(np.asarray(v, dtype=np.float64).reshape(-1))
                           for k, v in history.items()})
    else:
        raise CXRInputError(None, f"history must be a CSV path, dict or DataFrame, got {type(history).__name__}")
    df = df.apply(pd.to_numeric, errors="coerce").dropna(axis=1, how="all")
    if df.empty:
        raise CXRInputError(None, "training history has no numeric columns / rows")
    return df


def best_epoch(history, monitor: str = "val_auc", mode: str = "max") -> int | None:
    """The 1-based epoch whose weights the best checkpoint holds (``ModelCheckpoint`` with
    ``save_best_only``: the first epoch reaching the best ``monitor``); None without it."""
    df = _history_frame(history)
    if monitor not in df or df[monitor].isna().all():
        return None
    vals = df[monitor].to_numpy()
    i = int(np.nanargmax(vals) if mode == "max" else np.nanargmin(vals))
    return int(_epochs(df)[i])


def _epochs(df: pd.DataFrame) -> np.ndarray:
    """1-based epoch numbers, as Keras prints them ("Epoch 1/5"); CSVLogger counts from 0."""
    return df["epoch"].to_numpy() + 1 if "epoch" in df else np.arange(1, len(df) + 1)


def plot_training_curves(history_csv_or_dict, path, title: str | None = None, monitor: str = "val_auc",
                         mode: str = "max") -> str:
    """Per-epoch train vs validation curves, one panel per metric.

    Works with whatever columns exist (Keras CSVLogger CSV, ``History.history`` dict,
    ``History`` object or DataFrame): ``x`` and ``val_x`` share a panel, loss first.
    Epochs are numbered from 1 with integer ticks, as the console prints them; the
    epoch the best checkpoint comes from (best ``monitor``) is marked on every panel. A
    learning-rate column (``learning_rate``/``lr``) gets a log-scale panel only when it
    changes; a constant rate is named in the title instead.

    Args:
        history_csv_or_dict: CSV path, dict of lists, DataFrame or History object.
        path: output PNG path.
        title: figure title.
        monitor, mode: what the best checkpoint was chosen by (``val_auc``, ``max``).

    Returns:
        ``path``.
    """
    df = _history_frame(history_csv_or_dict)
    x = _epochs(df)
    metrics: list[str] = []
    for col in df.columns:
        if col == "epoch" or col in _LR_COLUMNS:
            continue
        base = col[4:] if col.startswith("val_") else col
        if base not in metrics:
            metrics.append(base)
    metrics.sort(key=lambda m: m != "loss")  # stable: loss first, rest in CSV order
    lr_col = next((c for c in _LR_COLUMNS if c in df), None)
    lr_note = ""
    if lr_col:
        lr = df[lr_col].dropna().to_numpy()
        if len(lr) and np.allclose(lr, lr[0], rtol=1e-6, atol=0):
            lr_note, lr_col = f"learning rate {lr[0]:.3g} (constant)", None
    panels = metrics + ([lr_col] if lr_col else [])
    # as many columns as fill the rows: no blank cells (4 panels: 2x2, not 3 + 1)
    ncols = 1 if len(panels) == 1 else 2 if len(panels) in (2, 4) else 3
    nrows = math.ceil(len(panels) / ncols)
    fig = _new_figure(4.8 * ncols, 3.6 * nrows + 0.5, layout="constrained")
    best = best_epoch(df, monitor, mode)
    for i, name in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        if name == lr_col:
            ax.plot(x, df[name], c="tab:green", marker=".")
            if (df[name].dropna() > 0).all():
                ax.set_yscale("log")
            ax.set(title="learning rate", xlabel="epoch")
        else:
            for col, style, label in ((name, "-", "train"), (f"val_{name}", "--", "validation")):
                if col in df:
                    ok = df[col].notna().to_numpy()
                    ax.plot(x[ok], df[col].to_numpy()[ok], ls=style, marker=".", label=label)
            ax.set(title=name, xlabel="epoch")
        if best is not None:
            ax.axvline(best, c="tab:red", ls=":", lw=1.2, label=f"best checkpoint (epoch {best}, {monitor})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(x.min() - 0.3, x.max() + 0.3)
        ax.grid(alpha=0.3)
    # one legend below the panels (every panel draws the same series), none over the data
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize="small")
    sup = "; ".join(t for t in (title, lr_note) if t)
    if sup:
        fig.suptitle(sup)
    return _save(fig, path)


# --------------------------------------------------------------------------- histograms


def plot_probability_histograms(y_true, y_prob, class_names, path, title: str | None = None,
                                threshold: float | None = None) -> str:
    """Histogram of each class's predicted probability, split by true class vs rest.

    Args:
        y_true: (N,) labels or (N, C) one-hot.
        y_prob: (N, C) probabilities (binary: (N,) P(class 1) also accepted).
        class_names: C names; for C == 2 a single panel of P(class 1) is drawn.
        path: output PNG path.
        title: figure title.
        threshold: binary only; drawn as a vertical line.

    Returns:
        ``path``.
    """
    names = check_class_names(class_names)
    prob = as_prob_matrix(y_prob, len(names))
    y = as_class_indices(y_true, len(names), names)
    if len(y) != len(prob):
        raise CXRInputError(None, f"y_true has {len(y)} rows but y_prob has {len(prob)}")
    classes = [1] if len(names) == 2 else list(range(len(names)))
    ncols = min(3, len(classes))
    nrows = math.ceil(len(classes) / ncols)
    fig = _new_figure(4.8 * ncols, 3.6 * nrows)
    in_unit = prob.min() >= 0 and prob.max() <= 1
    for i, k in enumerate(classes):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        s = prob[:, k]
        lo, hi = float(s.min()), float(s.max())
        # bins over [0, 1]; over the data's own range when it is narrow (an undertrained model's
        # 0.48-0.52 would otherwise fall into one bin)
        bins = np.linspace(0, 1, 21) if in_unit and hi - lo > 0.2 else np.linspace(lo, hi + 1e-9, 21)
        # side-by-side bars in two distinct colours: overlapping filled bars blend into a third
        # colour, and identical outlines hide each other
        other = names[0] if len(names) == 2 else "other classes"
        ax.hist([s[y == k], s[y != k]], bins=bins, histtype="bar", color=["tab:orange", "tab:blue"],
                label=[f"true {names[k]} (n={int((y == k).sum())})", f"true {other} (n={int((y != k).sum())})"])
        if threshold is not None and len(names) == 2:
            ax.axvline(threshold, c="black", ls=":", lw=1.2, label=f"threshold {threshold:.3g}")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: no half images
        ax.set(xlabel=f"P({names[k]})", ylabel="images", title=names[k])
        ax.legend(fontsize="small")
    fig.suptitle(title or "Predicted probability by true class")
    return _save(fig, path)
