"""Export formats: SavedModel vs ONNX vs TFLite, float and quantised: speed, size, accuracy.

A classifier (default ResNet18 at 128 px, pneumonia vs normal, trained briefly from
scratch on real kermany224 images) is exported with :func:`cxr_tf.export.export_model`
to every format and quantisation whose runtime is installed. Each export is verified
by :func:`export_model` itself (its runtime vs Keras on held-out images) and its
held-out accuracy and AUC are measured against the Keras model on the same
patient-level held-out split (``force=True``, so a quantisation that loses more than
the tolerance is still measured; the CSV says so). Timed through each format's own
runtime (ONNX Runtime, LiteRT, the SavedModel's ``predict_images``) on the same
model-ready images: batch-1 latency (median of many calls) and batch-32 throughput;
file size. Ratios are against the float SavedModel. Every runtime uses all the cores
this process may run on.

Run: ``python -m benchmarks.export_formats [--tiny]``.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from benchmarks._common import Row, cores_used, main, measure

NAME = "export_formats"


def _cases():
    import importlib.util

    cases = [("savedmodel", "none")]
    if all(importlib.util.find_spec(m) for m in ("tf2onnx", "onnx", "onnxruntime")):
        cases += [("onnx", q) for q in ("none", "dynamic", "int8")]
    if importlib.util.find_spec("ai_edge_litert"):
        cases += [("tflite", q) for q in ("none", "float16", "dynamic", "int8")]
    return cases


def _data(n: int, size: int, seed: int = 0):
    """``n`` kermany224 images (pneumonia vs normal), patient-level train / held-out split."""
    from cxr_tf.datasets import load_dataset, patient_split

    root = os.path.join(os.environ.get("CXR_DATA_DIR", ""), "kermany224")
    if os.path.isdir(root):
        ds = load_dataset(root, "kermany", classes="pneumonia")
        source = "kermany224"
    else:  # CI without the data: synthetic JPEGs through the same loader
        from benchmarks._common import kermany_folder

        folder, source = kermany_folder(tempfile.mkdtemp(), n, seed)
        ds = load_dataset(folder, "kermany", classes="pneumonia")
    ds = ds.subset(np.sort(np.random.default_rng(seed).choice(len(ds), min(n, len(ds)), replace=False)))
    split = patient_split(ds, (0.6, 0.1, 0.3), seed=seed)
    return ds.subset(split == "train"), ds.subset(split == "test"), source


def run(args) -> list[Row]:
    import keras
    import tensorflow as tf

    from cxr_tf.data import image_dataset
    from cxr_tf.export import export_model, load_exported, load_runner
    from cxr_tf.models import build_model

    if args.tiny:
        backbone, size, n, epochs, big, r1, rb, ncal = "tiny_cnn", 32, 48, 1, 8, 2, 1, 8
    else:
        backbone, size, n, epochs, big, r1, rb, ncal = (args.backbone, args.image_size, args.images, args.epochs,
                                                        32, args.repeats_b1, args.repeats_b32, args.calibration)
    keras.utils.set_random_seed(0)
    train, held, source = _data(n, size)
    model = build_model(backbone, num_classes=2, image_size=size, head="gap", freeze_until=0,
                        class_names=train.class_names, bn_momentum=0.9)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")
    xy = list(image_dataset(train, size).batch(len(train)))[0]
    model.fit(np.asarray(xy[0]), np.asarray(xy[1]), batch_size=32, epochs=epochs, verbose=0)
    x = np.concatenate([np.asarray(b) for b, _ in image_dataset(held, size).batch(64)])
    params = {"backbone": backbone, "image_size": size, "train": len(train), "heldout": len(held),
              "epochs": epochs, "data": source, "threads": cores_used(),
              "load1_at_start": round(os.getloadavg()[0], 1)}  # the machine is shared: say how busy
    print(f"  trained {backbone} on {len(train)} images; {len(held)} held-out", flush=True)

    rows: list[Row] = []
    figs: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, q in _cases():
            res = export_model(model, fmt, quantize=q, out=Path(tmp) / fmt, name="bench", train_data=train,
                               heldout_data=held, force=True, n_calibration=ncal)
            if fmt == "savedmodel":
                fn = load_exported(res.path).signatures["predict_images"]
                call = lambda b, fn=fn: fn(images=tf.constant(b))  # noqa: E731
                size_b = sum(p.stat().st_size for p in res.path.rglob("*") if p.is_file())
            else:
                call = load_runner(res.path)
                size_b = res.path.stat().st_size
            case = f"{fmt} {q}"
            p = {**params, "format": fmt, "quantize": q}
            t1 = measure(lambda: call(x[:1]), repeats=r1, warmup=2)
            tb = measure(lambda: call(x[:big]), repeats=rb, warmup=1)
            ho = res.metadata["heldout"]
            f = figs[case] = {"lat": t1.median, "thr": big / tb.median, "size": size_b,
                              "acc": ho["export"]["accuracy"], "auc": ho["export"]["auc"]}
            rows += [
                Row(f"{case}, batch 1", "latency", t1.median * 1e3, "ms", repeats=t1.repeats, params=p),
                Row(f"{case}, batch {big}", "images_per_s", f["thr"], "img/s", repeats=tb.repeats,
                    params={**p, "batch": big}),
                Row(f"{case} file", "size", size_b / 2**20, "MiB", params=p),
                Row(f"{case} held-out", "accuracy", f["acc"], "", params=p),
            ]
            if f["auc"] is not None:  # None when the held-out sample lacks a class (tiny mode)
                rows.append(Row(f"{case} held-out", "auc", f["auc"], "", params=p))
            rows += [
                Row(f"{case} vs Keras on {res.metadata['verification']['images']} images", "max_abs_diff",
                    res.metadata["verification"]["max_abs_diff_vs_keras"], "", params=p),
            ]
            print(f"  {case}: {t1.median * 1e3:.2f} ms, {f['thr']:.0f} img/s, {size_b / 2**20:.2f} MiB, "
                  f"acc {f['acc']:.4f}, auc {f['auc']}", flush=True)
    ref = figs["savedmodel none"]
    for case, f in figs.items():
        if case == "savedmodel none":
            continue
        rows += [
            Row(f"{case} / savedmodel: latency batch 1", "ratio", f["lat"] / ref["lat"], "x"),
            Row(f"{case} / savedmodel: throughput batch {big}", "ratio", f["thr"] / ref["thr"], "x"),
            Row(f"{case} / savedmodel: size", "ratio", f["size"] / ref["size"], "x"),
            Row(f"{case} - savedmodel: accuracy", "delta", f["acc"] - ref["acc"], ""),
        ]
        if f["auc"] is not None and ref["auc"] is not None:
            rows.append(Row(f"{case} - savedmodel: AUC", "delta", f["auc"] - ref["auc"], ""))
    return rows


def _options(p):
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--images", type=int, default=900, help="kermany224 images drawn (60%% train, 30%% held-out)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--calibration", type=int, default=100, help="training images calibrating int8")
    p.add_argument("--repeats-b1", type=int, default=30)
    p.add_argument("--repeats-b32", type=int, default=5)


if __name__ == "__main__":
    main(NAME, run, __doc__, configure=_options)
