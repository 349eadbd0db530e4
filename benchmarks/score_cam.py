"""Score-CAM cost: full vs Faster Score-CAM (``max_N``) vs Grad-CAM / Grad-CAM++.

A classifier (default ResNet18 at 128 px, briefly trained on real kermany224 images so
its maps are not noise) explains the same real test images with each method through
:class:`cxr_tf.explain.Explainer` (tf-keras-vis). Reported: seconds per image (median
of repeats after a warm-up call), and the Spearman rank correlation of each faster
map to the full Score-CAM map (1 = the same ranking of pixels), averaged over images.

Full Score-CAM runs one forward pass per channel of the target layer (512 for
ResNet18); Faster Score-CAM keeps the ``max_N`` highest-variance channels.

Run: ``python -m benchmarks.score_cam [--tiny]``.
"""
from __future__ import annotations

import os

import numpy as np

from benchmarks._common import Row, main, measure

NAME = "score_cam"


def _images(n: int, size: int, seed: int = 0):
    """``n`` real kermany224 images (and 3-class labels) at ``size`` px, else synthetic ones."""
    from cxr_tf.data import image_dataset

    root = os.path.join(os.environ.get("CXR_DATA_DIR", ""), "kermany224")
    if os.path.isdir(root):
        from cxr_tf.datasets import load_kermany

        ds = load_kermany(root)
        ds = ds.subset(np.random.default_rng(seed).choice(len(ds), n, replace=False))
        source = "kermany224"
    else:
        from cxr_tf.datasets.synthetic import make_synthetic_cxr

        ds, source = make_synthetic_cxr(n=n, image_size=size, seed=seed), "synthetic"
    xy = list(image_dataset(ds, size).batch(n))[0]
    return np.asarray(xy[0]), np.asarray(xy[1]), source


def run(args) -> list[Row]:
    import keras
    from scipy.stats import spearmanr

    from cxr_tf.explain import Explainer
    from cxr_tf.models import build_model

    if args.tiny:
        backbone, size, n_train, n_explain, epochs, repeats, max_ns = "tiny_cnn", 32, 16, 2, 1, 1, (8,)
    else:
        backbone, size, n_train, n_explain, epochs, repeats, max_ns = (args.backbone, args.image_size, args.train_images,
                                                                       args.images, args.epochs, args.repeats, (32, 8))
    keras.utils.set_random_seed(0)
    x, y, source = _images(n_train + n_explain, size)
    model = build_model(backbone, num_classes=3, image_size=size, head="gap", freeze_until=0,
                        class_names=["bacterial", "viral", "normal"], bn_momentum=0.9)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")
    model.fit(x[:n_train], y[:n_train], batch_size=16, epochs=epochs, verbose=0)
    xe = x[n_train:]
    params = {"backbone": backbone, "image_size": size, "images": n_explain, "data": source}

    def timed(explainer):
        cams = {}

        def go():
            cams["v"] = explainer(xe)
        t = measure(go, repeats=repeats, warmup=1)
        return t.median / len(xe), cams["v"], t.repeats

    methods = [("scorecam full", Explainer(model, "scorecam", max_n=None))]
    methods += [(f"scorecam max_N={k}", Explainer(model, "scorecam", max_n=k)) for k in max_ns]
    methods += [("gradcam", Explainer(model, "gradcam")), ("gradcam++", Explainer(model, "gradcam++"))]
    rows, ref, ref_s = [], None, None
    for name, ex in methods:
        sec, cams, reps = timed(ex)
        rows.append(Row(name, "seconds_per_image", sec, "s", repeats=reps, params={**params, "layer": ex.layer}))
        if ref is None:
            ref, ref_s = cams, sec
            continue
        rho = [spearmanr(a.ravel(), b.ravel()).statistic for a, b in zip(ref, cams)]
        rows.append(Row(f"{name} vs scorecam full", "spearman_rho", float(np.nanmean(rho)), "", params=params))
        rows.append(Row(f"scorecam full / {name}", "ratio", ref_s / sec, "x", params=params))
        print(f"  {name}: {sec:.3f} s/image, rho to full {np.nanmean(rho):.3f}", flush=True)
    return rows


def _options(p):
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--train-images", type=int, default=96)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--images", type=int, default=4, help="images explained per timed call")
    p.add_argument("--repeats", type=int, default=3)


if __name__ == "__main__":
    main(NAME, run, __doc__, configure=_options)
