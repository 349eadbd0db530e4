"""Input pipeline throughput: cxr_tf's tf.data pipeline vs two common alternatives.

All on the same real ``kermany224`` JPEGs, 224 px, batch 32, the SPEC S2 policy
(rotation 45, shifts 0.15 / 0.2, shear 16, crop-and-pad 0.25), in one process:

* ``cxr_tf``: :func:`cxr_tf.data.build_pipeline` (decode -> per-image scaling ->
  resize -> shuffle -> batch -> ONE composed projective transform per batch), no cache;
* ``decode+resize``: the same pipeline with no augmentation (the ceiling);
* ``(a) keras``: ``keras.utils.image_dataset_from_directory`` + stacked Keras
  augmentation layers (RandomRotation, RandomTranslation, RandomShear, RandomZoom);
* ``(b) albumentations``: tf.data decode + ``A.Affine`` / ``A.CropAndPad`` per image in
  ``tf.numpy_function`` (the common pattern);
* what ResNet50 training (CXRClassifier, default ``freeze_until=144``) consumes at
  the same size and batch.

Targets: cxr_tf >= 1.2x (b), >= 2.5x (a), >= 10x ResNet50 training.

Run: ``python -m benchmarks.input_pipeline [--tiny]``.
"""
from __future__ import annotations

import math
import tempfile

from benchmarks._common import Row, build_classifier, kermany_folder, main, measure, train_images_per_s

NAME = "input_pipeline"


def keras_layers_dataset(folder, image_size: int, batch: int, seed: int = 0):
    """(a) ``image_dataset_from_directory`` + the S2 policy as stacked Keras layers."""
    import keras

    # keras' factors: rotation as a fraction of 2*pi, translation/zoom as fractions of
    # the side, shear as the fraction of the side a row moves (tan of the angle).
    aug = keras.Sequential([
        keras.layers.RandomRotation(45 / 360, fill_mode="constant", seed=seed),
        keras.layers.RandomTranslation(0.2, 0.15, fill_mode="constant", seed=seed),
        keras.layers.RandomShear(x_factor=math.tan(math.radians(16)), fill_mode="constant", seed=seed),
        keras.layers.RandomZoom((-0.25, 0.25), fill_mode="constant", seed=seed),
    ], name="s2_keras_layers")
    d = keras.utils.image_dataset_from_directory(
        str(folder), labels="inferred", label_mode="categorical", color_mode="grayscale",
        image_size=(image_size, image_size), batch_size=batch, shuffle=True, seed=seed, verbose=False)
    return d.map(lambda x, y: (aug(x / 255.0, training=True), y), num_parallel_calls=-1).repeat().prefetch(2)


def albumentations_dataset(ds, image_size: int, batch: int):
    """(b) tf.data decode + albumentations per image inside ``tf.numpy_function``."""
    try:
        import albumentations as A
    except ImportError as e:  # optional extra
        raise SystemExit("this benchmark needs albumentations: pip install 'cxr_tf[augment]'") from e
    import numpy as np
    import tensorflow as tf

    from cxr_tf.data.preprocess import prepare_image

    aug = A.Compose([
        A.Affine(rotate=(-45, 45), translate_percent={"x": (-0.15, 0.15), "y": (-0.2, 0.2)},
                 shear=(-16, 16), border_mode=0, fill=0, p=1.0),
        A.CropAndPad(percent=(-0.25, 0.25), p=1.0),
    ])

    def np_aug(img):
        return aug(image=img)["image"].astype(np.float32)

    def tf_aug(img):
        out = tf.numpy_function(np_aug, [img], tf.float32)
        out.set_shape([image_size, image_size, 1])
        return out

    paths = tf.constant([str(p) for p in ds.items])
    labels = tf.constant(ds.labels)
    d = tf.data.Dataset.from_tensor_slices((paths, labels)).shuffle(len(ds), seed=0).repeat()
    d = d.map(lambda p, y: (tf_aug(prepare_image(tf.io.read_file(p), image_size)), y), num_parallel_calls=-1)
    return d.batch(batch, drop_remainder=True).prefetch(2)


def images_per_s(dataset, batch: int, batches: int, repeats: int) -> tuple[float, object]:
    """Pull ``batches`` batches per timed repetition from one persistent iterator."""
    it = iter(dataset)

    def pull():
        for _ in range(batches):
            x, _ = next(it)
        assert x.shape[0] == batch, x.shape

    t = measure(pull, repeats=repeats, warmup=1)
    return batch * batches / t.median, t


def run(args) -> list[Row]:
    from cxr_tf.data import build_pipeline
    from cxr_tf.datasets import load_kermany

    tiny = args.tiny
    size, batch = (64, 8) if tiny else (224, 32)
    n_files, batches, repeats = (48, 2, 1) if tiny else (args.files, args.batches, args.repeats)
    backbone = "tiny_cnn" if tiny else "resnet50"
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder, data = kermany_folder(tmp, n_files)
        ds = load_kermany(folder, classes="3class")
        params = {"image_size": size, "batch": batch, "files": len(ds), "batches_per_repeat": batches,
                  "policy": "s2", "data": data}
        cases = {
            "cxr_tf build_pipeline s2": lambda: build_pipeline(ds, size, batch, training=True, policy="s2",
                                                               cache=False).dataset,
            "decode+resize only (cxr_tf, no augmentation)": lambda: build_pipeline(
                ds, size, batch, training=True, policy="none", cache=False).dataset,
            "(a) image_dataset_from_directory + Keras layers": lambda: keras_layers_dataset(folder, size, batch),
            "(b) albumentations in tf.numpy_function": lambda: albumentations_dataset(ds, size, batch),
        }
        rates = {}
        for case, make in cases.items():
            rate, t = images_per_s(make(), batch, batches, repeats)
            rates[case] = rate
            rows.append(Row(case, "images_per_s", rate, "img/s", repeats=t.repeats, params=params))
            print(f"  {case}: {rate:,.0f} img/s", flush=True)

    freeze = 144 if backbone == "resnet50" else 0
    model = build_classifier(backbone, size, freeze_until=freeze)
    train_rate, t = train_images_per_s(model, batch, size, steps=1, repeats=repeats if tiny else args.train_repeats)
    rows.append(Row(f"{backbone} training consumes (train_on_batch, freeze_until={freeze})", "images_per_s",
                    train_rate, "img/s", repeats=t.repeats,
                    params={"image_size": size, "batch": batch, "backbone": backbone}))
    ours = rates["cxr_tf build_pipeline s2"]
    rows += [
        Row("cxr_tf / (b) albumentations", "ratio", ours / rates["(b) albumentations in tf.numpy_function"], "x",
            target=">=1.2"),
        Row("cxr_tf / (a) Keras layers", "ratio", ours / rates["(a) image_dataset_from_directory + Keras layers"],
            "x", target=">=2.5"),
        Row(f"cxr_tf / {backbone} training", "ratio", ours / train_rate, "x", target=">=10"),
    ]
    return rows


def _options(p):
    p.add_argument("--files", type=int, default=640, help="real images used (full mode)")
    p.add_argument("--batches", type=int, default=10, help="batches per timed repetition")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions")
    p.add_argument("--train-repeats", type=int, default=3, help="timed ResNet50 train steps")


if __name__ == "__main__":
    main(NAME, run, __doc__, configure=_options)
