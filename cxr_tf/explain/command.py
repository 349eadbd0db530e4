"""``cxr-tf explain``: CAM image / heat map / overlay PNGs for image files.

    cxr-tf explain --model saved_models/<name>/<version> IMAGE... [--method gradcam|gradcam++|scorecam]
                   [--layer NAME] [--max-n 32] [--class NAME] [--out explanations]

``--model`` is an export directory (which must carry ``assets.extra/cxr_tf_model.keras``
or a metadata ``run_dir``, see :mod:`cxr_tf.explain.loading`) or a ``.keras`` file.
Writes ``<out>/<image stem>_{image,heatmap,overlay}.png`` and ``<out>/explanations.csv``
(file, predicted class, probabilities, explained class, border share).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cxr_tf.errors import CXRConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="PNG, JPEG or DICOM files")
    p.add_argument("--model", required=True, help="saved_models/<name>/<version> or a .keras file")
    p.add_argument("--method", default="gradcam", choices=["gradcam", "gradcam++", "scorecam"])
    p.add_argument("--layer", default=None, help="target layer (default: the layer registered for the backbone, else the last 4D feature map)")
    p.add_argument("--max-n", type=int, default=32, help="Score-CAM: channels used (Faster Score-CAM); 0 = all")
    p.add_argument("--class", dest="class_name", default=None, help="class to explain (default: the predicted one)")
    p.add_argument("--out", default="explanations")
    p.add_argument("--cache-dir", default=None,
                   help="where DICOM/TIFF/BMP/... inputs are cached as 16-bit PNG (default ~/.cache/cxr_tf/decoded)")


def run(a) -> list[Path]:
    import pandas as pd

    from cxr_tf.explain import Explainer, border_mass, load_images, load_keras_model, save_triplet

    model = load_keras_model(a.model)
    size = int(model.input.shape[1])
    names = list(getattr(model, "class_names", [str(i) for i in range(model.output.shape[-1])]))
    x = load_images(a.images, size, getattr(a, "cache_dir", None))
    prob = np.asarray(model.predict(x, verbose=0))
    if a.class_name is not None:
        if a.class_name not in names:
            raise CXRConfigError(f"--class {a.class_name!r} is not one of the model's classes {names}")
        target = np.full(len(x), names.index(a.class_name))
    else:
        target = prob.argmax(1)
    ex = Explainer(model, a.method, layer=a.layer, max_n=a.max_n or None)
    cams = ex(x, target)
    written, rows = [], []
    for i, path in enumerate(a.images):
        stem = f"{Path(path).stem}_{a.method.replace('+', 'p')}"
        written += save_triplet(x[i], cams[i], a.out, stem)
        rows.append({"file": str(path), "predicted": names[int(prob[i].argmax())], "explained": names[int(target[i])],
                     **{f"p_{n}": float(v) for n, v in zip(names, prob[i])},
                     "border_share": float(border_mass(cams[i])[0]), "layer": ex.layer})
    out = Path(a.out)
    # surrogateescape: a file name that is not valid UTF-8 is written as its own bytes
    # (cxr_tf.io.CSV_ENCODING) instead of crashing after the CAMs were computed.
    pd.DataFrame(rows).to_csv(out / "explanations.csv", index=False, encoding="utf-8", errors="surrogateescape")
    print(f"[cxr_tf] {a.method} on layer {ex.layer}: wrote {len(written)} PNGs and {out / 'explanations.csv'}")
    return written
