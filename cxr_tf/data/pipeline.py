"""tf.data pipelines from a :class:`~cxr_tf.datasets.CXRDataset`.

decode -> per-image [0, 1] scaling -> aspect-preserving resize with padding ->
(cache) -> shuffle -> (class-balanced oversampling) -> batch -> augment -> prefetch.

Everything after the file list is TensorFlow ops (no per-element Python). Files TF
cannot decode (DICOM) are decoded once by :mod:`cxr_tf.io` outside the graph and
cached as 16-bit PNG (:func:`prepare_items`). Training batches drop the remainder so
shapes are static under distribution strategies (big_vision's input_pipeline does
the same).
"""
from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import tensorflow as tf

from cxr_tf.data.augment import AugmentPolicy, apply_policy_with_labels, get_policy
from cxr_tf.data.preprocess import CHANNELS, prepare_image, resize_with_pad, scale_per_image
from cxr_tf.datasets.contract import CXRDataset

AUTOTUNE = tf.data.AUTOTUNE


def default_cache_dir() -> str:
    """Where decoded non-graph files are cached unless a command says otherwise."""
    return os.path.join(os.path.expanduser("~"), ".cache", "cxr_tf", "decoded")


def prepare_items(
    ds: CXRDataset, cache_dir: str | os.PathLike | None = None, on_error: str = "raise", validate: bool = True
) -> tuple[CXRDataset, list[tuple[str, str]]]:
    """Prove every file decodes as the graph will, and cache what it cannot decode as it is.

    PNG/JPEG files are checked with the graph's own decoder and kept; every other file
    (DICOM, TIFF, NPY, BMP, GIF, CMYK JPEG, ...) is decoded once and cached as a 16-bit
    PNG that the graph reads instead (:mod:`cxr_tf.io.graph`), so no file reaches
    ``tf.io.decode_image`` unproved.

    Args:
        ds: a path-based dataset (in-memory datasets are returned unchanged).
        cache_dir: where converted files are cached as 16-bit PNG
            (default :func:`default_cache_dir`).
        on_error: ``"raise"`` (the first bad file raises the project's error naming
            it) or ``"skip"`` (bad files are dropped and listed with their cause).
        validate: ``False`` trusts PNG/JPEG files unchecked (only conversions run).
    """
    if ds.in_memory:
        _check_finite(ds)
        return ds, []
    from cxr_tf.io import GRAPH_FORMATS, prepare_graph_inputs, sniff_format, to_png_cache

    paths = [str(p) for p in ds.items]
    cache_dir = os.fspath(cache_dir or default_cache_dir())
    # Entries the loader already dropped (broken links, outside-root links, bad names)
    # head the skip list, so one list holds every dropped entry.
    loader_skipped = list(getattr(ds, "skipped", None) or [])
    skipped: list[tuple[str, str]] = []
    if validate:
        ok, graph, skipped = prepare_graph_inputs(paths, cache_dir=cache_dir, on_error=on_error)
        okset = set(ok)
        keep = np.array([p in okset for p in paths], dtype=bool)
        ds = ds.subset(keep)
        paths = [str(p) for p in ds.items]
    else:
        graph = [p if sniff_format(p) in GRAPH_FORMATS else to_png_cache(p, cache_dir) for p in paths]
    if graph != paths:
        meta = ds.meta.copy()
        meta["item"] = paths  # reports keep naming the original file
        ds = CXRDataset(np.asarray(graph, dtype=object), ds.labels, ds.class_names, meta, ds.name, ds.multilabel)
    if getattr(ds, "skipped", None):
        ds.skipped = []  # now in the returned list
    return ds, loader_skipped + skipped


def _check_finite(ds: CXRDataset) -> None:
    from cxr_tf.errors import CXRDatasetError

    x = np.asarray(ds.items)
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(1))
        raise CXRDatasetError(None, f"{ds.name}: images {bad[:5].tolist()} contain NaN or inf")


def _array_to_image(x: tf.Tensor, image_size: int) -> tf.Tensor:
    x = tf.cast(x, tf.float32)
    if x.shape.rank == 2:
        x = x[..., None]
    if x.shape[-1] != CHANNELS:
        x = tf.reduce_mean(x, -1, keepdims=True)
    img = resize_with_pad(scale_per_image(x), image_size)
    img.set_shape([image_size, image_size, CHANNELS])
    return img


@dataclasses.dataclass
class Pipeline:
    """A built pipeline: the dataset and how many steps make one epoch."""

    dataset: tf.data.Dataset
    steps: int
    num_examples: int


def image_dataset(ds: CXRDataset, image_size: int) -> tf.data.Dataset:
    """Unbatched ``(image, label)`` pairs, decoded and preprocessed, in item order."""
    labels = ds.labels.astype(np.float32)
    if ds.in_memory:
        d = tf.data.Dataset.from_tensor_slices((np.asarray(ds.items), labels))
        return d.map(lambda x, y: (_array_to_image(x, image_size), y), num_parallel_calls=AUTOTUNE)
    # Bytes, not str: a file name that is not valid UTF-8 (surrogate-escaped in Python)
    # cannot become a TF string tensor, its raw bytes can.
    paths = np.asarray([os.fsencode(str(p)) for p in ds.items], dtype=object)
    d = tf.data.Dataset.from_tensor_slices((paths, labels))
    return d.map(lambda p, y: (prepare_image(tf.io.read_file(p), image_size), y), num_parallel_calls=AUTOTUNE)


def as_arrays(ds: CXRDataset, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Decoded, preprocessed images ``(N, S, S, 1)`` and one-hot labels, in item order."""
    xs, ys = [], []
    for x, y in image_dataset(ds, image_size).batch(256):
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def _cache_fits(ds: CXRDataset, image_size: int, limit_bytes: float) -> bool:
    return len(ds) * image_size * image_size * CHANNELS * 4 <= limit_bytes


def build_pipeline(
    ds: CXRDataset,
    image_size: int,
    batch_size: int,
    *,
    training: bool,
    policy: str | AugmentPolicy | None = None,
    balance: str = "none",
    seed: int = 0,
    cache: bool | str = "auto",
    cache_limit_gb: float = 4.0,
    drop_remainder: bool | None = None,
    epoch_size: int | None = None,
) -> Pipeline:
    """The tf.data pipeline for training or evaluation.

    Args:
        ds: the dataset (paths already checked by :func:`prepare_items`).
        image_size: output side in pixels.
        batch_size: global batch size.
        training: shuffle, augment, drop the remainder, repeat.
        policy: augmentation policy name or object (training only).
        balance: ``"none"`` or ``"oversample"`` (every class drawn with equal
            probability, SPEC S4 cases 4-5; an epoch stays ``len(ds)`` images unless
            ``epoch_size`` says otherwise).
        seed: drives shuffling and augmentation (stateless), for repeatable runs.
        cache: keep decoded images in memory (``"auto"``: if under ``cache_limit_gb``).
        drop_remainder: default ``training``.
        epoch_size: images per training epoch (default ``len(ds)``).
    """
    policy = get_policy(policy if training else None)
    drop = training if drop_remainder is None else drop_remainder
    do_cache = _cache_fits(ds, image_size, cache_limit_gb * 2**30) if cache == "auto" else bool(cache)
    n = len(ds)
    if not training:
        d = image_dataset(ds, image_size)
        d = d.batch(batch_size, drop_remainder=drop).prefetch(2)
        steps = n // batch_size if drop else math.ceil(n / batch_size)
        return Pipeline(d, steps, n)

    if balance == "oversample" and not ds.multilabel:
        cls = ds.class_index()
        parts = []
        for c in range(ds.num_classes):
            idx = np.flatnonzero(cls == c)
            if len(idx) == 0:
                continue
            d = image_dataset(ds.subset(idx), image_size)
            if do_cache:
                d = d.cache()
            parts.append(d.shuffle(len(idx), seed=seed + c, reshuffle_each_iteration=True).repeat())
        d = tf.data.Dataset.sample_from_datasets(parts, weights=[1.0 / len(parts)] * len(parts), seed=seed)
    elif balance in ("none", "oversample"):
        d = image_dataset(ds, image_size)
        if do_cache:
            d = d.cache()
        # shuffle before repeat: every epoch is a full permutation
        d = d.shuffle(n, seed=seed, reshuffle_each_iteration=True).repeat()
    else:
        raise ValueError(f"balance must be 'none' or 'oversample'; got {balance!r}")

    per_epoch = epoch_size or n
    steps = max(1, per_epoch // batch_size)
    d = d.batch(batch_size, drop_remainder=True)
    if not policy.identity:
        seeds = tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True)
        d = tf.data.Dataset.zip((d, seeds)).map(
            lambda xy, s: apply_policy_with_labels(xy[0], xy[1], policy, s), num_parallel_calls=AUTOTUNE
        )
    d = d.prefetch(2)
    return Pipeline(d, steps, per_epoch)


def class_weights(ds: CXRDataset) -> dict[int, float]:
    """Inverse-frequency class weights (``n / (C * n_c)``), sklearn's "balanced"."""
    counts = np.nan_to_num(ds.labels).sum(0)
    n, c = counts.sum(), len(counts)
    return {i: float(n / (c * max(k, 1))) for i, k in enumerate(counts)}
