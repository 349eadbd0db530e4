"""Head-only training on cached trunk features vs through the frozen trunk (SPEC S3, seed 003).

Seed 003 (Deep-COVID) fine-tunes only the last layer of an ImageNet ResNet50 for 100
epochs at 224 px on 2,420 training images (420 COVID after x5 offline augmentation +
2,000 non-COVID), batch 20. With the trunk frozen, every epoch recomputes the same
trunk features; :mod:`cxr_tf.training.features` computes them once.

Measured in one process on a small real set (``covid19_radiography``, 224 px PNG):

* live: ``CXRClassifier(resnet50, freeze_until=-1, head="gap")`` ``fit`` through the
  frozen trunk for ``--epochs`` epochs (wall time, and the median epoch after the first);
* cached: :func:`extract_features` once (wall time, and a second steady-state pass) +
  :func:`train_head_on_features` for the same epochs (wall, median epoch after the first);

and the seed-003 setting: the head trained for real on ``N = 2,420`` feature rows
(the extracted features tiled) for ``E = 100`` epochs, the extraction and the live path
projected from their steady-state per-image costs:
``live = trace + E * t_epoch_live * N`` and ``cached = trace + t_extract * N + t_head(N, E)``
(``trace``: the first epoch's / first extraction's extra time over the steady state).

Target: cached at least 30x faster for the seed-003 setting.

Run: ``python -m benchmarks.cached_features [--tiny]``.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

from benchmarks._common import Row, kermany_folder, main

NAME = "cached_features"
SEED003_IMAGES = 2420
SEED003_EPOCHS = 100


def small_dataset(n: int, tmp: str, seed: int = 0):
    """``n`` real COVID/Normal images when ``$CXR_DATA_DIR`` has them, else synthetic files."""
    import numpy as np

    from cxr_tf.datasets import load_folder, load_kermany

    root = Path(os.environ.get("CXR_DATA_DIR", "")) / "covid19_radiography"
    if os.environ.get("CXR_DATA_DIR") and root.is_dir():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no patient ids": irrelevant to timing
            ds = load_folder(root, class_names=["COVID", "Normal"])
        idx = np.random.default_rng(seed).choice(len(ds), size=min(n, len(ds)), replace=False)
        return ds.subset(np.sort(idx)), f"covid19_radiography ({len(idx)} real PNGs, 224 px)"
    folder, data = kermany_folder(tmp, n, seed)
    return load_kermany(folder, classes="pneumonia"), data


class EpochTimer:
    """A Keras callback recording each epoch's wall time."""

    def __new__(cls):
        import keras

        class _Timer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.times: list[float] = []

            def on_epoch_begin(self, epoch, logs=None):
                self._t0 = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.times.append(time.perf_counter() - self._t0)

        return _Timer()


def _steady(times: list[float]) -> float:
    """Median epoch time after the first (which traces)."""
    return statistics.median(times[1:] if len(times) > 1 else times)


def run(args) -> list[Row]:
    import keras

    from cxr_tf.data import build_pipeline
    from cxr_tf.models import CXRClassifier
    from cxr_tf.training.features import extract_features, feature_model, train_head_on_features

    import numpy as np

    if args.tiny:
        backbone, size, n, batch, epochs = "tiny_cnn", 32, 16, 8, 3
        target_images, target_epochs = 64, 3
    else:
        backbone, size, n, batch, epochs = "resnet50", 224, args.images, args.batch, args.epochs
        target_images, target_epochs = SEED003_IMAGES, SEED003_EPOCHS
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        ds, data = small_dataset(n, tmp)
        n = len(ds) - len(ds) % batch  # whole batches: both paths see the same images
        ds = ds.subset(range(n))
        params = {"backbone": backbone, "image_size": size, "images": n, "batch": batch, "epochs": epochs,
                  "data": data}

        def make_model():
            keras.utils.set_random_seed(0)
            return CXRClassifier(backbone, num_classes=ds.num_classes, image_size=size, head="gap",
                                 freeze_until=-1, class_names=ds.class_names)

        # ---- live: through the frozen trunk (decoded images cached in memory, as a user would)
        model = make_model()
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="categorical_crossentropy", metrics=["accuracy"])
        pipe = build_pipeline(ds, size, batch, training=True, policy=None, cache=True, seed=0)
        timer = EpochTimer()
        t0 = time.perf_counter()
        model.fit(pipe.dataset, steps_per_epoch=pipe.steps, epochs=epochs, callbacks=[timer], verbose=0)
        live_wall = time.perf_counter() - t0
        live_epoch = _steady(timer.times)
        timer_first = timer.times[0]
        print(f"  live: {live_wall:.1f} s for {epochs} epochs, {live_epoch:.2f} s/epoch", flush=True)
        del model
        keras.backend.clear_session()

        # ---- cached: extract once, train the head on arrays
        model = make_model()
        eval_pipe = build_pipeline(ds, size, batch, training=False)
        t0 = time.perf_counter()
        feats, labels = extract_features(model, eval_pipe.dataset)
        extract_first = time.perf_counter() - t0
        # steady state: a second pass through one already-traced feature model
        fm = feature_model(model)
        for x, _ in eval_pipe.dataset.take(1):
            fm.predict_on_batch(x)
        t0 = time.perf_counter()
        for x, _ in eval_pipe.dataset:
            fm.predict_on_batch(x)
        extract_steady = time.perf_counter() - t0
        timer = EpochTimer()
        t0 = time.perf_counter()
        train_head_on_features(model, feats, labels, epochs=epochs, batch_size=batch, callbacks=[timer])
        head_wall = time.perf_counter() - t0
        head_epoch = _steady(timer.times)
        cached_wall = extract_first + head_wall
        print(f"  cached: extract {extract_first:.1f} s (steady {extract_steady:.1f} s), head {head_wall:.2f} s "
              f"({head_epoch * 1e3:.1f} ms/epoch)", flush=True)

        # ---- the head at the seed-003 size, truly: the extracted features tiled to
        # SEED003_IMAGES rows (the cost of a Dense layer does not depend on the values)
        reps = -(-target_images // len(feats))
        big_x = np.tile(feats, (reps, 1))[:target_images]
        big_y = np.tile(labels, (reps, 1))[:target_images]
        t0 = time.perf_counter()
        train_head_on_features(model, big_x, big_y, epochs=target_epochs, batch_size=batch)
        head_full = time.perf_counter() - t0
        print(f"  head on {target_images} rows x {target_epochs} epochs: {head_full:.1f} s", flush=True)

    per_img_live, per_img_extract = live_epoch / n, extract_steady / n
    proj = {"images": target_images, "epochs": target_epochs, "backbone": backbone, "image_size": size,
            "batch": batch}
    # one-time costs (tracing) once, then the steady per-image costs at the target size
    live_total = max(0.0, timer_first - live_epoch) + target_epochs * per_img_live * target_images
    cached_total = max(0.0, extract_first - extract_steady) + per_img_extract * target_images + head_full
    tag = f"seed-003 ({target_images} img x {target_epochs} ep)"
    rows += [
        Row("live: epoch through frozen trunk", "seconds_per_image", per_img_live, "s", repeats=max(1, epochs - 1),
            params=params),
        Row("cached: one-time feature extraction", "seconds_per_image", per_img_extract, "s", repeats=1,
            params=params),
        Row("cached: head epoch on features (small set)", "seconds_per_image", head_epoch / n, "s",
            repeats=max(1, epochs - 1), params=params),
        Row(f"true run, {epochs} epochs: live (fit)", "wall_time", live_wall, "s", params=params),
        Row(f"true run, {epochs} epochs: cached (extract + head)", "wall_time", cached_wall, "s", params=params),
        Row(f"true run, {epochs} epochs: live / cached", "ratio", live_wall / cached_wall, "x", params=params),
        Row(f"{tag}: live, projected (epoch cost x epochs)", "wall_time", live_total, "s", params=proj),
        Row(f"{tag}: cached head training, run in full", "wall_time", head_full, "s", params=proj),
        Row(f"{tag}: cached total (projected extraction + head run)", "wall_time", cached_total, "s", params=proj),
        Row(f"{tag}: live / cached", "ratio", live_total / cached_total, "x", target=">=30",
            params=proj),
    ]
    return rows


def _options(p):
    p.add_argument("--images", type=int, default=80, help="real images in the small set")
    p.add_argument("--batch", type=int, default=20, help="seed 003's code uses batch 20")
    p.add_argument("--epochs", type=int, default=6, help="epochs of the true (reduced) runs")


if __name__ == "__main__":
    main(NAME, run, __doc__, configure=_options)
