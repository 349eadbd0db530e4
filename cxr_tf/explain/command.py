"""``cxr-tf explain``: CAM image / heat map / overlay PNGs for image files.

    cxr-tf explain --model saved_models/<name>/<version> IMAGE... [--method gradcam|gradcam++|scorecam]
                   [--layer NAME] [--max-n 32] [--class NAME] [--out explanations]

``--model`` is an export directory (any cxr_tf export, see :mod:`cxr_tf.explain.loading`)
or a ``.keras`` file. Writes, per image, at the image's ORIGINAL resolution,
``<out>/<image stem>_<method>_overlay.png`` (class, probability and method drawn on),
``..._heatmap.png`` and ``..._panel.png`` (image | overlay side by side), and
``<out>/explanations.csv`` (file, predicted class, probabilities, explained class, border
share, layer, warnings). A binary export's prediction is its served decision (its
validation threshold), as in its report. The layer chosen (and why) is printed, and so is a
warning for a map that is all zero, constant, or the same for every image.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from cxr_tf.errors import CXRConfigError

logger = logging.getLogger("cxr_tf.explain")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="PNG, JPEG or DICOM files")
    p.add_argument("--model", required=True, help="saved_models/<name>/<version> or a .keras file")
    p.add_argument("--method", default="gradcam", choices=["gradcam", "gradcam++", "scorecam"])
    p.add_argument("--layer", default=None, help="target layer (default: the registered CAM layer if its map is at "
                   "least 7x7 at the model's input size, else the deepest layer whose map is; printed)")
    p.add_argument("--max-n", type=int, default=32, help="Score-CAM: channels used (Faster Score-CAM); 0 = all")
    p.add_argument("--class", dest="class_name", default=None, help="class to explain (default: the predicted one)")
    p.add_argument("--out", default="explanations")
    p.add_argument("--cache-dir", default=None,
                   help="where DICOM/TIFF/BMP/... inputs are cached as 16-bit PNG (default ~/.cache/cxr_tf/decoded)")


def run(a) -> list[Path]:
    import pandas as pd

    from cxr_tf.explain import Explainer, border_mass, load_images, load_keras_model, map_warnings, save_explanation
    from cxr_tf.explain.loading import export_threshold
    from cxr_tf.io import display_name, read_image

    model = load_keras_model(a.model)
    size = int(model.input.shape[1])
    names = list(getattr(model, "class_names", [str(i) for i in range(model.output.shape[-1])]))
    x = load_images(a.images, size, getattr(a, "cache_dir", None))
    prob = np.asarray(model.predict(x, verbose=0))
    # the predicted class is the export's decision (its validation threshold), as served and reported
    threshold = export_threshold(a.model) if len(names) == 2 and Path(a.model).is_dir() else None
    decided = (prob[:, 1] >= threshold).astype(int) if threshold is not None else prob.argmax(1)
    if a.class_name is not None:
        if a.class_name not in names:
            raise CXRConfigError(f"--class {a.class_name!r} is not one of the model's classes {names}")
        target = np.full(len(x), names.index(a.class_name))
    else:
        target = decided
    ex = Explainer(model, a.method, layer=a.layer, max_n=a.max_n or None)
    logger.info(ex.layer_reason)
    cams = ex(x, target)
    warnings = map_warnings(cams, [display_name(p) for p in a.images])
    for w in warnings:
        logger.warning(f"warning: {w}")
    written, rows = [], []
    for i, path in enumerate(a.images):
        stem = f"{Path(path).stem}_{a.method.replace('+', 'p')}"
        k = int(target[i])
        label = f"{names[k]} p={prob[i, k]:.3f} | {a.method}"
        if threshold is not None:
            label = (f"{names[k]} | P({names[1]})={prob[i, 1]:.3f} "
                     f"{'>=' if prob[i, 1] >= threshold else '<'} threshold {threshold:.3f} | {a.method}")
        paths = save_explanation(read_image(path), cams[i], a.out, stem, label=label,
                                 title=f"{display_name(path)}: {a.method} on {ex.layer}"
                                       + (f" ({ex.grid[0]}x{ex.grid[1]})" if ex.grid else ""))
        written += list(paths.values())
        rows.append({"file": str(path), "predicted": names[int(decided[i])], "explained": names[k],
                     **{f"p_{n}": float(v) for n, v in zip(names, prob[i])},
                     "border_share": float(border_mass(cams[i])[0]), "layer": ex.layer,
                     "warnings": "; ".join(w for w in warnings if w.startswith(display_name(path) + ":"))})
    out = Path(a.out)
    # surrogateescape: a file name that is not valid UTF-8 is written as its own bytes
    # (cxr_tf.io.CSV_ENCODING) instead of crashing after the CAMs were computed.
    pd.DataFrame(rows).to_csv(out / "explanations.csv", index=False, encoding="utf-8", errors="surrogateescape")
    logger.info(f"{a.method} on layer {ex.layer}: wrote {len(written)} PNGs and {out / 'explanations.csv'}")
    return written
