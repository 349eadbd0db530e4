"""TF Serving export: parity with Keras, signatures, CLI, sizes, warm-up, metadata, errors."""
from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from cxr_tf.data.preprocess import prepare_float_batch, prepare_image  # noqa: E402
from cxr_tf.errors import CXRConfigError, CXRImageError, CXRInputError, CXRModelError  # noqa: E402
from cxr_tf.export import (  # noqa: E402
    docker_command,
    export_for_serving,
    inspect_with_cli,
    load_exported,
    read_warmup_file,
    run_with_cli,
    serving_messages,
    serving_readme,
    write_models_config,
)
from cxr_tf.export.savedmodel.tools import bytes_literal  # noqa: E402
from cxr_tf.export.savedmodel.write import _dir_bytes  # noqa: E402

S = 32
CLASSES = ["normal", "pneumonia", "covid"]
TOL = 1e-5


def _tiny_model(activation="softmax", name="tiny"):
    keras.utils.set_random_seed(0)
    inp = keras.Input((S, S, 1), name="image")
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(len(CLASSES), activation=activation, name="probs")(x)
    return keras.Model(inp, out, name=name)


def _structured(h, w, c=1, seed=0):
    """A gradient with a bright disc and noise, values in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = 0.6 * xx / max(w - 1, 1) + 0.2 * yy / max(h - 1, 1)
    img = img + 0.3 * (((yy - h / 2) ** 2 + (xx - w / 3) ** 2) < (min(h, w) / 4) ** 2)
    img = np.clip(img + rng.normal(0, 0.03, (h, w)), 0, 1)
    img = np.repeat(img[..., None], c, axis=-1)
    if c == 3:  # distinct channels so the luminance conversion matters
        img[..., 0] *= 0.8
    return img


@pytest.fixture(scope="module")
def images():
    """Real encoded files: 8-bit, 16-bit (non-square), RGB PNG; gray and RGB JPEG."""
    png8 = tf.io.encode_png((_structured(32, 32) * 255).astype(np.uint8)).numpy()
    png16 = tf.io.encode_png((_structured(48, 40, seed=1) * 65535).astype(np.uint16)).numpy()
    png_rgb = tf.io.encode_png((_structured(40, 40, 3, seed=2) * 255).astype(np.uint8)).numpy()
    jpg = tf.io.encode_jpeg((_structured(64, 48, seed=3) * 255).astype(np.uint8)).numpy()
    jpg_rgb = tf.io.encode_jpeg((_structured(30, 50, 3, seed=4) * 255).astype(np.uint8)).numpy()
    return [png8, png16, png_rgb, jpg, jpg_rgb]


@pytest.fixture(scope="module")
def model():
    return _tiny_model()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, model, images):
    base = tmp_path_factory.mktemp("serving")
    result = export_for_serving(model, base, "cxr", class_names=CLASSES, image_size=S,
                                metadata={"dataset": "synthetic", "auc": 0.5},
                                warmup_images=images[:2])
    return result, base, load_exported(result.path)


def _reference(model, imgs):
    batch = tf.stack([prepare_image(tf.constant(b), S) for b in imgs])
    return model.predict(batch, verbose=0), batch.numpy()


def _printed_floats(text, key):
    block = text.split(f"Result for output key {key}:", 1)[1].split("Result for output key", 1)[0]
    return np.array([float(v) for v in re.findall(r"[-+]?\d*\.\d+(?:[eE][-+]?\d+)?|\d+", block)])


# --------------------------------------------------------------------------- parity
def test_predict_bytes_matches_keras(exported, model, images):
    result, _, loaded = exported
    ref, _ = _reference(model, images)
    got = loaded.predict_bytes(images, batch_size=2)  # 3 calls, the last one partial
    assert got.shape == (len(images), len(CLASSES)) and got.dtype == np.float32
    assert np.abs(got - ref).max() <= TOL
    out = loaded.signatures["serving_default"](image_bytes=tf.constant(images))
    assert out["class_index"].dtype == tf.int64
    np.testing.assert_array_equal(out["class_index"].numpy(), ref.argmax(-1))
    assert loaded.predict_bytes([]).shape == (0, len(CLASSES))


def test_predict_images_matches_keras(exported, model, images):
    _, _, loaded = exported
    ref, batch = _reference(model, images)
    got = loaded.predict_images(batch)
    # predict_images re-applies prepare_float_batch (per-image min-max, resize): an
    # identity only for images spanning exactly [0, 1] at S x S, like the square PNG.
    assert np.abs(got[0] - ref[0]).max() <= TOL
    assert np.abs(got - model.predict(prepare_float_batch(batch, S), verbose=0)).max() <= TOL
    # Any size, range and channel count goes through prepare_float_batch in-graph.
    raw = (np.random.default_rng(5).random((2, 50, 40, 3)) * 4000).astype(np.float32)
    ref_raw = model.predict(prepare_float_batch(raw, S), verbose=0)
    assert np.abs(loaded.predict_images(raw) - ref_raw).max() <= TOL


def test_session_loader_like_tf_serving(exported, model, images):
    """TF Serving restores variables by running the saver's restore op in a session.

    Guards the Keras 3 pitfall where a tracked model's save/restore ops and the
    signatures use different variable resources ("Could not find variable ...").
    """
    result, _, _ = exported
    ref, _ = _reference(model, images[:2])
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        mg = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(result.path))
        sig = mg.signature_def["serving_default"]
        feed = sig.inputs["image_bytes"].name
        fetch = sig.outputs["probabilities"].name
        got = sess.run(fetch, {feed: images[:2]})
        assert np.abs(got - ref).max() <= TOL
        with pytest.raises(tf.errors.InvalidArgumentError):
            sess.run(fetch, {feed: [b"not an image"]})
        assert np.abs(sess.run(fetch, {feed: images[:2]}) - ref).max() <= TOL


# --------------------------------------------------------------------------- saved_model_cli
_CLI_IMG = [[[[0.0], [1.0], [0.5]], [[1.0], [0.5], [0.25]]]]  # (1, 2, 3, 1) as a literal


@pytest.fixture(scope="module")
def cli_outputs(exported, images):
    """The three saved_model_cli calls, run concurrently: each spends seconds importing TF."""
    path = exported[0].path
    # --input_exprs goes through ast.literal_eval: nested lists and bytes literals work,
    # np.ones(...) does not. Bytes are written as \xNN escapes since repr() could hold
    # the ';' and '=' that the flag is split on.
    jobs = {
        "show": lambda: inspect_with_cli(path),
        "images": lambda: run_with_cli(path, "predict_images", input_exprs=f"images={_CLI_IMG}"),
        "bytes": lambda: run_with_cli(
            path, "serving_default",
            input_exprs="image_bytes=[" + ", ".join(bytes_literal(b) for b in images[:2]) + "]"),
    }
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {k: pool.submit(fn) for k, fn in jobs.items()}
        return {k: f.result() for k, f in futures.items()}


def test_cli_show_lists_both_signatures(cli_outputs):
    text = cli_outputs["show"]
    blocks = dict(re.findall(r"signature_def\['(\w+)'\]:(.*?)(?=signature_def\[|\Z)", text, re.S))
    assert {"serving_default", "predict_images"} <= set(blocks)
    serve, imgs = blocks["serving_default"], blocks["predict_images"]
    assert re.search(r"inputs\['image_bytes'\] tensor_info:\s+dtype: DT_STRING\s+shape: \(-1\)", serve)
    assert re.search(r"inputs\['images'\] tensor_info:\s+dtype: DT_FLOAT\s+shape: \(-1, -1, -1, -1\)", imgs)
    for block in (serve, imgs):
        assert re.search(r"outputs\['probabilities'\] tensor_info:\s+dtype: DT_FLOAT\s+shape: \(-1, 3\)", block)
        assert re.search(r"outputs\['class_index'\] tensor_info:\s+dtype: DT_INT64", block)
        assert "tensorflow/serving/predict" in block


def test_cli_run_predict_images(cli_outputs, model):
    ref = model.predict(prepare_float_batch(np.array(_CLI_IMG, np.float32), S), verbose=0)
    assert np.abs(_printed_floats(cli_outputs["images"], "probabilities") - ref.ravel()).max() <= TOL


def test_cli_run_serving_default_with_bytes(cli_outputs, model, images):
    ref, _ = _reference(model, images[:2])
    text = cli_outputs["bytes"]
    assert np.abs(_printed_floats(text, "probabilities") - ref.ravel()).max() <= TOL
    np.testing.assert_array_equal(_printed_floats(text, "class_index"), ref.argmax(-1))


# --------------------------------------------------------------------------- size
def test_variables_stored_once(tmp_path):
    keras.utils.set_random_seed(1)
    inp = keras.Input((S, S, 1))
    x = keras.layers.Conv2D(64, 3, activation="relu", name="c1")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Conv2D(128, 3, activation="relu", name="c2")(x)
    x = keras.layers.Conv2D(256, 3, activation="relu", name="c3")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dropout(0.2, name="drop")(x)  # a seed-generator variable too
    out = keras.layers.Dense(3, activation="softmax", name="probs")(x)
    medium = keras.Model(inp, out, name="medium")  # ~370k params, ~1.5 MB
    # a trained model carries Adam slots (2x its weights): they must not be exported
    medium.compile("adam", "categorical_crossentropy")
    medium.train_on_batch(np.zeros((2, S, S, 1), "float32"), np.eye(3)[[0, 1]])

    result = export_for_serving(medium, tmp_path, class_names=CLASSES, image_size=S)
    sizes = result.sizes
    assert sizes["weights_bytes"] > 1_000_000
    assert sizes["variables_bytes"] <= 1.1 * sizes["weights_bytes"]
    assert sizes["ratio"] <= 1.1
    meta = json.loads((result.path / "assets.extra" / "cxr_tf_metadata.json").read_text())
    assert meta["sizes"]["variables_bytes"] == sizes["variables_bytes"]

    medium.export(str(tmp_path / "keras_export"), verbose=False)  # the duplicating route
    keras_bytes = _dir_bytes(tmp_path / "keras_export" / "variables")
    assert keras_bytes >= 1.8 * sizes["variables_bytes"]


# --------------------------------------------------------------------------- warm-up
def test_warmup_file_parses(exported, images):
    result, _, _ = exported
    path = result.path / "assets.extra" / "tf_serving_warmup_requests"
    records = list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
    assert len(records) == 2
    log = serving_messages().PredictionLog.FromString(records[0])
    assert log.WhichOneof("log_type") == "predict_log"
    assert log.predict_log.request.model_spec.signature_name == "serving_default"
    assert log.predict_log.request.model_spec.name == "cxr"
    parsed = read_warmup_file(path)
    for rec, original in zip(parsed, images[:2]):
        arr = rec["inputs"]["image_bytes"]
        assert arr.shape == (1,) and arr[0] == original
        assert tf.io.decode_image(arr[0], expand_animations=False).shape.rank == 3


def test_multilabel_export_and_default_warmup(tmp_path, images):
    ml = _tiny_model("sigmoid", name="tiny_ml")
    result = export_for_serving(ml, tmp_path, class_names=CLASSES, image_size=S, multilabel=True)
    assert result.path == tmp_path / "tiny_ml" / "1"  # name defaults to model.name
    loaded = load_exported(result.path)
    assert loaded.multilabel and loaded.metadata["multilabel"] is True
    for sig in ("serving_default", "predict_images"):
        assert set(loaded.signatures[sig].structured_outputs) == {"probabilities", "decision"}
    ref, _ = _reference(ml, images)
    assert np.abs(loaded.predict_bytes(images) - ref).max() <= TOL
    (rec,) = read_warmup_file(result.path / "assets.extra" / "tf_serving_warmup_requests")
    assert rec["model_name"] == "tiny_ml"
    png = tf.io.decode_png(rec["inputs"]["image_bytes"][0])  # the synthetic gradient
    assert png.shape == (64, 64, 1) and int(tf.reduce_max(png)) > int(tf.reduce_min(png))


# --------------------------------------------------------------------------- metadata, versions
def test_metadata_readable(exported):
    result, _, loaded = exported
    assert loaded.class_names == CLASSES and loaded.image_size == S and not loaded.multilabel
    meta = loaded.metadata
    assert meta["metadata"] == {"dataset": "synthetic", "auc": 0.5}
    assert meta["model_name"] == "cxr" and meta["version"] == result.version == 1
    assert meta["created_utc"].endswith("+00:00") and meta["cxr_tf_version"]
    assert meta["sizes"]["ratio"] == result.sizes["ratio"]
    # Without cxr_tf: the plain TF loader tells the classes and the metadata.
    raw = tf.saved_model.load(str(result.path))
    assert [c.decode() for c in raw.class_names.numpy()] == CLASSES
    assert int(raw.image_size.numpy()) == S
    assert json.loads(raw.metadata_json.numpy())["metadata"]["dataset"] == "synthetic"


def test_versions_increment_and_refuse_overwrite(tmp_path, model):
    kw = dict(class_names=CLASSES, image_size=S)
    assert export_for_serving(model, tmp_path, "m", **kw).version == 1
    r2 = export_for_serving(model, tmp_path, "m", **kw)
    assert r2.version == 2 and r2.path == tmp_path / "m" / "2"
    with pytest.raises(CXRConfigError, match="already exists"):
        export_for_serving(model, tmp_path, "m", version=2, **kw)
    r3 = export_for_serving(model, tmp_path, "m", version=2, overwrite=True,
                            metadata={"run": "again"}, **kw)
    meta = json.loads((r3.path / "assets.extra" / "cxr_tf_metadata.json").read_text())
    assert meta["metadata"] == {"run": "again"} and meta["version"] == 2
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1", "2"]  # no temp dirs left


def test_export_refuses_bad_arguments(tmp_path, model):
    kw = dict(class_names=CLASSES, image_size=S)
    with pytest.raises(CXRModelError):
        export_for_serving(model, tmp_path, "m", class_names=["a", "b"], image_size=S)
    with pytest.raises(CXRModelError):
        export_for_serving(model, tmp_path, "m", class_names=CLASSES, image_size=64)
    with pytest.raises(CXRConfigError):
        export_for_serving(model, tmp_path, "bad/name", **kw)
    with pytest.raises(CXRConfigError):
        export_for_serving(model, tmp_path, "m", metadata={"x": object()}, **kw)
    with pytest.raises(CXRImageError, match="warm-up image 0"):
        export_for_serving(model, tmp_path, "m", warmup_images=[b"junk"], **kw)
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


# --------------------------------------------------------------------------- bad requests
def test_bad_requests_raise_and_model_keeps_serving(exported, model, images):
    _, _, loaded = exported
    serve = loaded.signatures["serving_default"]
    imgs_fn = loaded.signatures["predict_images"]
    with pytest.raises(tf.errors.InvalidArgumentError):
        serve(image_bytes=tf.constant([b"definitely not an image"]))
    with pytest.raises(tf.errors.InvalidArgumentError):
        serve(image_bytes=tf.constant([images[0][:40]]))  # truncated PNG
    with pytest.raises(CXRImageError, match="items 0..1"):
        loaded.predict_bytes([images[0], b""])
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
        serve(image_bytes=tf.constant([1.0, 2.0]))  # wrong dtype
    with pytest.raises(TypeError):
        loaded.predict_bytes(["a str, not bytes"])
    # Wrong rank: TF's Python clients (session feed, saved_model_cli) refuse it against
    # the signature's (-1, -1, -1, -1); a loaded signature function runs the graph,
    # which fails with InvalidArgumentError (grappler folds an in-graph rank check away).
    for bad in (tf.zeros((S, S, 1)), tf.zeros((1, 2, S, S, 1))):
        with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
            imgs_fn(images=bad)
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
        imgs_fn(images=tf.zeros((1, S, S, 1), tf.int32))  # wrong dtype
    with pytest.raises(CXRInputError):
        loaded.predict_images(np.zeros((S, S)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="finite"):
        imgs_fn(images=tf.fill((1, 8, 8, 1), np.nan))
    with pytest.raises(tf.errors.InvalidArgumentError, match="> 0"):
        imgs_fn(images=tf.zeros((1, 0, 8, 1)))
    ref, batch = _reference(model, images)
    assert np.abs(loaded.predict_bytes(images) - ref).max() <= TOL
    assert np.abs(loaded.predict_images(batch[:1]) - ref[:1]).max() <= TOL


# --------------------------------------------------------------------------- serving docs
def test_models_config_and_docker_text(tmp_path):
    path = write_models_config(tmp_path, ["cxr", "cxr_ml"])
    text = path.read_text()
    assert path == tmp_path / "models.config"
    assert text.startswith("model_config_list {") and text.count("config {") == 2
    assert "name: 'cxr_ml'" in text and "base_path: '/models/cxr_ml'" in text
    assert "model_platform: 'tensorflow'" in text
    one = docker_command(tmp_path, "cxr")
    assert "-e MODEL_NAME=cxr" in one and f"{tmp_path.resolve()}/cxr:/models/cxr" in one
    many = docker_command(tmp_path, config_file="models.config")
    assert "--model_config_file=/models/models.config" in many
    readme = serving_readme(tmp_path, "cxr")
    assert '{"b64": ' in readme and "/v1/models/cxr:predict" in readme and "image_bytes" in readme
    with pytest.raises(CXRConfigError):
        write_models_config(tmp_path, ["bad name"])
