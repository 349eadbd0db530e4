"""Models Genesis corruption pipeline vs the UNet+CBAM restorer's training rate, one run.

    python -m benchmarks.mg_transforms            # 64 px, batch 16, depth 3, width 16
    python -m benchmarks.mg_transforms --tiny     # 32 px, batch 8, depth 2, width 8 (a quick check)

Both rates are measured in the same process on the same real kermany224 images (generated
ones when ``CXR_DATA_DIR`` is unset): the tf.data pipeline
(``cxr_tf.ssl.make_pair_dataset``: all four corruptions, vectorised over the batch) is
iterated alone, then the restorer trains (``train_on_batch``, 1 - SSIM) on pre-made
pairs, so neither measurement includes the other. Medians over timed batches after
warm-up. The pipeline keeps up when corrupted images/s >= training images/s (target:
ratio >= 1). Prints a table and appends rows to
``benchmarks/results/mg_transforms-<cpu model>-tf<version>.csv``.
"""
from __future__ import annotations

import statistics
import time

from benchmarks._common import Row, main

NAME = "mg_transforms"


def run(args) -> list[Row]:
    import keras
    import numpy as np

    import tempfile

    from benchmarks._common import kermany_folder
    from cxr_tf.data import image_dataset
    from cxr_tf.datasets import load_kermany
    from cxr_tf.models.unet_cbam import UNetCBAM
    from cxr_tf.ssl import GenesisConfig, make_pair_dataset
    from cxr_tf.ssl.losses import RestorationLoss

    size = args.image_size or (32 if args.tiny else 64)
    batch = args.batch_size or (8 if args.tiny else 16)
    depth = args.depth or (2 if args.tiny else 3)
    width = args.width or (8 if args.tiny else 16)
    steps = args.steps or (8 if args.tiny else 20)
    keras.utils.set_random_seed(0)
    tmp = tempfile.TemporaryDirectory()
    # real kermany224 JPEGs when CXR_DATA_DIR has them (else generated ones), decoded once
    folder, data = kermany_folder(tmp.name, max(4 * batch, 64))
    ds = load_kermany(folder, classes="3class")
    imgs = image_dataset(ds, size).map(lambda x, y: x).cache()
    for _ in imgs:  # decode once: only the corruption is timed
        pass
    pairs = make_pair_dataset(imgs, batch, GenesisConfig(), seed=0, shuffle=len(ds), prefetch=0)
    it = iter(pairs)
    for _ in range(args.warmup):
        next(it)
    t_tr = []
    for _ in range(steps):
        t = time.perf_counter()
        next(it)
        t_tr.append(time.perf_counter() - t)

    model = UNetCBAM(size, 1, depth, width, use_cbam=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=RestorationLoss("ssim"))
    xb, yb = (np.asarray(v) for v in next(it))
    for _ in range(args.warmup):
        model.train_on_batch(xb, yb)
    t_fit = []
    for _ in range(steps):
        t = time.perf_counter()
        model.train_on_batch(xb, yb)
        t_fit.append(time.perf_counter() - t)
    med_tr, med_fit = statistics.median(t_tr), statistics.median(t_fit)
    params = {"image_size": size, "batch": batch, "depth": depth, "width": width, "params": model.count_params(),
              "data": data}
    tmp.cleanup()
    return [
        Row("Models Genesis corruption (tf.data, 4 transforms)", "images_per_s", batch / med_tr, "img/s",
            repeats=steps, params=params),
        Row("UNet+CBAM restorer training (1 - SSIM)", "images_per_s", batch / med_fit, "img/s", repeats=steps,
            params=params),
        Row("corruption / restorer training", "ratio", med_fit / med_tr, "x", target=">=1", params=params),
    ]


def _options(p):
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=None, help="timed batches for each side")


if __name__ == "__main__":
    main(NAME, run, __doc__, configure=_options)
