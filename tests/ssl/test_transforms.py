"""Each Models Genesis corruption's defining property, on small batches."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from cxr_tf.errors import CXRConfigError
from cxr_tf.ssl import transforms as T

H = W = 32


def _batch(n=6, seed=0, c=1):
    # distinct values everywhere, so permutations and copies are recognisable
    rng = np.random.default_rng(seed)
    return tf.constant(rng.permutation(n * H * W * c).reshape(n, H, W, c).astype(np.float32) / (n * H * W * c))


SEED = tf.constant([7, 11], tf.int64)


def test_flip_applies_the_same_flip_to_input_and_target():
    x = _batch(32)
    y = x + 1.0
    fx, fy = T.flip(x, y, SEED, T.GenesisConfig(flip_rate=0.9))
    np.testing.assert_allclose(fy.numpy() - 1.0, fx.numpy(), atol=1e-6)
    kinds = set()
    for i in range(32):
        a, b = x[i].numpy(), fx[i].numpy()
        cands = {"none": a, "rows": a[::-1], "cols": a[:, ::-1], "both": a[::-1, ::-1]}
        match = [k for k, v in cands.items() if np.array_equal(v, b)]
        assert len(match) == 1
        kinds.add(match[0])
    assert {"none", "rows", "cols"} <= kinds  # every outcome occurs at rate 0.9


def test_flip_rate_zero_is_identity():
    x = _batch()
    fx, _ = T.flip(x, x, SEED, T.GenesisConfig(flip_rate=0.0))
    np.testing.assert_array_equal(fx.numpy(), x.numpy())


def test_shuffle_windows_preserve_multiset_inside_each_window_and_nothing_outside():
    x = _batch(2, c=2)
    # non-overlapping windows of several sizes, one per row band
    win = np.array([[[0, 0, 3, 3], [5, 4, 2, 3], [10, 20, 3, 1], [20, 10, 1, 1]]] * 2, np.int32)
    out = T.shuffle_windows(x, tf.constant(win), SEED, 3, 3).numpy()
    xn = x.numpy()
    moved = 0
    for b in range(2):
        inside = np.zeros((H, W), bool)
        for r, c, h, w in win[b]:
            inside[r : r + h, c : c + w] = True
            a = xn[b, r : r + h, c : c + w].reshape(-1, 2)
            o = out[b, r : r + h, c : c + w].reshape(-1, 2)
            # pixels move as a whole (all channels) and the window keeps its values
            assert sorted(map(tuple, a)) == sorted(map(tuple, o))
            moved += int((a != o).any(1).sum())
        np.testing.assert_array_equal(out[b][~inside], xn[b][~inside])
    assert moved > 0


def test_overlapping_windows_follow_sequential_semantics():
    """The vectorised result equals applying the windows one after the other."""
    x = _batch(1)
    win = tf.constant([[[2, 2, 3, 3], [3, 3, 3, 3], [4, 2, 2, 2]]], tf.int32)
    out = T.shuffle_windows(x, win, SEED, 3, 3).numpy()[0, ..., 0]
    xn = x.numpy()[0, ..., 0]
    # each window alone gives its permutation (same seed -> same keys per window slot)
    last = np.full((H, W), -1)
    for k, (r, c, h, w) in enumerate(win.numpy()[0]):
        last[r : r + h, c : c + w] = k
    for k, (r, c, h, w) in enumerate(win.numpy()[0]):
        own = last[r : r + h, c : c + w] == k
        vals = out[r : r + h, c : c + w][own]
        # values written by window k come from window k's region of the ORIGINAL image
        assert set(vals.tolist()) <= set(xn[r : r + h, c : c + w].ravel().tolist())
    np.testing.assert_array_equal(out[last < 0], xn[last < 0])
    # the last window is complete: its multiset is kept
    r, c, h, w = win.numpy()[0, -1]
    assert sorted(out[r : r + h, c : c + w].ravel()) == sorted(xn[r : r + h, c : c + w].ravel())


def test_local_pixel_shuffling_windows_rate_and_locality():
    cfg = T.GenesisConfig(local_rate=0.5)
    x = _batch(16)
    out, windows, applied = T.local_pixel_shuffling(x, SEED, cfg, return_windows=True)
    out, windows, applied = out.numpy(), windows.numpy(), applied.numpy()
    k, mr, mc = T.shuffle_blocks(H, W, cfg)
    assert windows.shape == (16, k, 4) and mr == mc == 3
    assert windows[..., 2].min() >= 1 and windows[..., 2].max() <= mr
    assert (windows[..., 0] + windows[..., 2]).max() <= H
    assert 0 < applied.sum() < 16
    xn = x.numpy()
    for b in range(16):
        if not applied[b]:
            np.testing.assert_array_equal(out[b], xn[b])
            continue
        # shuffling is local: each output pixel's value comes from within max-side distance
        src = {v: divmod(i, W) for i, v in enumerate(xn[b, ..., 0].ravel())}
        for (r, c), v in np.ndenumerate(out[b, ..., 0]):
            sr, sc = src[v]
            assert abs(sr - r) < mr and abs(sc - c) < mc
        assert (out[b] != xn[b]).mean() > 0.3  # the official coverage changes most pixels


@pytest.mark.parametrize("inverted", [False, True])
def test_bezier_curve_monotone_with_fixed_ends(inverted):
    xs, ys = T.bezier_curves(SEED, 64, 200, tf.fill([64], inverted))
    xs, ys = xs.numpy(), ys.numpy()
    assert np.all(np.diff(xs, axis=1) >= 0)
    x = tf.constant(np.tile(np.linspace(0, 1, 101, dtype=np.float32), (64, 1)))
    f = T.interp(x, tf.constant(xs), tf.constant(ys)).numpy()
    d = np.diff(f, axis=1)
    if inverted:
        assert np.all(d <= 1e-6)
        np.testing.assert_allclose(f[:, 0], 1.0, atol=1e-5)
        np.testing.assert_allclose(f[:, -1], 0.0, atol=1e-5)
    else:
        assert np.all(d >= -1e-6)
        np.testing.assert_allclose(f[:, 0], 0.0, atol=1e-5)
        np.testing.assert_allclose(f[:, -1], 1.0, atol=1e-5)
    assert np.abs(f - x.numpy()).max() > 0.05  # not the identity


def test_interp_matches_numpy():
    rng = np.random.default_rng(1)
    xs = np.sort(rng.random((3, 50)).astype(np.float32), 1)
    ys = rng.random((3, 50)).astype(np.float32)
    x = rng.random((3, 8, 8, 1)).astype(np.float32)
    out = T.interp(tf.constant(x), tf.constant(xs), tf.constant(ys)).numpy()
    for b in range(3):
        np.testing.assert_allclose(out[b].ravel(), np.interp(x[b].ravel(), xs[b], ys[b]), atol=1e-5)


def test_nonlinear_rates():
    x = _batch(64)
    out, (_, _, applied, inverted) = T.nonlinear_transformation(x, SEED, T.GenesisConfig(), return_curves=True)
    applied, inverted = applied.numpy(), inverted.numpy()
    same = np.all(out.numpy() == x.numpy(), axis=(1, 2, 3))
    np.testing.assert_array_equal(same, ~applied)
    assert 0.75 < applied.mean() <= 1.0 and 0.25 < inverted.mean() < 0.75
    # inverted samples: bright input pixels become dark (rank correlation negative)
    xn, on = x.numpy().reshape(64, -1), out.numpy().reshape(64, -1)
    for b in np.flatnonzero(applied):
        corr = np.corrcoef(np.argsort(np.argsort(xn[b])), np.argsort(np.argsort(on[b])))[0, 1]
        assert (corr < 0) == inverted[b]


def test_in_painting_changes_only_its_boxes():
    x = _batch(8)
    out, mask = T.image_in_painting(x, SEED, return_mask=True)
    out, mask, xn = out.numpy()[..., 0], mask.numpy(), x.numpy()[..., 0]
    np.testing.assert_array_equal(out[~mask], xn[~mask])
    assert (out[mask] != xn[mask]).mean() > 0.99  # filled with fresh noise
    assert out.min() >= 0 and out.max() <= 1
    for b in range(8):  # boxes: side in [dim/6, dim/3], 3 px from the border
        rows, cols = np.flatnonzero(mask[b].any(1)), np.flatnonzero(mask[b].any(0))
        assert rows.min() >= 3 and cols.min() >= 3 and rows.max() < H - 3 and cols.max() < W - 3
        assert mask[b].sum() >= (H // 6) * (W // 6)
        assert mask[b].sum() <= 5 * (H // 3) * (W // 3)


def test_out_painting_keeps_its_windows():
    x = _batch(8)
    out, mask = T.image_out_painting(x, SEED, return_mask=True)
    out, mask, xn = out.numpy()[..., 0], mask.numpy(), x.numpy()[..., 0]
    np.testing.assert_array_equal(out[mask], xn[mask])
    assert (out[~mask] != xn[~mask]).mean() > 0.99
    side = H - 4 * H // 7
    assert all(mask[b].sum() >= side * side for b in range(8))  # the one large window
    assert all((~mask[b]).any() for b in range(8))


def test_generate_pair_deterministic_from_seed_and_ordered():
    x = _batch(8)
    a1, y1 = T.generate_pair(x, SEED)
    a2, y2 = T.generate_pair(x, SEED)
    np.testing.assert_array_equal(a1.numpy(), a2.numpy())
    np.testing.assert_array_equal(y1.numpy(), y2.numpy())
    a3, _ = T.generate_pair(x, tf.constant([7, 12], tf.int64))
    assert not np.array_equal(a1.numpy(), a3.numpy())
    # the target is the (flipped) original, never corrupted
    for b in range(8):
        xb = x[b].numpy()
        assert any(np.array_equal(y1[b].numpy(), v) for v in (xb, xb[::-1], xb[:, ::-1], xb[::-1, ::-1]))
    off = T.GenesisConfig(flip_rate=0, local_rate=0, nonlinear_rate=0, paint_rate=0)
    a, y = T.generate_pair(x, SEED, off)
    np.testing.assert_array_equal(a.numpy(), x.numpy())


def test_make_pair_dataset_batches_and_determinism():
    imgs = tf.data.Dataset.from_tensor_slices((_batch(10).numpy(), np.zeros(10)))
    d1 = T.make_pair_dataset(imgs, 4, seed=3, shuffle=10)
    d2 = T.make_pair_dataset(imgs, 4, seed=3, shuffle=10)
    b1 = [tuple(t.numpy() for t in b) for b in d1.take(3)]
    b2 = [tuple(t.numpy() for t in b) for b in d2.take(3)]
    for (x1, y1), (x2, y2) in zip(b1, b2):
        assert x1.shape == (4, H, W, 1) and y1.shape == (4, H, W, 1)
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(b1[0][0], b1[1][0])


def test_config_validation():
    with pytest.raises(CXRConfigError, match="paint_rate"):
        T.GenesisConfig(paint_rate=1.5).validate()
