"""Augmentation policies as pure, batched TensorFlow ops.

The geometric part of a policy (rotation, shifts, shear, crop-and-pad, flips) is
composed into ONE projective matrix per image and applied with a single
``ImageProjectiveTransformV3`` call per batch. Measured on kermany224 JPEGs at 224 px
(FACTS.md) this runs about 3x faster than stacking Keras ``RandomRotation``,
``RandomTranslation``, ... layers, each of which resamples the image again (and
blurs it again). Photometric jitter is applied after, in the same map.

All randomness of the geometric and photometric parts is stateless and driven by a
per-batch seed, so one seed gives identical augmented batches on every run.

CXR-sensible extras come from Keras 3's own layers rather than hand-written code
(no albumentations needed: Keras has an equivalent for each):

* ``clahe``: probability of applying CLAHE
  (``keras.layers.ContrastLimitedAdaptiveHistogramEqualization``, clip limit 2);
* ``elastic``: ``keras.layers.RandomElasticTransform`` scale (small: 0.05-0.1);
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
    "elastic": {"elastic": 0.05},  # small elastic deformation
    "mixup": {"mixup": 0.2},
    "cutmix": {"cutmix": 1.0},
    "flip": {"flip_horizontal": True},
}


def get_policy(policy: str | AugmentPolicy | None) -> AugmentPolicy:
    """A policy object from a name, ``name+extra+extra``, or an :class:`AugmentPolicy`."""
    if policy is None or policy == "":
        return POLICIES["none"]
    if isinstance(policy, AugmentPolicy):
        return policy
    base, *extras = [p.strip() for p in str(policy).split("+")]
    if base not in POLICIES and base in EXTRAS:  # "clahe" alone = none + clahe
        base, extras = "none", [base, *extras]
    if base not in POLICIES:
        raise ValueError(f"unknown augmentation policy {policy!r}; named policies: {sorted(POLICIES)}, "
                         f"extras (join with +): {sorted(EXTRAS)}")
    out = POLICIES[base]
    for e in extras:
        if e not in EXTRAS:
            raise ValueError(f"unknown augmentation extra {e!r} in {policy!r}; extras: {sorted(EXTRAS)}")
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
    if policy.elastic:
        layers["elastic"] = keras.layers.RandomElasticTransform(
            factor=1.0, scale=policy.elastic, fill_mode="constant", value_range=(0, 1))
    if policy.mixup:
        layers["mixup"] = keras.layers.MixUp(alpha=policy.mixup)
    if policy.cutmix:
        layers["cutmix"] = keras.layers.CutMix(factor=policy.cutmix)
    return layers


def _u(seed, shape, v):
    return tf.random.stateless_uniform(shape, seed=seed, minval=-v, maxval=v)


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
            images = layers["elastic"](images, training=True)
        if policy.clahe:
            # per image with probability `clahe` (stateless draw from this batch's seed)
            pick = tf.random.stateless_uniform([b, 1, 1, 1], seed=photo_seed + 7) < policy.clahe
            images = tf.where(pick, tf.cast(layers["clahe"](images), images.dtype), images)
        images = tf.clip_by_value(images, 0.0, 1.0)
    # A geometric-only policy needs no clip: bilinear weights are convex and the fill
    # is 0, so [0, 1] inputs stay in [0, 1] (the clip cost ~8% of the warp).
    return images


def apply_policy_with_labels(images: tf.Tensor, labels: tf.Tensor, policy: AugmentPolicy | str, seed: tf.Tensor):
    """:func:`apply_policy`, then the label-mixing extras (MixUp, CutMix) on ``(images, labels)``."""
    policy = get_policy(policy)
    images = apply_policy(images, policy, seed)
    if policy.label_mixing:
        layers = _keras_layers(policy)
        labels = tf.cast(labels, tf.float32)
        for key in ("mixup", "cutmix"):
            if key in layers:
                out = layers[key]({"images": images, "labels": labels}, training=True)
                images, labels = out["images"], out["labels"]
    return images, labels


def augmentation_grid(images: np.ndarray, policy: AugmentPolicy | str, path: str, n_aug: int = 5, seed: int = 0) -> str:
    """Write a PNG grid: each row one image, first column original, then ``n_aug`` draws."""
    images = np.asarray(images, np.float32)
    if images.ndim == 3:
        images = images[..., None]
    policy = get_policy(policy)
    rows = []
    for i, img in enumerate(images):
        if policy.label_mixing:
            # MixUp/CutMix mix with the other images of the batch: column k mixes with row i+k
            batch = tf.constant(np.roll(images, -i, axis=0)[:n_aug] if len(images) >= n_aug
                                else np.resize(np.roll(images, -i, axis=0), (n_aug,) + img.shape))
            onehot = tf.eye(n_aug)
            aug = apply_policy_with_labels(batch, onehot, policy, tf.constant([seed, i], tf.int64))[0].numpy()
        else:
            batch = tf.repeat(img[None], n_aug, axis=0)
            aug = apply_policy(batch, policy, tf.constant([seed, i], tf.int64)).numpy()
        rows.append(np.concatenate([img] + list(aug), axis=1))
    grid = (np.concatenate(rows, axis=0)[..., 0] * 255).round().astype(np.uint8)
    tf.io.write_file(path, tf.io.encode_png(grid[..., None]))
    return path
