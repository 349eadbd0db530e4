import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from cxr_tf.data import POLICIES, AugmentPolicy, apply_policy, build_pipeline, prepare_image, resize_with_pad, scale_per_image
from cxr_tf.data.augment import random_transform_matrices
from cxr_tf.datasets import CXRDataset


def _mem_ds(n=60, size=40, classes=3, imbalance=(0.7, 0.2, 0.1), seed=0):
    rng = np.random.default_rng(seed)
    cls = rng.choice(classes, n, p=imbalance)
    x = (rng.random((n, size, size)) * 200).astype(np.uint8)
    return CXRDataset(x, np.eye(classes, dtype=np.float32)[cls], [f"c{i}" for i in range(classes)],
                      pd.DataFrame({"patient_id": [f"p{i}" for i in range(n)]}), name="mem")


def test_scale_and_pad():
    img = tf.constant(np.linspace(10, 50, 20 * 40, dtype=np.float32).reshape(20, 40, 1))
    s = scale_per_image(img)
    assert float(tf.reduce_min(s)) == 0.0 and abs(float(tf.reduce_max(s)) - 1.0) < 1e-6
    r = resize_with_pad(s, 32).numpy()
    assert r.shape == (32, 32, 1)
    # 2:1 aspect kept: 8 padded rows top and bottom are zero, the middle is the image
    assert np.all(r[:7] == 0) and np.all(r[-7:] == 0) and r[16].max() > 0.5
    assert float(tf.reduce_max(scale_per_image(tf.ones((5, 5, 1))))) == 0.0  # constant -> zeros, not NaN


def test_prepare_image_16bit_png_keeps_precision():
    ramp = np.linspace(0, 1000, 64 * 64).reshape(64, 64, 1).astype(np.uint16)  # only 1000 levels of 65536
    out = prepare_image(tf.io.encode_png(tf.constant(ramp)), 64).numpy()
    assert len(np.unique(out)) > 900  # 8-bit decoding would leave ~4 levels
    assert out.min() == 0.0 and abs(out.max() - 1.0) < 1e-6


def test_rgba_png_to_gray():
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., :3] = 128
    rgba[:8, ..., :3] = 255
    rgba[..., 3] = 255
    out = prepare_image(tf.io.encode_png(tf.constant(rgba)), 16).numpy()
    assert out.shape == (16, 16, 1) and out[:8].min() == 1.0 and out[8:].max() == 0.0


def test_identity_and_determinism():
    x = tf.random.uniform((4, 32, 32, 1), seed=1)
    assert np.array_equal(apply_policy(x, "none", tf.constant([1, 2])).numpy(), x.numpy())
    a = apply_policy(x, "s2", tf.constant([1, 2])).numpy()
    b = apply_policy(x, "s2", tf.constant([1, 2])).numpy()
    c = apply_policy(x, "s2", tf.constant([1, 3])).numpy()
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    # per-image draws differ inside a batch
    same = apply_policy(tf.repeat(x[:1], 4, 0), "s2", tf.constant([5, 5])).numpy()
    assert not np.array_equal(same[0], same[1])


def test_pure_shift_moves_content():
    x = np.zeros((1, 32, 32, 1), np.float32)
    x[0, 10, 10] = 1.0
    pol = AugmentPolicy(shift_x=0.25)
    m = random_transform_matrices(pol, 1, 32, 32, tf.constant([0, 0], tf.int64))[0].numpy()
    out = apply_policy(tf.constant(x), pol, tf.constant([0, 0])).numpy()
    # the geometric stream is the first of the split seeds; locate the dot and compare with the matrix
    y, xx = np.unravel_index(out[0, ..., 0].argmax(), (32, 32))
    assert y == 10 and abs(xx - 10) <= 8  # moved horizontally only, at most 0.25 * 32
    assert m.shape == (3, 3)


def test_policy_ranges_of_s2():
    p = POLICIES["s2"]
    assert (p.rotation_deg, p.shift_x, p.shift_y, p.shear_deg, p.crop_pad, p.flip_horizontal) == (45, 0.15, 0.2, 16, 0.25, False)


def test_training_pipeline_shapes_and_balance():
    ds = _mem_ds(n=120)
    pipe = build_pipeline(ds, 32, 16, training=True, policy="s2", balance="oversample", seed=0)
    assert pipe.steps == 120 // 16
    spec = pipe.dataset.element_spec
    assert spec[0].shape.as_list() == [16, 32, 32, 1]  # static under distribution
    labels = np.concatenate([y.numpy() for _, y in pipe.dataset.take(30)])
    share = labels.mean(0)
    assert np.abs(share - 1 / 3).max() < 0.08, share  # ~1:1:1 although the data is 70/20/10
    natural = build_pipeline(ds, 32, 16, training=True, policy="none", balance="none", seed=0)
    share_nat = np.concatenate([y.numpy() for _, y in natural.dataset.take(30)]).mean(0)
    assert share_nat[0] > 0.55


def test_eval_pipeline_keeps_order_and_all_items():
    ds = _mem_ds(n=37)
    pipe = build_pipeline(ds, 24, 8, training=False)
    ys = np.concatenate([y.numpy() for _, y in pipe.dataset])
    assert pipe.steps == 5 and np.array_equal(ys, ds.labels)


def test_path_pipeline_real_jpegs(kermany_dir):
    files = sorted((kermany_dir / "train" / "NORMAL").iterdir())[:10]
    ds = CXRDataset([str(f) for f in files], np.tile([[0, 0, 1]], (10, 1)), ["b", "v", "n"],
                    pd.DataFrame({"patient_id": range(10)}))
    x = np.concatenate([b.numpy() for b, _ in build_pipeline(ds, 64, 4, training=False).dataset])
    assert x.shape == (10, 64, 64, 1) and x.min() >= 0 and x.max() <= 1
    # per-image scaling before the antialiased 224 -> 64 resize: every image spans most of [0, 1]
    assert (x.reshape(10, -1).max(1) > 0.75).all() and (x.reshape(10, -1).min(1) < 0.05).all()


@pytest.mark.parametrize("h,w,s", [(224, 224, 48), (300, 217, 64), (217, 300, 48), (1000, 731, 224), (5, 300, 64)])
def test_resize_is_the_same_eagerly_and_in_a_graph(h, w, s):
    """tf.image.resize_with_pad floors a float32 ratio: 224 -> 48 gave 47 rows in a graph and
    48 eagerly. Our integer size makes every caller (explain, predict, tf.data, serving) agree."""
    import tensorflow as tf

    from cxr_tf.data.preprocess import prepare_float_batch, resized_size

    x = np.random.default_rng(0).random((1, h, w, 1)).astype("float32")
    graph = tf.function(lambda t: prepare_float_batch(t, s),
                        input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32)])
    np.testing.assert_array_equal(prepare_float_batch(x, s).numpy(), graph(x).numpy())
    nh, nw = (int(v) for v in resized_size(h, w, s))
    assert max(nh, nw) == s and min(nh, nw) == max(1, round(min(h, w) * s / max(h, w)))
