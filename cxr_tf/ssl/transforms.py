"""Models Genesis image corruptions, ported from 3D to 2D, vectorised over a batch.

Zhou et al., "Models Genesis" (MedIA 2021); the order and parameters follow the
official implementation (MrGiovanni/ModelsGenesis, ``utils.generate_pair`` and
``config.py``): per sample, in this order,

1. flip (input and target alike): up to 3 tries, each going on with probability
   ``flip_rate`` (0.4), each flipping one axis drawn from (channel, rows, cols);
   the official code draws from the 3 axes of a ``(1, H, W, D)`` sample, the first of
   which is the 1-long channel axis (a no-op), and we keep that draw;
2. local pixel shuffling (``local_rate`` 0.5): many windows of side ``1..dim/10``,
   each read from the un-shuffled image, its pixels permuted and written back
   (a later window overwrites an earlier one, as in the sequential original);
3. non-linear intensity transform (``nonlinear_rate`` 0.9): a cubic Bezier curve
   through (0,0), two uniform random control points and (1,1), applied by linear
   interpolation; half the time the curve is inverted (0 -> 1, 1 -> 0);
4. painting (``paint_rate`` 0.9): in-painting with probability ``inpaint_rate``
   (0.2; up to 5 boxes of side ``dim/6..dim/3`` filled with uniform noise, each
   further box with probability 0.95), otherwise out-painting (a uniform noise
   canvas keeping one window of side ``dim - randint(3 dim/7, 4 dim/7)`` plus up to
   4 more with probability 0.95 each).

Every function takes a batch ``(B, H, W, C)`` of images in ``[0, 1]`` and a stateless
seed (an int32/int64 tensor of shape ``[2]``) and draws all its random numbers with
``tf.random.stateless_*``: the same seed gives the same corruption, and the functions
run inside ``tf.data.Dataset.map`` on whole batches (no per-image Python). Keras'
random preprocessing layers do not cover these transforms (none shuffles pixels within
windows or applies a random Bezier intensity curve), so they are written here in TF ops.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf

from cxr_tf.errors import CXRConfigError

# Mean coverage of the official 3D shuffling: 10,000 windows of mean volume
# 3.5 x 3.5 x 2 (sides 1..dim/10 on a 64 x 64 x 32 cube) over 131,072 voxels ~= 1.87:
# each voxel lies in ~1.9 windows. ``local_blocks=0`` keeps that coverage in 2D.
OFFICIAL_SHUFFLE_COVERAGE = 10000 * 3.5 * 3.5 * 2.0 / (64 * 64 * 32)


@dataclasses.dataclass
class GenesisConfig:
    """Probabilities and parameters of the Models Genesis corruptions (official defaults).

    Attributes:
        flip_rate: probability of each of up to ``flip_max`` successive flips.
        flip_max: maximum number of flips (official 3).
        local_rate: probability of local pixel shuffling.
        local_blocks: windows per image; 0 = as many as give the official coverage.
        local_max_frac: window side at most ``dim * local_max_frac`` (official 1/10).
        nonlinear_rate: probability of the Bezier intensity transform.
        inverted_rate: probability that an applied intensity curve is inverted.
        bezier_points: samples along the curve used for interpolation (official 100,000;
            1,000 keeps the interpolation error below 1e-3 and is cheap).
        paint_rate: probability of in- or out-painting.
        inpaint_rate: probability of in-painting given painting (official 0.2).
        inpaint_boxes: maximum in-painting boxes (official 5).
        outpaint_extra: maximum extra kept windows in out-painting (official 4).
        box_continue: probability of each further box / window (official 0.95).
        margin: boxes keep this many pixels from the border (official 3).
    """

    flip_rate: float = 0.4
    flip_max: int = 3
    local_rate: float = 0.5
    local_blocks: int = 0
    local_max_frac: float = 0.1
    nonlinear_rate: float = 0.9
    inverted_rate: float = 0.5
    bezier_points: int = 1000
    paint_rate: float = 0.9
    inpaint_rate: float = 0.2
    inpaint_boxes: int = 5
    outpaint_extra: int = 4
    box_continue: float = 0.95
    margin: int = 3

    def validate(self) -> "GenesisConfig":
        for f in ("flip_rate", "local_rate", "nonlinear_rate", "inverted_rate", "paint_rate", "inpaint_rate",
                  "box_continue"):
            v = getattr(self, f)
            if not 0.0 <= v <= 1.0:
                raise CXRConfigError(f"GenesisConfig.{f} must be in [0, 1]; received {v}")
        for f in ("flip_max", "local_blocks", "inpaint_boxes", "outpaint_extra", "margin"):
            if getattr(self, f) < 0:
                raise CXRConfigError(f"GenesisConfig.{f} must be >= 0; received {getattr(self, f)}")
        if self.bezier_points < 2:
            raise CXRConfigError(f"GenesisConfig.bezier_points must be >= 2; received {self.bezier_points}")
        if not 0.0 < self.local_max_frac <= 1.0:
            raise CXRConfigError(f"GenesisConfig.local_max_frac must be in (0, 1]; received {self.local_max_frac}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- helpers
def _seeds(seed, n: int) -> list[tf.Tensor]:
    """``n`` independent stateless seeds from one."""
    s = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=n)
    return [s[i] for i in range(n)]


def _uniform(seed, shape, minval=0.0, maxval=1.0):
    return tf.random.stateless_uniform(shape, seed=seed, minval=minval, maxval=maxval)


def _randint(seed, shape, low, high):
    """Integers in ``[low, high]`` inclusive (python's ``random.randint``); ``low``/``high``
    may be tensors broadcastable to ``shape``."""
    u = _uniform(seed, shape)
    low = tf.cast(low, tf.float32)
    high = tf.cast(high, tf.float32)
    return tf.cast(tf.floor(low + u * (high - low + 1.0)), tf.int32)


def _chain_active(seed, batch, n: int, p: float) -> tf.Tensor:
    """``(B, n)`` bool: try ``j`` happens iff tries ``0..j`` all drew ``u < p``
    (the official ``while cnt > 0 and random.random() < p`` loops)."""
    if n == 0:
        return tf.zeros([batch, 0], tf.bool)
    u = _uniform(seed, [batch, n])
    return tf.cast(tf.math.cumprod(tf.cast(u < p, tf.float32), axis=1), tf.bool)


def _apply_prob(seed, batch, p: float) -> tf.Tensor:
    """``(B,)`` bool: which samples a transform of probability ``p`` applies to."""
    return _uniform(seed, [batch]) < p


def _select(mask_b, a, b):
    """Per-sample choice ``where(mask, a, b)`` for image batches."""
    return tf.where(tf.reshape(mask_b, [-1, 1, 1, 1]), a, b)


def box_mask(boxes: tf.Tensor, active: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """``(B, H, W)`` bool union of active boxes.

    Args:
        boxes: ``(B, K, 4)`` int ``(row, col, h, w)``.
        active: ``(B, K)`` bool.
    """
    r = tf.range(height)[None, None, :]
    c = tf.range(width)[None, None, :]
    r0, c0, h, w = (boxes[..., i : i + 1] for i in range(4))
    rows = (r >= r0) & (r < r0 + h)  # (B, K, H)
    cols = (c >= c0) & (c < c0 + w)  # (B, K, W)
    inside = rows[:, :, :, None] & cols[:, :, None, :] & active[:, :, None, None]
    return tf.reduce_any(inside, axis=1)


def _static_hw(x: tf.Tensor) -> tuple[int, int]:
    h, w = x.shape[1], x.shape[2]
    if h is None or w is None:
        raise CXRConfigError(f"Models Genesis transforms need a static image size; got shape {x.shape}")
    return int(h), int(w)


# ----------------------------------------------------------------------------- 1. flip
def flip(x: tf.Tensor, y: tf.Tensor, seed, cfg: GenesisConfig | None = None):
    """Flip input and target alike (official ``data_augmentation``).

    Returns:
        ``(x, y)`` flipped per sample.
    """
    cfg = cfg or GenesisConfig()
    b = tf.shape(x)[0]
    s_go, s_axis = _seeds(seed, 2)
    active = _chain_active(s_go, b, cfg.flip_max, cfg.flip_rate)  # (B, n)
    axis = tf.random.stateless_uniform([b, cfg.flip_max], seed=s_axis, minval=0, maxval=3, dtype=tf.int32)
    # axis 0 = the channel axis of the 3D original (1 long): a no-op, kept for the same odds.
    n_rows = tf.reduce_sum(tf.cast(active & (axis == 1), tf.int32), axis=1)
    n_cols = tf.reduce_sum(tf.cast(active & (axis == 2), tf.int32), axis=1)
    fr, fc = tf.equal(n_rows % 2, 1), tf.equal(n_cols % 2, 1)
    out = []
    for t in (x, y):
        t = _select(fr, tf.reverse(t, [1]), t)
        t = _select(fc, tf.reverse(t, [2]), t)
        out.append(t)
    return out[0], out[1]


# ------------------------------------------------------------- 2. local pixel shuffling
def shuffle_blocks(height: int, width: int, cfg: GenesisConfig) -> tuple[int, int, int]:
    """``(windows per image, max side rows, max side cols)`` for an image size."""
    mr = max(1, int(height * cfg.local_max_frac))
    mc = max(1, int(width * cfg.local_max_frac))
    if cfg.local_blocks:
        return cfg.local_blocks, mr, mc
    mean_area = (1 + mr) / 2.0 * (1 + mc) / 2.0
    return max(1, int(round(OFFICIAL_SHUFFLE_COVERAGE * height * width / mean_area))), mr, mc


def shuffle_windows(x: tf.Tensor, windows: tf.Tensor, seed, max_rows: int, max_cols: int) -> tf.Tensor:
    """Permute pixels inside given windows; a later window overwrites an earlier one.

    Every window reads the original ``x`` (as the official code reads ``orig_image``),
    so the result equals running the windows one after the other. Vectorised: each
    window is a padded ``max_rows x max_cols`` patch whose valid cells are put in a
    uniform random order by sorting random keys; of all writes to a pixel only the last
    window's is kept (``unsorted_segment_max`` finds it), so no write order matters.

    Args:
        x: ``(B, H, W, C)``.
        windows: ``(B, K, 4)`` int ``(row, col, h, w)`` with ``h <= max_rows``, ``w <= max_cols``.
        seed: stateless seed for the permutations.
    """
    shape = tf.shape(x)
    b, c = shape[0], shape[3]
    h_img, w_img = _static_hw(x)
    k = tf.shape(windows)[1]
    p = max_rows * max_cols
    ii = tf.reshape(tf.repeat(tf.range(max_rows), max_cols), [1, 1, p])
    jj = tf.reshape(tf.tile(tf.range(max_cols), [max_rows]), [1, 1, p])
    r0, c0, wh, ww = (windows[..., i : i + 1] for i in range(4))  # (B, K, 1)
    valid = (ii < wh) & (jj < ww)  # (B, K, P)
    # A uniform random order of the valid cells (invalid ones sort last); slot t of the
    # window (raster order over its h x w valid cells) receives cell order[t].
    keys = _uniform(seed, [b, k, p]) + tf.cast(~valid, tf.float32) * 2.0
    order = tf.argsort(keys, axis=-1)
    slot = tf.range(p)[None, None, :]
    ww_safe = tf.maximum(ww, 1)
    dr, dc = r0 + slot // ww_safe, c0 + slot % ww_safe
    sr, sc = r0 + tf.gather(ii[0, 0], order), c0 + tf.gather(jj[0, 0], order)
    valid = slot < wh * ww  # the first h*w slots carry a write
    bb = tf.range(b)[:, None, None] * (h_img * w_img)
    n_pix = b * h_img * w_img
    src = tf.where(valid, bb + sr * w_img + sc, 0)
    dst = tf.where(valid, bb + dr * w_img + dc, -1)  # negative segment ids are dropped
    wid = tf.broadcast_to(tf.range(k)[None, :, None], tf.shape(dst))
    flat = tf.reshape(x, [-1, c])
    last = tf.math.unsorted_segment_max(tf.reshape(tf.where(valid, wid, -1), [-1]), tf.reshape(dst, [-1]), n_pix)
    keep = valid & tf.equal(tf.gather(last, tf.maximum(dst, 0)), wid)
    vals = tf.gather(flat, tf.reshape(src, [-1]))
    seg = tf.reshape(tf.where(keep, dst, -1), [-1])
    written = tf.math.unsorted_segment_sum(vals, seg, n_pix)
    covered = (last >= 0)[:, None]
    return tf.reshape(tf.where(covered, written, flat), shape)


def sample_shuffle_windows(seed, batch, height: int, width: int, cfg: GenesisConfig) -> tf.Tensor:
    """``(B, K, 4)`` random windows: sides ``1..dim*local_max_frac``, anywhere in the image."""
    k, mr, mc = shuffle_blocks(height, width, cfg)
    s = _seeds(seed, 4)
    wh = _randint(s[0], [batch, k], 1, mr)
    ww = _randint(s[1], [batch, k], 1, mc)
    r0 = _randint(s[2], [batch, k], 0, height - wh)
    c0 = _randint(s[3], [batch, k], 0, width - ww)
    return tf.stack([r0, c0, wh, ww], -1)


def local_pixel_shuffling(x: tf.Tensor, seed, cfg: GenesisConfig | None = None, return_windows: bool = False):
    """Local pixel shuffling with probability ``cfg.local_rate`` per sample.

    Returns:
        the shuffled batch (and the ``(B, K, 4)`` windows and the ``(B,)`` applied mask
        when ``return_windows``).
    """
    cfg = cfg or GenesisConfig()
    h, w = _static_hw(x)
    b = tf.shape(x)[0]
    s_apply, s_win, s_perm = _seeds(seed, 3)
    _, mr, mc = shuffle_blocks(h, w, cfg)
    windows = sample_shuffle_windows(s_win, b, h, w, cfg)
    applied = _apply_prob(s_apply, b, cfg.local_rate)
    # only the samples it applies to pay for it (half of them by default)
    idx = tf.where(applied)
    done = shuffle_windows(tf.gather_nd(x, idx), tf.gather_nd(windows, idx), s_perm, mr, mc)
    out = tf.tensor_scatter_nd_update(x, idx, done)
    return (out, windows, applied) if return_windows else out


# ------------------------------------------------------- 3. non-linear intensity (Bezier)
def bezier_curves(seed, batch, n_points: int = 1000, inverted=None):
    """Sampled intensity curves ``(xs, ys)``, each ``(B, n_points)``, ``xs`` ascending.

    A cubic Bezier through (0,0), P1, P2, (1,1) with P1, P2 uniform in the unit
    square. Both coordinates are non-decreasing along such a curve, so sorting them
    (as the official code does) gives the curve itself; the inverted variant pairs the
    sorted x with y in the opposite order (the official code sorts only x), mapping
    0 -> 1 and 1 -> 0.

    Args:
        inverted: ``(B,)`` bool or None (not inverted).
    """
    p = _uniform(seed, [batch, 2, 2])  # (B, point, xy)
    t = tf.linspace(0.0, 1.0, n_points)[None, :]
    b0, b1, b2, b3 = (1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3
    xs = b1 * p[:, 0, 0:1] + b2 * p[:, 1, 0:1] + b3
    ys = b1 * p[:, 0, 1:2] + b2 * p[:, 1, 1:2] + b3
    xs, ys = tf.sort(xs, axis=-1), tf.sort(ys, axis=-1)
    if inverted is not None:
        ys = tf.where(inverted[:, None], tf.reverse(ys, [-1]), ys)
    return xs, ys


def interp(x: tf.Tensor, xs: tf.Tensor, ys: tf.Tensor) -> tf.Tensor:
    """Per-sample ``np.interp``: ``x`` ``(B, ...)``, ``xs``/``ys`` ``(B, N)`` with ``xs``
    ascending; values outside ``[xs[0], xs[-1]]`` take the end values."""
    shape = tf.shape(x)
    b = shape[0]
    flat = tf.reshape(x, [b, -1])
    n = tf.shape(xs)[1]
    hi = tf.clip_by_value(tf.searchsorted(xs, flat, side="right"), 1, n - 1)
    lo = hi - 1
    x0, x1 = tf.gather(xs, lo, batch_dims=1), tf.gather(xs, hi, batch_dims=1)
    y0, y1 = tf.gather(ys, lo, batch_dims=1), tf.gather(ys, hi, batch_dims=1)
    wgt = tf.clip_by_value(tf.math.divide_no_nan(flat - x0, x1 - x0), 0.0, 1.0)
    out = y0 + wgt * (y1 - y0)
    return tf.reshape(out, shape)


def nonlinear_transformation(x: tf.Tensor, seed, cfg: GenesisConfig | None = None, return_curves: bool = False):
    """Bezier intensity transform with probability ``cfg.nonlinear_rate`` per sample.

    Returns:
        the batch (and ``(xs, ys, applied, inverted)`` when ``return_curves``).
    """
    cfg = cfg or GenesisConfig()
    b = tf.shape(x)[0]
    s_apply, s_inv, s_curve = _seeds(seed, 3)
    applied = _apply_prob(s_apply, b, cfg.nonlinear_rate)
    inverted = _apply_prob(s_inv, b, cfg.inverted_rate)
    xs, ys = bezier_curves(s_curve, b, cfg.bezier_points, inverted)
    out = _select(applied, interp(x, xs, ys), x)
    return (out, (xs, ys, applied, inverted)) if return_curves else out


# ------------------------------------------------------------- 4. in- and out-painting
def _boxes(seed, batch, n, height, width, low_r, high_r, low_c, high_c, margin):
    s = _seeds(seed, 4)
    bh = _randint(s[0], [batch, n], low_r, high_r)
    bw = _randint(s[1], [batch, n], low_c, high_c)
    r0 = _randint(s[2], [batch, n], margin, tf.maximum(margin, height - bh - margin))
    c0 = _randint(s[3], [batch, n], margin, tf.maximum(margin, width - bw - margin))
    return tf.stack([r0, c0, bh, bw], -1)


def image_in_painting(x: tf.Tensor, seed, cfg: GenesisConfig | None = None, return_mask: bool = False):
    """Up to ``inpaint_boxes`` boxes of side ``dim/6..dim/3`` filled with uniform noise
    (applied to every sample; :func:`paint` decides which samples get it).

    Returns:
        the batch (and the ``(B, H, W)`` bool mask of painted pixels when ``return_mask``).
    """
    cfg = cfg or GenesisConfig()
    h, w = _static_hw(x)
    b = tf.shape(x)[0]
    s_go, s_box, s_noise = _seeds(seed, 3)
    active = _chain_active(s_go, b, cfg.inpaint_boxes, cfg.box_continue)
    boxes = _boxes(s_box, b, cfg.inpaint_boxes, h, w, h // 6, h // 3, w // 6, w // 3, cfg.margin)
    mask = box_mask(boxes, active, h, w)
    noise = _uniform(s_noise, tf.shape(x))
    out = tf.where(mask[..., None], noise, x)
    return (out, mask) if return_mask else out


def image_out_painting(x: tf.Tensor, seed, cfg: GenesisConfig | None = None, return_mask: bool = False):
    """A uniform-noise canvas keeping one window of the image plus up to
    ``outpaint_extra`` more (each with probability ``box_continue``).

    Returns:
        the batch (and the ``(B, H, W)`` bool mask of kept pixels when ``return_mask``).
    """
    cfg = cfg or GenesisConfig()
    h, w = _static_hw(x)
    b = tf.shape(x)[0]
    s_go, s_box, s_noise = _seeds(seed, 3)
    n = 1 + cfg.outpaint_extra
    active = tf.concat([tf.ones([b, 1], tf.bool), _chain_active(s_go, b, cfg.outpaint_extra, cfg.box_continue)], 1)
    # side = dim - randint(3 dim/7, 4 dim/7)  ->  [dim - 4 dim/7, dim - 3 dim/7]
    boxes = _boxes(s_box, b, n, h, w, h - 4 * h // 7, h - 3 * h // 7, w - 4 * w // 7, w - 3 * w // 7, cfg.margin)
    mask = box_mask(boxes, active, h, w)
    noise = _uniform(s_noise, tf.shape(x))
    out = tf.where(mask[..., None], x, noise)
    return (out, mask) if return_mask else out


def paint(x: tf.Tensor, seed, cfg: GenesisConfig | None = None) -> tf.Tensor:
    """With probability ``paint_rate``: in-painting (``inpaint_rate``) or out-painting."""
    cfg = cfg or GenesisConfig()
    b = tf.shape(x)[0]
    s_apply, s_kind, s_in, s_out = _seeds(seed, 4)
    applied = _apply_prob(s_apply, b, cfg.paint_rate)
    inner = _apply_prob(s_kind, b, cfg.inpaint_rate)
    painted = _select(inner, image_in_painting(x, s_in, cfg), image_out_painting(x, s_out, cfg))
    return _select(applied, painted, x)


# ----------------------------------------------------------------------------- the pair
def generate_pair(y: tf.Tensor, seed, cfg: GenesisConfig | None = None):
    """The official per-sample chain on a batch: ``(corrupted, target)``.

    Args:
        y: ``(B, H, W, C)`` images in ``[0, 1]`` (static H, W).
        seed: stateless seed, shape ``[2]``.
    """
    cfg = cfg or GenesisConfig()
    y = tf.convert_to_tensor(y, tf.float32)
    s_flip, s_local, s_nl, s_paint = _seeds(seed, 4)
    x, y = flip(y, y, s_flip, cfg)
    x = local_pixel_shuffling(x, s_local, cfg)
    x = nonlinear_transformation(x, s_nl, cfg)
    x = paint(x, s_paint, cfg)
    return x, y


def make_pair_dataset(images: tf.data.Dataset, batch_size: int, cfg: GenesisConfig | None = None, seed: int = 0,
                      shuffle: int | None = None, repeat: bool = True, drop_remainder: bool = True,
                      num_parallel_calls=tf.data.AUTOTUNE, prefetch: int = 2) -> tf.data.Dataset:
    """``(corrupted, original)`` batches from a dataset of single images ``(H, W, C)``
    in ``[0, 1]`` (or ``(image, label)`` pairs: labels are dropped).

    Args:
        shuffle: shuffle buffer (None: no shuffling); shuffled before repeat so every
            epoch is a permutation.
        repeat: repeat forever (training); the corruption seeds differ every batch.
    """
    cfg = (cfg or GenesisConfig()).validate()
    spec = images.element_spec
    if isinstance(spec, tuple):
        images = images.map(lambda im, *_: im, num_parallel_calls=num_parallel_calls)
    if shuffle:
        images = images.shuffle(shuffle, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        images = images.repeat()
    d = images.batch(batch_size, drop_remainder=drop_remainder)
    seeds = tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True)
    d = tf.data.Dataset.zip((d, seeds)).map(lambda im, s: generate_pair(im, s, cfg), num_parallel_calls=num_parallel_calls)
    return d.prefetch(prefetch)
