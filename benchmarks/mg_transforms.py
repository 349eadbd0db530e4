"""Models Genesis corruption pipeline vs the UNet+CBAM restorer's training rate, one run.

    python -m benchmarks.mg_transforms            # 64 px, batch 16, depth 3, width 16
    python -m benchmarks.mg_transforms --tiny     # 32 px, batch 8, depth 2, width 8 (a quick check)

Both rates are measured in the same process on the same images: the tf.data pipeline
(``cxr_tf.ssl.make_pair_dataset``: all four corruptions, vectorised over the batch) is
iterated alone, then the restorer trains (``train_on_batch``, 1 - SSIM) on pre-made
pairs, so neither measurement includes the other. Medians over timed batches after
warm-up. The pipeline keeps up when corrupted images/s >= training images/s. Prints a table
and appends a row to ``benchmarks/results/mg_transforms-<cpu model>-tf<version>.csv``.
Self-contained (no shared benchmark framework).
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", s).strip("-")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="small sizes for a quick check")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=None, help="timed batches for each side")
    p.add_argument("--out", default="benchmarks/results")
    a = p.parse_args(argv)
    size = a.image_size or (32 if a.tiny else 64)
    batch = a.batch_size or (8 if a.tiny else 16)
    depth = a.depth or (2 if a.tiny else 3)
    width = a.width or (8 if a.tiny else 16)
    steps = a.steps or (8 if a.tiny else 20)

    import keras
    import numpy as np
    import tensorflow as tf

    from cxr_tf.data import image_dataset
    from cxr_tf.datasets.synthetic import make_synthetic_cxr
    from cxr_tf.models.unet_cbam import UNetCBAM
    from cxr_tf.ssl import GenesisConfig, make_pair_dataset
    from cxr_tf.ssl.losses import RestorationLoss

    keras.utils.set_random_seed(0)
    ds = make_synthetic_cxr(n=max(4 * batch, 64), image_size=size, seed=0)
    imgs = image_dataset(ds, size).map(lambda x, y: x).cache()
    for _ in imgs:  # decode once: only the corruption is timed
        pass
    pairs = make_pair_dataset(imgs, batch, GenesisConfig(), seed=0, shuffle=len(ds), prefetch=0)
    it = iter(pairs)
    for _ in range(a.warmup):
        next(it)
    t_tr = []
    for _ in range(steps):
        t = time.perf_counter()
        x, y = next(it)
        t_tr.append(time.perf_counter() - t)

    model = UNetCBAM(size, 1, depth, width, use_cbam=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=RestorationLoss("ssim"))
    xb, yb = (np.asarray(v) for v in next(it))
    for _ in range(a.warmup):
        model.train_on_batch(xb, yb)
    t_fit = []
    for _ in range(steps):
        t = time.perf_counter()
        model.train_on_batch(xb, yb)
        t_fit.append(time.perf_counter() - t)

    med_tr, med_fit = statistics.median(t_tr), statistics.median(t_fit)
    row = {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu": cpu_model(), "cpus_allowed": len(os.sched_getaffinity(0)), "tensorflow": tf.__version__,
        "keras": keras.__version__, "image_size": size, "batch": batch, "depth": depth, "width": width,
        "params": model.count_params(), "timed_steps": steps,
        "transform_batches_per_s": round(1 / med_tr, 2), "transform_images_per_s": round(batch / med_tr, 1),
        "train_images_per_s": round(batch / med_fit, 1), "transform_over_train": round(med_fit / med_tr, 2),
    }
    w = max(len(k) for k in row)
    for k, v in row.items():
        print(f"{k:<{w}}  {v}")
    print("pipeline keeps up with training" if row["transform_over_train"] >= 1 else
          "pipeline is SLOWER than training")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"mg_transforms-{_slug(row['cpu'])}-tf{tf.__version__}.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(row))
        if new:
            wr.writeheader()
        wr.writerow(row)
    print(f"appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
