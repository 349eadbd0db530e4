"""Portable exports on a small real-data model: every format and quantisation, run by its own
runtime on real kermany224 images; NumPy preprocessing == SavedModel's; named errors.

One tiny_cnn is trained once per module on 60 real kermany224 images (64 px); 60 other
images are the held-out split. A run folder for the CLI is written around it.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from cxr_tf.data.preprocess import decode_image, prepare_float_batch  # noqa: E402
from cxr_tf.errors import (  # noqa: E402
    CXRConfigError,
    CXRConversionError,
    CXRExportDependencyError,
    CXRModelError,
    CXRQuantizationError,
)
from cxr_tf.export import export_model, preprocess_images  # noqa: E402
from cxr_tf.export.portable import PREDICTION_TOLERANCE  # noqa: E402

S = 64
HAS_ONNX = all(importlib.util.find_spec(m) for m in ("tf2onnx", "onnx", "onnxruntime"))
HAS_LITERT = importlib.util.find_spec("ai_edge_litert") is not None
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="tf2onnx/onnx/onnxruntime not installed: pip install 'cxr_tf[onnx]'")
needs_litert = pytest.mark.skipif(not HAS_LITERT, reason="ai-edge-litert not installed: pip install 'cxr_tf[tflite]'")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model, train CXRDataset, held-out CXRDataset, run folder) on real kermany224 images."""
    d = os.environ.get("CXR_DATA_DIR")
    if not d or not (Path(d) / "kermany224").is_dir():
        pytest.skip("CXR_DATA_DIR/kermany224 not present: real-data export tests skipped")
    import keras

    from cxr_tf.data import image_dataset
    from cxr_tf.datasets import load_dataset, save_splits
    from cxr_tf.models import build_model
    from tests.conftest import make_kermany_subset

    root = tmp_path_factory.mktemp("portable")
    data = make_kermany_subset(Path(d) / "kermany224", root / "data", 60, 30, 30, seed=3)
    ds = load_dataset(data, "kermany", classes="pneumonia")
    # patient-level split: whole patients go to train or test
    patients = np.array(sorted(set(ds.patient_ids)))
    rng = np.random.default_rng(0)
    test_patients = set(rng.choice(patients, len(patients) // 2, replace=False))
    split = np.array(["test" if p in test_patients else "train" for p in ds.patient_ids], dtype=object)
    train, held = ds.subset(split == "train"), ds.subset(split == "test")
    keras.utils.set_random_seed(0)
    model = build_model("tiny_cnn", num_classes=2, image_size=S, head="gap", freeze_until=0,
                        class_names=ds.class_names, bn_momentum=0.9)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="categorical_crossentropy")
    xy = list(image_dataset(train, S).batch(len(train)))[0]
    model.fit(np.asarray(xy[0]), np.asarray(xy[1]), batch_size=16, epochs=4, verbose=0)

    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    model.save_weights(run / "checkpoints" / "best.weights.h5")
    (run / "model.json").write_text(json.dumps({"config": model.get_config()}))
    (run / "config.json").write_text(json.dumps({"data_dir": str(data), "format": "kermany"}))
    (run / "metrics.json").write_text(json.dumps({"threshold": 0.42}))
    save_splits(run / "splits.csv", ds, split)
    return model, train, held, run


def _raw(ds, n):
    return [decode_image(tf.io.read_file(str(p))).numpy() for p in list(ds.items)[:n]]


def _ready(ds):
    from cxr_tf.data import image_dataset

    return np.concatenate([np.asarray(x) for x, _ in image_dataset(ds, S).batch(64)])


# --------------------------------------------------------------------------- preprocessing
def test_numpy_preprocessing_equals_the_savedmodel_preprocessing(data_dir):
    """Real radiographs of many sizes (439-2566 px originals, RGB, 224 px) and a 16-bit image."""
    files = sorted((data_dir / "kermany_originals").rglob("*.jp*g"))[:6]
    files += sorted(p for p in (data_dir / "misc_images").iterdir() if p.is_file())[:2]
    files += sorted((data_dir / "kermany224" / "train" / "NORMAL").iterdir())[:1]
    assert len(files) >= 5
    raws = [decode_image(tf.io.read_file(str(f))).numpy() for f in files]
    raws.append(raws[0][:300, :517] * 257.0)  # 16-bit range, non-square
    raws.append(np.repeat(raws[1], 3, axis=-1) * np.array([0.8, 1.0, 1.1], np.float32))  # distinct RGB channels
    raws.append(np.full((50, 70, 1), 7.0, np.float32))  # constant: zeros, not NaN
    for raw in raws:
        for size in (S, 128, 224):
            want = prepare_float_batch(tf.constant(raw[None]), size).numpy()
            got = preprocess_images(raw[None], size)
            assert got.shape == want.shape == (1, size, size, 1) and got.dtype == np.float32
            assert np.abs(got - want).max() <= 1e-5, (raw.shape, size, np.abs(got - want).max())
    with pytest.raises(ValueError, match="finite"):
        preprocess_images(np.full((1, 8, 8, 1), np.nan), S)


# --------------------------------------------------------------------------- every format
def _runtime(path):
    """The file loaded by its own runtime directly (not through cxr_tf's wrapper)."""
    if path.suffix == ".onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: sess.run(["probabilities"], {"images": x})[0]
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner("serving_default")
    return lambda x: runner(images=x)["probabilities"]


CASES = [pytest.param("onnx", q, marks=needs_onnx) for q in ("none", "dynamic", "int8")]
CASES += [pytest.param("tflite", q, marks=needs_litert) for q in ("none", "float16", "dynamic", "int8")]


@pytest.mark.slow
@pytest.mark.parametrize("fmt,quantize", CASES)
def test_export_runs_in_its_own_runtime_like_keras(trained, tmp_path, fmt, quantize):
    model, train, held, _ = trained
    res = export_model(model, fmt, quantize=quantize, out=tmp_path, name="kermany_tiny", train_data=train,
                       heldout_data=held, threshold=0.42, max_drop=0.1)
    assert res.path.is_file() and res.path.suffix == f".{fmt}" and res.path.parent == tmp_path
    x = _ready(held)
    want = model.predict(x, verbose=0)
    got = _runtime(res.path)(x)
    diff = np.abs(got - want).max()
    if quantize == "none":
        assert diff <= 1e-5, diff
    else:
        assert diff <= PREDICTION_TOLERANCE[quantize], diff
        assert res.metadata["heldout"]["drop"]["accuracy"] <= 0.1
    # the shipped NumPy preprocessing on decoded real files gives the same predictions (one image
    # per call on both sides: dynamic quantisation scales activations per batch)
    run = _runtime(res.path)
    for i, r in enumerate(_raw(held, 4)):
        np.testing.assert_allclose(run(preprocess_images(r[None], S)), run(x[i:i + 1]), atol=1e-5)
    meta = json.loads(res.metadata_path.read_text())
    assert meta["class_names"] == ["normal", "pneumonia"] and meta["image_size"] == S
    assert meta["threshold"] == 0.42 and meta["format"] == fmt and meta["quantize"] == quantize
    assert meta["verification"]["images"] == 16 and meta["heldout"]["images"] == len(held)
    if quantize == "int8":
        assert meta["int8_calibration"]["split"] == "train"
    card = res.model_card_path.read_text()
    assert "normal, pneumonia" in card and "0.42" in card and str(S) in card
    assert (tmp_path / "preprocess_np.py").is_file()


@pytest.mark.slow
def test_savedmodel_through_the_same_entry_point(trained, tmp_path):
    model, train, held, _ = trained
    res = export_model(model, "savedmodel", out=tmp_path, name="kermany_tiny", train_data=train, heldout_data=held,
                       threshold=0.42)
    assert (res.path / "saved_model.pb").is_file() and res.model_card_path.is_file()
    assert res.metadata["verification"]["max_abs_diff_vs_keras"] <= 1e-5
    stored = json.loads(res.metadata_path.read_text())
    assert stored["threshold"] == 0.42 and stored["verification"]["images"] == 16
    assert stored["heldout"]["images"] == len(held)
    # served from the encoded files, the float SavedModel scores exactly what Keras scores
    assert stored["heldout"]["export"] == pytest.approx(stored["heldout"]["keras"], abs=1e-9)


# --------------------------------------------------------------------------- named errors
@pytest.mark.slow
@needs_litert
def test_int8_export_beyond_the_tolerance_is_refused_unless_forced(trained, tmp_path):
    model, train, held, _ = trained
    # a one-image calibration sets poor activation ranges: a real, measurable drop
    kw = dict(quantize="int8", train_data=train, heldout_data=held, n_calibration=1, name="m")
    kept = export_model(model, "tflite", out=tmp_path / "forced", force=True, max_drop=0.0, **kw)
    drop = kept.metadata["heldout"]["drop"]
    worst = max(v for v in drop.values() if v is not None)
    assert worst > 0 and kept.metadata["heldout"]["forced"] is True
    with pytest.raises(CXRQuantizationError, match="refused"):
        export_model(model, "tflite", out=tmp_path / "refused", max_drop=worst / 2, **kw)
    assert not list((tmp_path / "refused").glob("*.tflite"))  # nothing half-written left


@pytest.mark.slow
@needs_onnx
def test_broken_onnx_opset_is_a_named_error(trained, tmp_path):
    model, train, held, _ = trained
    with pytest.raises(CXRConversionError, match="opset 5"):
        export_model(model, "onnx", opset=5, out=tmp_path, train_data=train, heldout_data=held)
    assert not list(tmp_path.glob("*.onnx"))


def test_missing_converter_names_the_extra(trained, tmp_path, monkeypatch):
    model, train, held, _ = trained
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # import fails as if not installed
    with pytest.raises(CXRExportDependencyError, match=r"pip install 'cxr_tf\[onnx\]'"):
        export_model(model, "onnx", out=tmp_path, train_data=train, heldout_data=held)


# --------------------------------------------------------------------------- CLI on a run folder
@pytest.mark.slow
@needs_onnx
def test_cli_exports_a_run_folder_with_its_data_threshold_and_split(trained, tmp_path, capsys):
    from cxr_tf.cli import main

    model, _, held, run = trained
    out = tmp_path / "exp"
    assert main(["export", "--model", str(run), "--format", "onnx", "--out", str(out)]) == 0
    onnx_file = next(out.glob("*.onnx"))
    meta = json.loads(onnx_file.with_name(onnx_file.name + ".metadata.json").read_text())
    assert meta["threshold"] == 0.42 and meta["heldout"]["images"] == len(held)  # the run's test split
    assert meta["metadata"]["run_dir"] == str(run)
    # the copied preprocess_np.py works on its own (NumPy only), with ONNX Runtime
    spec = importlib.util.spec_from_file_location("standalone_pp", out / "preprocess_np.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    raw = _raw(held, 2)
    got = _runtime(onnx_file)(np.concatenate([mod.preprocess_images(r, S) for r in raw]))
    want = model.predict(prepare_float_batch(tf.constant(np.stack(raw)), S).numpy(), verbose=0)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # a refused quantisation is one line and exit code 2
    capsys.readouterr()
    assert main(["export", "--model", str(run), "--format", "onnx", "--opset", "5", "--out", str(out),
                 "--name", "bad"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cxr_tf: error:") and "opset 5" in err[0]


@pytest.mark.slow
@needs_litert
def test_a_savedmodel_folder_is_a_source_through_its_run(trained, tmp_path):
    """run folder -> SavedModel (its own Keras config and variables) -> TFLite from saved_models/NAME/VERSION."""
    model, train, held, run = trained
    sm = export_model(run, "savedmodel", out=tmp_path / "saved_models", name="kermany_tiny")
    assert sm.path == tmp_path / "saved_models" / "kermany_tiny" / "1"
    # the export holds no machine path, so the check images come from the caller (--data-dir / --splits)
    with pytest.raises(CXRConfigError, match="training and held-out data are unknown"):
        export_model(str(sm.path), "tflite", out=tmp_path / "exp0")
    res = export_model(str(sm.path), "tflite", out=tmp_path / "exp", train_data=train, heldout_data=held)
    meta = res.metadata
    assert meta["source"] == f"SavedModel {sm.path}" and meta["threshold"] == 0.42
    assert meta["heldout"]["images"] == len(held) and meta["verification"]["max_abs_diff_vs_keras"] <= 1e-5
    x = _ready(held)
    np.testing.assert_allclose(_runtime(res.path)(x), model.predict(x, verbose=0), atol=1e-5)
    with pytest.raises(CXRModelError, match="no resolver for .nosuch:."):
        export_model("nosuch:compact", "onnx")


def test_a_preset_is_a_source(trained, tmp_path):
    """preset:FOLDER -> TFLite, with the preset's threshold; the data come from the caller."""
    from cxr_tf.models import save_preset

    model, train, held, _ = trained
    save_preset(model, tmp_path / "tiny_pre", {"name": "tiny_pre", "class_names": model.class_names,
                                               "image_size": S, "thresholds": {"pneumonia": 0.37}},
                weights_dtype="float32")
    res = export_model(f"preset:{tmp_path / 'tiny_pre'}", "savedmodel", out=tmp_path / "sm",
                       train_data=train, heldout_data=held)
    assert res.metadata["threshold"] == 0.37 and res.metadata["source"].startswith("preset tiny_pre")
    assert res.metadata["verification"]["max_abs_diff_vs_keras"] <= 1e-5


def test_quality_measures_binary_multiclass_and_multilabel():
    from cxr_tf.export.portable import quality

    y = np.array([0, 1, 1, 0])
    p = np.array([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3], [0.2, 0.8]], np.float32)
    assert quality(y, p) == {"accuracy": 0.5, "auc": 0.5}
    # the threshold acts on P(class 1) = [0.1, 0.6, 0.3, 0.8]
    assert quality(y, p, threshold=0.25)["accuracy"] == 0.75 and quality(y, p, threshold=0.9)["accuracy"] == 0.5
    assert quality(np.array([1, 1, 1, 1]), p)["auc"] is None  # one class only: no AUC
    y3 = np.array([0, 1, 2])
    assert quality(y3, np.eye(3, dtype=np.float32)) == {"accuracy": 1.0, "auc": 1.0}
    ym = np.array([[1, 0], [0, np.nan], [1, 1]], np.float32)
    pm = np.array([[0.9, 0.2], [0.1, 0.9], [0.6, 0.7]], np.float32)
    assert quality(ym, pm, multilabel=True) == {"accuracy": 1.0, "auc": 1.0}  # the NaN label is left out
    assert quality(ym, pm, threshold=0.65, multilabel=True)["accuracy"] == 0.8  # 0.6 < 0.65: one of 5 known labels wrong
