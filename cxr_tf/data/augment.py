"""Augmentation policies as pure, batched TensorFlow ops.

The geometric part of a policy (rotation, shifts, shear, crop-and-pad, flips) is
composed into ONE projective matrix per image and applied with a single
``ImageProjectiveTransformV3`` call per batch. Measured on kermany224 JPEGs at 224 px
(FACTS.md) this runs about 3x faster than stacking Keras ``RandomRotation``,
``RandomTranslation``, ... layers, each of which resamples the image again (and
blurs it again). Photometric jitter is applied after, in the same map.

All randomness of the geometric and photometric parts is stateless and driven by a
per-batch seed, so one seed gives identical augmented batches on every run.

CXR-sensible extras come from Keras 3's own layers where they do the job (no
albumentations needed):

* ``clahe``: probability of applying CLAHE
  (``keras.layers.ContrastLimitedAdaptiveHistogramEqualization``, clip limit 2);
* ``elastic``: a small elastic deformation, :func:`random_elastic` (stateless TF ops):
  the std of a smooth random displacement field as a fraction of the image side (small:
  0.01, about 2 px at 224 px). Not ``keras.layers.RandomElasticTransform``: in Keras
  3.15 it draws dx and dy from the same seed (every pixel moves along the diagonal), a
  single-float ``factor`` applies it with probability ``U(0, factor)`` (about half the
  images at 1.0), and below ``scale`` ~0.09 at 224 px (~0.6 at 32 px) its smoothing
  kernel is one pixel wide, so it jitters pixels instead of deforming the image;
* ``mixup`` / ``cutmix``: ``keras.layers.MixUp`` alpha / ``keras.layers.CutMix``
  factor, which mix images AND labels across the batch (use
  :func:`apply_policy_with_labels`).

Policies compose by name: ``get_policy("moderate+clahe+mixup")`` is the moderate
policy with the ``clahe`` and ``mixup`` extras (:data:`EXTRAS`). The Keras layers
draw from their own seeded generators (``keras.utils.set_random_seed``).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import tensorflow as tf

from cxr_tf.errors import CXRConfigError


@dataclasses.dataclass(frozen=True)
class AugmentPolicy:
    """One augmentation policy. Ranges are symmetric: a value ``v`` samples ``U(-v, v)``.

    Attributes:
        rotation_deg: rotation range in degrees.
        shift_x: horizontal shift as a fraction of the width.
        shift_y: vertical shift as a fraction of the height.
        shear_deg: shear angle range in degrees (Keras ImageDataGenerator convention).
        crop_pad: imgaug ``CropAndPad(percent=(-v, v))``: each side independently
            cropped (positive) or padded (negative) by up to ``v`` of the side, then
            resized back to the original size.
        flip_horizontal: random left-right flips (off for CXRs by default: the heart
            is on the left, and flipping teaches situs inversus).
        brightness: additive brightness range (images are in [0, 1]).
        contrast: multiplicative contrast range around the image mean (``1 +- v``).
        gamma: log-uniform gamma range ``exp(U(-v, v))``.
        clahe: probability per image of CLAHE (Keras layer, clip limit 2, 8x8 tiles).
        elastic: :func:`random_elastic` displacement std as a fraction of the side.
        mixup: ``keras.layers.MixUp`` alpha (images and labels mixed).
        cutmix: ``keras.layers.CutMix`` factor (a box pasted; labels mixed by area).
    """

    name: str = "custom"
    rotation_deg: float = 0.0
    shift_x: float = 0.0
    shift_y: float = 0.0
    shear_deg: float = 0.0
    crop_pad: float = 0.0
    flip_horizontal: bool = False
    brightness: float = 0.0
    contrast: float = 0.0
    gamma: float = 0.0
    clahe: float = 0.0
    elastic: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0

    @property
    def geometric(self) -> bool:
        return any((self.rotation_deg, self.shift_x, self.shift_y, self.shear_deg, self.crop_pad, self.flip_horizontal))

    @property
    def photometric(self) -> bool:
        return any((self.brightness, self.contrast, self.gamma))

    @property
    def keras_image_ops(self) -> bool:
        return any((self.clahe, self.elastic))

    @property
    def label_mixing(self) -> bool:
        return any((self.mixup, self.cutmix))

    @property
    def identity(self) -> bool:
        return not (self.geometric or self.photometric or self.keras_image_ops or self.label_mixing)

    def describe(self) -> dict:
        """The non-default parameters (for reports and configs)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != f.default or f.name == "name"}


#: Named policies. ``s2`` is the SPEC S2 / seed-002 policy (rotation 45, vertical
#: shift 0.2, horizontal shift 0.15, shear 16, crop-and-pad 0.25).
POLICIES: dict[str, AugmentPolicy] = {
    "none": AugmentPolicy(name="none"),
    "light": AugmentPolicy(name="light", rotation_deg=10, shift_x=0.05, shift_y=0.05, crop_pad=0.05),
    "moderate": AugmentPolicy(
        name="moderate", rotation_deg=20, shift_x=0.1, shift_y=0.1, shear_deg=8, crop_pad=0.1, brightness=0.05, contrast=0.1
    ),
    "s2": AugmentPolicy(name="s2", rotation_deg=45, shift_x=0.15, shift_y=0.2, shear_deg=16, crop_pad=0.25),
    "strong": AugmentPolicy(
        name="strong", rotation_deg=45, shift_x=0.15, shift_y=0.2, shear_deg=16, crop_pad=0.25,
        brightness=0.1, contrast=0.2, gamma=0.3,
    ),
}


#: Extras that compose onto a named policy with ``+`` (``"s2+clahe+mixup"``).
EXTRAS: dict[str, dict] = {
    "clahe": {"clahe": 0.5},  # CLAHE on half of the images
    "bc": {"brightness": 0.1, "contrast": 0.2},  # brightness / contrast jitter
    "gamma": {"gamma": 0.3},
    "elastic": {"elastic": 0.01},  # small elastic deformation: displacement std 1% of the side
    "mixup": {"mixup": 0.2},
    "cutmix": {"cutmix": 1.0},
    "flip": {"flip_horizontal": True},
}


def get_policy(policy: str | AugmentPolicy | None) -> AugmentPolicy:
    """A policy object from a name, ``name+extra+extra``, or an :class:`AugmentPolicy`.

    An unknown name raises :class:`cxr_tf.errors.CXRConfigError` (a ``ValueError``)
    listing the named policies and extras.
    """
    if policy is None or policy == "":
        return POLICIES["none"]
    if isinstance(policy, AugmentPolicy):
        return policy
    base, *extras = [p.strip() for p in str(policy).split("+")]
    if base not in POLICIES and base in EXTRAS:  # "clahe" alone = none + clahe
        base, extras = "none", [base, *extras]
    if base not in POLICIES:
        raise CXRConfigError(f"unknown augmentation policy {policy!r}; named policies: {sorted(POLICIES)}, "
                             f"extras (join with +): {sorted(EXTRAS)}")
    out = POLICIES[base]
    for e in extras:
        if e not in EXTRAS:
            raise CXRConfigError(f"unknown augmentation extra {e!r} in {policy!r}; extras: {sorted(EXTRAS)}")
        out = dataclasses.replace(out, **EXTRAS[e])
    if extras:
        out = dataclasses.replace(out, name=str(policy))
    return out


@functools.lru_cache(maxsize=None)
def _keras_layers(policy: AugmentPolicy) -> dict:
    """The Keras augmentation layers of a policy (built once per policy)."""
    import keras

    layers = {}
    if policy.clahe:
        layers["clahe"] = keras.layers.ContrastLimitedAdaptiveHistogramEqualization(
            value_range=(0, 1), clip_limit=2.0, tile_grid_size=(8, 8))
    layers.update(_mixing_layers(policy))
    return layers


def _mixing_layers(policy: AugmentPolicy, seed: int | None = None) -> dict:
    """New ``keras.layers.MixUp`` / ``CutMix`` layers of a policy (``seed``: their generator's)."""
    import keras

    layers = {}
    if policy.mixup:
        layers["mixup"] = keras.layers.MixUp(alpha=policy.mixup, seed=seed)
    if policy.cutmix:
        layers["cutmix"] = keras.layers.CutMix(factor=policy.cutmix, seed=seed)
    return layers


def _u(seed, shape, v):
    return tf.random.stateless_uniform(shape, seed=seed, minval=-v, maxval=v)


def _bilinear_sample(images: tf.Tensor, ys: tf.Tensor, xs: tf.Tensor) -> tf.Tensor:
    """``images[b, ys, xs]`` for float source coordinates ``(B, H, W)``; bilinear, zero outside."""
    shape = tf.shape(images)
    b, h, w, c = shape[0], shape[1], shape[2], shape[3]
    flat = tf.reshape(images, [-1, c])
    base = (tf.range(b) * h * w)[:, None, None]
    y0, x0 = tf.floor(ys), tf.floor(xs)
    wy, wx = (ys - y0)[..., None], (xs - x0)[..., None]
    y0, x0 = tf.cast(y0, tf.int32), tf.cast(x0, tf.int32)

    def tap(yi, xi):
        inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
        idx = base + tf.clip_by_value(yi, 0, h - 1) * w + tf.clip_by_value(xi, 0, w - 1)
        return tf.gather(flat, idx) * tf.cast(inside, images.dtype)[..., None]

    return ((1 - wy) * ((1 - wx) * tap(y0, x0) + wx * tap(y0, x0 + 1))
            + wy * ((1 - wx) * tap(y0 + 1, x0) + wx * tap(y0 + 1, x0 + 1)))


def random_elastic(images: tf.Tensor, magnitude: float, seed, grid: int = 9) -> tf.Tensor:
    """A small elastic deformation of a batch ``(B, H, W, C)`` (stateless, one seed ``(2,)``).

    Independent random x and y displacements on a ``grid`` x ``grid`` lattice of control
    points (std ``magnitude`` x the image side, in pixels), upsampled bicubically to a
    smooth per-pixel field; the image is resampled bilinearly at the displaced
    coordinates, clamped to the image (the edge pixels repeat: a displacement of a pixel
    or two should not draw a dark seam along the border).
    """
    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    side = tf.cast(tf.minimum(h, w), tf.float32)
    coarse = tf.random.stateless_normal(tf.stack([b, grid, grid, 2]), seed=tf.cast(seed, tf.int64))
    field = tf.image.resize(coarse, tf.stack([h, w]), method="bicubic") * (magnitude * side)
    yy, xx = tf.meshgrid(tf.range(h, dtype=tf.float32), tf.range(w, dtype=tf.float32), indexing="ij")
    ys = tf.clip_by_value(yy[None] + field[..., 1], 0.0, tf.cast(h - 1, tf.float32))
    xs = tf.clip_by_value(xx[None] + field[..., 0], 0.0, tf.cast(w - 1, tf.float32))
    out = _bilinear_sample(images, ys, xs)
    return tf.ensure_shape(out, images.shape)


def random_transform_matrices(policy: AugmentPolicy, batch: int | tf.Tensor, height, width, seed) -> tf.Tensor:
    """Per-image 3x3 matrices mapping OUTPUT pixel coords to INPUT coords, ``(B, 3, 3)``.

    The policy's ranges are symmetric, so sampling the inverse map directly has the
    same distribution as sampling the forward transform and inverting it.
    """
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    seeds = tf.random.experimental.stateless_split(seed, 8)
    shape = [batch]
    zeros = tf.zeros(shape)
    ones = tf.ones(shape)

    # crop-and-pad: output x spans input [l*w, w - r*w] after the crop/pad + resize
    cp = policy.crop_pad
    left, right, top, bottom = (_u(seeds[i], shape, cp) if cp else zeros for i in range(4))
    sx, sy = 1.0 - left - right, 1.0 - top - bottom
    crop = tf.stack([tf.stack([sx, zeros, left * w], -1), tf.stack([zeros, sy, top * h], -1),
                     tf.stack([zeros, zeros, ones], -1)], 1)

    theta = _u(seeds[4], shape, math.radians(policy.rotation_deg)) if policy.rotation_deg else zeros
    shear = _u(seeds[5], shape, math.radians(policy.shear_deg)) if policy.shear_deg else zeros
    shift = tf.random.stateless_uniform([batch, 2], seed=seeds[6], minval=-1.0, maxval=1.0)
    tx = shift[:, 0] * policy.shift_x * w
    ty = shift[:, 1] * policy.shift_y * h
    c, s = tf.cos(theta), tf.sin(theta)
    # rotation @ shear (Keras ImageDataGenerator's shear matrix [[1, -sin], [0, cos]])
    a00, a01 = c, -c * tf.sin(shear) - s * tf.cos(shear)
    a10, a11 = s, -s * tf.sin(shear) + c * tf.cos(shear)
    if policy.flip_horizontal:
        flip = tf.where(tf.random.stateless_uniform(shape, seed=seeds[7]) < 0.5, -1.0, 1.0)
        a00, a10 = a00 * flip, a10 * flip
    cx, cy = (w - 1) / 2, (h - 1) / 2
    # p_in = C + A (p - C) + t
    b0 = cx - a00 * cx - a01 * cy + tx
    b1 = cy - a10 * cx - a11 * cy + ty
    affine = tf.stack([tf.stack([a00, a01, b0], -1), tf.stack([a10, a11, b1], -1),
                       tf.stack([zeros, zeros, ones], -1)], 1)
    return tf.matmul(affine, crop)


def apply_policy(images: tf.Tensor, policy: AugmentPolicy | str, seed: tf.Tensor) -> tf.Tensor:
    """Augment a batch ``(B, H, W, C)`` of [0, 1] images with one stateless seed ``(2,)``."""
    policy = get_policy(policy)
    if policy.identity:
        return images
    seed = tf.cast(seed, tf.int64)
    geo_seed, photo_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    if policy.geometric:
        m = random_transform_matrices(policy, b, h, w, geo_seed)
        m = m / m[:, 2:3, 2:3]
        transforms = tf.reshape(m, [-1, 9])[:, :8]
        images = tf.raw_ops.ImageProjectiveTransformV3(
            images=images, transforms=transforms, output_shape=tf.stack([h, w]),
            fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT",
        )
    if policy.photometric:
        s = tf.random.experimental.stateless_split(photo_seed, 3)
        if policy.contrast:
            k = 1.0 + _u(s[0], [b, 1, 1, 1], policy.contrast)
            mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
            images = (images - mean) * k + mean
        if policy.brightness:
            images = images + _u(s[1], [b, 1, 1, 1], policy.brightness)
        images = tf.clip_by_value(images, 0.0, 1.0)
        if policy.gamma:
            images = tf.pow(images + 1e-6, tf.exp(_u(s[2], [b, 1, 1, 1], policy.gamma)))
        images = tf.clip_by_value(images, 0.0, 1.0)
    if policy.keras_image_ops:
        layers = _keras_layers(policy)
        if policy.elastic:
            images = random_elastic(images, policy.elastic, photo_seed + 11)
        if policy.clahe:
            # per image with probability `clahe` (stateless draw from this batch's seed)
            pick = tf.random.stateless_uniform([b, 1, 1, 1], seed=photo_seed + 7) < policy.clahe
            images = tf.where(pick, tf.cast(layers["clahe"](images), images.dtype), images)
        images = tf.clip_by_value(images, 0.0, 1.0)
    # A geometric-only policy needs no clip: bilinear weights are convex and the fill
    # is 0, so [0, 1] inputs stay in [0, 1] (the clip cost ~8% of the warp).
    return images


def apply_policy_with_labels(images: tf.Tensor, labels: tf.Tensor, policy: AugmentPolicy | str, seed: tf.Tensor,
                             mix_seed: int | None = None):
    """:func:`apply_policy`, then the label-mixing extras (MixUp, CutMix) on ``(images, labels)``.

    MixUp / CutMix are Keras layers with their own random generators (they take no
    per-call tensor seed): by default the policy's cached layers, which keep drawing
    (seeded by ``keras.utils.set_random_seed``); ``mix_seed`` (an int) uses new layers
    seeded with it instead, so one call is reproducible (:func:`augmentation_grid`).
    """
    policy = get_policy(policy)
    images = apply_policy(images, policy, seed)
    if policy.label_mixing:
        layers = _keras_layers(policy) if mix_seed is None else _mixing_layers(policy, int(mix_seed))
        labels = tf.cast(labels, tf.float32)
        for key in ("mixup", "cutmix"):
            if key in layers:
                out = layers[key]({"images": images, "labels": labels}, training=True)
                images, labels = out["images"], out["labels"]
    return images, labels


def _column_header(labels: list[str], tile: int) -> np.ndarray:
    """A uint8 strip, one ``tile`` wide cell per label, the label's text centred in it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h = max(14, tile // 6)
    fig = Figure(figsize=(tile * len(labels) / 100, h / 100), dpi=100, facecolor="black")
    FigureCanvasAgg(fig)
    # points = pixels * 72 / dpi; the longest label fits its cell
    size = min(0.7 * h, 1.6 * tile / max(len(s) for s in labels)) * 72 / 100
    for i, s in enumerate(labels):
        fig.text((i + 0.5) / len(labels), 0.5, s, ha="center", va="center", color="white", fontsize=size)
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return rgba[..., 0].copy()


def augmentation_grid(images: np.ndarray, policy: AugmentPolicy | str, path: str, n_aug: int = 5, seed: int = 0) -> str:
    """Write a PNG grid: each row one image, first column original, then ``n_aug`` draws.

    A header strip above the tiles labels the columns (``original``, ``draw 1`` ...);
    the tiles below it are the pixels themselves.

    The same ``seed`` writes the same grid. With MixUp / CutMix each draw shows what the
    policy did to the row's image in a batch with the other images (mixed with, or
    pasted from, one of them; with a single image, with itself).
    """
    images = np.asarray(images, np.float32)
    if images.ndim == 3:
        images = images[..., None]
    policy = get_policy(policy)
    rows = []
    for i, img in enumerate(images):
        if policy.label_mixing:
            # a batch of all the images, this one first; draw k keeps what became of it
            batch = np.roll(images, -i, axis=0)
            batch = tf.constant(batch if len(batch) > 1 else np.repeat(batch, 2, axis=0))
            onehot = tf.eye(int(batch.shape[0]))
            aug = np.stack([
                apply_policy_with_labels(batch, onehot, policy, tf.constant([seed, i * n_aug + k], tf.int64),
                                         mix_seed=seed * 1_000_003 + i * n_aug + k)[0].numpy()[0]
                for k in range(n_aug)])
        else:
            batch = tf.repeat(img[None], n_aug, axis=0)
            aug = apply_policy(batch, policy, tf.constant([seed, i], tf.int64)).numpy()
        rows.append(np.concatenate([img] + list(aug), axis=1))
    grid = (np.concatenate(rows, axis=0)[..., 0] * 255).round().astype(np.uint8)
    header = _column_header(["original"] + [f"draw {k + 1}" for k in range(n_aug)], images.shape[2])
    grid = np.concatenate([header[:, : grid.shape[1]], grid], axis=0)
    tf.io.write_file(path, tf.io.encode_png(grid[..., None]))
    return path
