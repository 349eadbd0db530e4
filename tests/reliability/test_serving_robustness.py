"""The exported signatures refuse bad requests with an error, never a crash of the process.

tests/export covers single bad requests in-process; here a separate process loads the
export exactly as a Python server would (``tf.saved_model.load`` + the signature
functions), survives 50 bad requests of every kind (undecodable bytes, a PNG header
claiming 100000 x 100000 pixels, DICOM bytes, wrong dtype, wrong rank, NaN/inf, empty
dimensions, a bad item inside a good batch) and then answers a good request with the
right probabilities.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np

from _rel_helpers import dicom_bytes, env

SERVER = textwrap.dedent(r'''
    import io, json, struct, sys, zlib
    import numpy as np
    import tensorflow as tf

    path, good_file = sys.argv[1], sys.argv[2]
    good = open(good_file, "rb").read()
    dcm = open(sys.argv[3], "rb").read()
    m = tf.saved_model.load(path)
    serve, images = m.signatures["serving_default"], m.signatures["predict_images"]

    def chunk(k, d):
        return struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d))
    huge = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    rng = np.random.default_rng(0)
    S = 32
    bad = []
    for i in range(12):
        bad.append(("random bytes", lambda b=rng.bytes(int(rng.integers(1, 4000))): serve(image_bytes=tf.constant([b]))))
    for cut in (8, 33, 60, len(good) // 2, len(good) - 12):
        bad.append(("truncated png", lambda c=cut: serve(image_bytes=tf.constant([good[:c]]))))
    bad += [
        ("empty bytes", lambda: serve(image_bytes=tf.constant([b""]))),
        ("text", lambda: serve(image_bytes=tf.constant([b"GET / HTTP/1.1\r\n\r\n"]))),
        ("huge png header", lambda: serve(image_bytes=tf.constant([huge]))),
        ("dicom bytes", lambda: serve(image_bytes=tf.constant([dcm]))),
        ("bad item in a good batch", lambda: serve(image_bytes=tf.constant([good, b"junk", good]))),
        ("float instead of bytes", lambda: serve(image_bytes=tf.constant([1.0, 2.0]))),
        ("int instead of bytes", lambda: serve(image_bytes=tf.constant([1, 2]))),
        ("rank 2 bytes", lambda: serve(image_bytes=tf.constant([[good]]))),
        ("rank 0 bytes", lambda: serve(image_bytes=tf.constant(good))),
        ("wrong input name", lambda: serve(images=tf.constant([good]))),
        ("no input", lambda: serve()),
    ]
    for dt in (tf.int32, tf.float64, tf.uint8, tf.string):
        bad.append((f"images {dt.name}", lambda dt=dt: images(images=tf.zeros((1, S, S, 1), dt)
                                                              if dt != tf.string else tf.constant([[[[b"x"]]]]))))
    for shape in ((S, S, 1), (1, 2, S, S, 1), (S, S), (S,), ()):
        bad.append((f"images rank {len(shape)}", lambda sh=shape: images(images=tf.zeros(sh, tf.float32))))
    for v in (np.nan, np.inf, -np.inf):
        bad.append((f"images {v}", lambda v=v: images(images=tf.fill((1, 8, 8, 1), float(v)))))
    for shape in ((1, 0, 8, 1), (1, 8, 0, 1), (1, 8, 8, 0), (2, 0, 0, 0)):
        bad.append((f"images empty {shape}", lambda sh=shape: images(images=tf.zeros(sh, tf.float32))))
    one_nan = np.zeros((2, 8, 8, 1), np.float32); one_nan[1, 3, 3, 0] = np.nan
    bad.append(("one nan pixel in a batch", lambda: images(images=tf.constant(one_nan))))
    bad.append(("images as bytes signature", lambda: serve(image_bytes=tf.zeros((1, S, S, 1)))))
    bad.append(("list of str", lambda: serve(image_bytes=["a str"])))
    bad.append(("python object", lambda: images(images=object())))
    bad.append(("ragged batch", lambda: images(images=tf.ragged.constant([[[1.0]], [[1.0], [2.0]]]))))
    bad.append(("extra input", lambda: serve(image_bytes=tf.constant([good]), other=tf.constant([1]))))
    assert len(bad) >= 50, len(bad)

    refused, answered = [], []
    for what, call in bad:
        try:
            out = call()
        except Exception as e:  # noqa: BLE001 - the point: an exception, not a dead process
            refused.append((what, type(e).__name__))
        else:
            answered.append(what)
    out = serve(image_bytes=tf.constant([good]))
    out2 = images(images=tf.constant(np.asarray(tf.io.decode_png(good, dtype=tf.uint16), np.float32)[None]))
    print(json.dumps({"n_bad": len(bad), "refused": refused, "answered": answered,
                      "good": out["probabilities"].numpy().tolist(), "good_class": out["class_index"].numpy().tolist(),
                      "good_images": out2["probabilities"].numpy().tolist()}))
''')


def test_fifty_bad_requests_then_a_good_answer(tiny_export, tmp_path):
    import tensorflow as tf

    from cxr_tf.data.preprocess import prepare_image

    path, model = tiny_export
    img = (np.add.outer(np.arange(40), np.arange(48)) * 3 % 256).astype(np.uint8)
    good = tf.io.encode_png(img[..., None]).numpy()
    (tmp_path / "good.png").write_bytes(good)
    (tmp_path / "x.dcm").write_bytes(dicom_bytes(img))
    (tmp_path / "server.py").write_text(SERVER)

    p = subprocess.run([sys.executable, str(tmp_path / "server.py"), str(path), str(tmp_path / "good.png"),
                        str(tmp_path / "x.dcm")], capture_output=True, text=True, timeout=120, env=env())
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["n_bad"] >= 50
    assert res["answered"] == [], res["answered"]  # every bad request was refused with an exception
    assert len(res["refused"]) == res["n_bad"]
    kinds = {k for _, k in res["refused"]}
    assert kinds <= {"InvalidArgumentError", "TypeError", "ValueError"}, kinds
    ref = np.asarray(model(prepare_image(tf.constant(good), 32)[None], training=False))
    assert np.abs(np.asarray(res["good"]) - ref).max() <= 1e-5
    assert res["good_class"] == [int(ref.argmax())]
    assert np.abs(np.asarray(res["good_images"]) - ref).max() <= 1e-5
