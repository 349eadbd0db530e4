"""Serving: the exported SavedModel vs calling the Keras model, and its size.

:func:`cxr_tf.export.export_for_serving` writes a SavedModel with two signatures:
``serving_default`` (encoded image bytes, decoded and preprocessed in the graph) and
``predict_images`` (float images, preprocessed in the graph). Both are timed, loaded
back with :func:`cxr_tf.export.load_exported`, against the same Keras model called
directly (``model(x, training=False)``) and through its compiled predict function
(``model.predict_on_batch``), on the same real ``kermany224`` images:
latency at batch 1 (median of many calls) and throughput at batch 32.
Sizes: the SavedModel's ``variables/`` vs the raw weight bytes and vs a
``.weights.h5`` file of the same model.

Targets: the exported model within 1.2x of the Keras call; size within 1.1x of the weights.
The bytes signature also decodes JPEGs, work the Keras call does not do.

Run: ``python -m benchmarks.serving [--tiny]``.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from benchmarks._common import Row, kermany_folder, main, measure

NAME = "serving"


def run(args) -> list[Row]:
    import keras
    import numpy as np
    import tensorflow as tf

    from cxr_tf.data.preprocess import prepare_image
    from cxr_tf.export import export_for_serving, load_exported
    from cxr_tf.export.savedmodel import IMAGES_SIGNATURE, SERVING_SIGNATURE
    from cxr_tf.models import CXRClassifier

    if args.tiny:
        backbone, size, big, r1, rb = "tiny_cnn", 32, 4, 2, 1
    else:
        backbone, size, big, r1, rb = "resnet50", 224, 32, args.repeats_b1, args.repeats_b32
    rows: list[Row] = []
    classes = ["bacterial", "viral", "normal"]
    keras.utils.set_random_seed(0)
    model = CXRClassifier(backbone, num_classes=3, image_size=size, class_names=classes, freeze_until=0)
    with tempfile.TemporaryDirectory() as tmp:
        folder, data = kermany_folder(Path(tmp) / "data", big)
        files = sorted(str(p) for p in Path(folder).rglob("*.jpeg"))[:big]
        encoded = [Path(f).read_bytes() for f in files]
        images = np.stack([prepare_image(tf.constant(b), size).numpy() for b in encoded])
        params = {"backbone": backbone, "image_size": size, "data": data}

        res = export_for_serving(model, Path(tmp) / "export", "bench", 1, class_names=classes, image_size=size)
        exported = load_exported(res.path)
        h5 = Path(tmp) / "model.weights.h5"
        model.save_weights(str(h5))
        h5_bytes = h5.stat().st_size
        float_sig = exported.signatures[IMAGES_SIGNATURE]
        bytes_sig = exported.signatures[SERVING_SIGNATURE]

        # the exported model must answer what the Keras model answers (the float signature
        # re-scales its input per image, so it matches closely rather than exactly)
        want = model.predict_on_batch(images[:2])
        np.testing.assert_allclose(bytes_sig(image_bytes=tf.constant(encoded[:2]))["probabilities"].numpy(),
                                   want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(float_sig(images=tf.constant(images[:2]))["probabilities"].numpy(),
                                   want, atol=2e-2)

        paths = {
            "keras model(x)": (lambda x, b: model(x, training=False)),
            "keras predict_on_batch": (lambda x, b: model.predict_on_batch(x)),
            "SavedModel predict_images (float)": (lambda x, b: float_sig(images=x)),
            "SavedModel serving_default (bytes)": (lambda x, b: bytes_sig(image_bytes=b)),
        }
        lat, thr = {}, {}
        for batch, repeats in (() if args.size_only else ((1, r1), (big, rb))):
            x = tf.constant(images[:batch])
            b = tf.constant(encoded[:batch])
            for case, fn in paths.items():
                t = measure(lambda: fn(x, b), repeats=repeats, warmup=2)
                p = {**params, "batch": batch}
                if batch == 1:
                    lat[case] = t.median
                    rows.append(Row(f"{case}, batch 1", "latency", t.median * 1e3, "ms", repeats=t.repeats, params=p))
                else:
                    thr[case] = batch / t.median
                    rows.append(Row(f"{case}, batch {batch}", "images_per_s", batch / t.median, "img/s",
                                    repeats=t.repeats, params=p))
                print(f"  batch {batch} {case}: {t.median * 1e3:.1f} ms", flush=True)

    for ref in (() if args.size_only else ("keras model(x)", "keras predict_on_batch")):
        for sig in ("SavedModel predict_images (float)", "SavedModel serving_default (bytes)"):
            short = "float" if "float" in sig else "bytes"
            rows.append(Row(f"{short} export / {ref}: latency batch 1", "ratio", lat[sig] / lat[ref], "x",
                            target="<=1.2"))
            rows.append(Row(f"{short} export / {ref}: time per image batch {big}", "ratio", thr[ref] / thr[sig], "x",
                            target="<=1.2"))
    s = res.sizes
    rows += [
        Row("SavedModel variables/", "size", s["variables_bytes"] / 2**20, "MiB", params=params),
        Row("SavedModel total (pb + variables + assets.extra)", "size", s["total_bytes"] / 2**20, "MiB", params=params),
        Row("model weights (raw bytes)", "size", s["weights_bytes"] / 2**20, "MiB", params=params),
        Row("model .weights.h5 file", "size", h5_bytes / 2**20, "MiB", params=params),
        Row("variables/ / raw weights", "ratio", s["variables_bytes"] / s["weights_bytes"], "x", target="<=1.1"),
        Row("variables/ / .weights.h5", "ratio", s["variables_bytes"] / h5_bytes, "x", target="<=1.1"),
        Row("SavedModel total / .weights.h5", "ratio", s["total_bytes"] / h5_bytes, "x", target="<=1.1"),
    ]
    return rows


def _options(p):
    p.add_argument("--repeats-b1", type=int, default=15, help="timed batch-1 calls per path")
    p.add_argument("--repeats-b32", type=int, default=3, help="timed batch-32 calls per path")
    p.add_argument("--size-only", action="store_true", help="export and sizes only, no timing (under a minute)")


if __name__ == "__main__":
    main(NAME, run, __doc__, configure=_options)
