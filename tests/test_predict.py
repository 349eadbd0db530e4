"""``cxr-tf predict`` on real kermany224 JPEGs and real DICOMs, through a tiny preset, a run
folder and a SavedModel; the decision rule; the skip list."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cxr_tf.cli import main as cli_main
from cxr_tf.models import build_model
from cxr_tf.models import presets as P
from cxr_tf.cli.predict import decide, find_images, predict_files

S = 48
CLASSES = ["normal", "pneumonia"]


@pytest.fixture
def preset(tmp_path, monkeypatch):
    """A tiny preset in a private user cache (name ``tiny``, threshold 0.5 + a margin)."""
    monkeypatch.setenv("CXR_TF_HOME", str(tmp_path / "home"))
    import keras

    keras.utils.set_random_seed(0)  # the same model every run
    m = build_model("tiny_cnn", num_classes=2, image_size=S, head="gap", freeze_until=0, class_names=CLASSES)
    rng = np.random.default_rng(0)
    for w in m.weights:
        w.assign(w.numpy() + rng.normal(0, 0.3, w.shape).astype("float32"))
    P.save_preset(m, tmp_path / "home" / "presets" / "tiny", {"thresholds": {"pneumonia": 0.5}})
    return m


@pytest.fixture
def real_files(kermany_dir, data_dir):
    jpgs = sorted((kermany_dir / "train" / "NORMAL").glob("*.jpeg"))[:3] + \
        sorted((kermany_dir / "train" / "PNEUMONIA").glob("*.jpeg"))[:3]
    dicom = data_dir / "dicom"
    if not dicom.is_dir():
        pytest.skip("dicom/ not present")
    return [str(p) for p in jpgs], dicom


def test_predict_real_jpegs_and_dicoms(preset, real_files, tmp_path, capsys):
    jpgs, dicom_dir = real_files
    bad = tmp_path / "broken.jpeg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "pred" / "predictions.csv"
    assert cli_main(["predict", "--model", "preset:tiny", *jpgs, str(dicom_dir), str(bad), "--out", str(out)]) == 0
    df = pd.read_csv(out)
    dicoms = sorted(str(p) for p in dicom_dir.iterdir() if p.suffix == ".dcm")
    assert list(df.columns) == ["path", "p_normal", "p_pneumonia", "predicted", "decision", "threshold"]
    assert list(df["path"]) == jpgs + dicoms  # the folder's CSV index is not an image
    np.testing.assert_allclose(df[["p_normal", "p_pneumonia"]].sum(1), 1.0, atol=1e-5)
    assert (df["threshold"] == 0.5).all()
    assert ((df["p_pneumonia"] >= 0.5) == (df["decision"] == "pneumonia")).all()
    # the JPEG 2000 file and its decoded twin hold the same pixels: the same probabilities
    j2k = df.set_index("path").loc[[str(dicom_dir / "RG1_J2KI.dcm"), str(dicom_dir / "RG1_J2KI_decoded_uncompressed.dcm")]]
    np.testing.assert_allclose(j2k.iloc[0, :2].astype(float), j2k.iloc[1, :2].astype(float), atol=1e-6)
    skipped = pd.read_csv(tmp_path / "pred" / "predictions_skipped.csv")
    assert list(skipped["path"]) == [str(bad)] and skipped["cause"].str.len().min() > 5
    # the same files through the training pipeline's decoder (tf.data, encoded bytes) and the
    # Keras model: the CSV holds what the model gives for the image it was trained on
    import tensorflow as tf

    from cxr_tf.data import prepare_image

    x = np.stack([tf.function(lambda b: prepare_image(b, S))(tf.io.read_file(f)).numpy() for f in jpgs[:2]])
    np.testing.assert_allclose(df[["p_normal", "p_pneumonia"]].to_numpy()[:2], preset.predict(x, verbose=0),
                               atol=2e-3)  # fp16 kernels in the preset
    assert "1 skipped" in capsys.readouterr().out


def test_threshold_override_and_on_error_raise(preset, real_files, tmp_path, capsys):
    jpgs, _ = real_files
    s = predict_files("preset:tiny", jpgs, str(tmp_path / "a.csv"), threshold=0.0, verbose=0)
    assert s["threshold_source"] == "--threshold" and s["images"] == len(jpgs) and s["skip_list"] is None
    assert (pd.read_csv(tmp_path / "a.csv")["decision"] == "pneumonia").all()
    bad = tmp_path / "x.png"
    bad.write_bytes(b"")
    assert cli_main(["predict", "--model", "preset:tiny", jpgs[0], str(bad), "--on-error", "raise",
                     "--out", str(tmp_path / "b.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0]
    assert not (tmp_path / "b.csv").exists()
    assert cli_main(["predict", "--model", str(tmp_path / "no_model"), jpgs[0]]) == 2


def test_predict_from_run_folder_and_savedmodel(preset, real_files, tmp_path):
    """The other two --model forms give the same numbers as the Keras model."""
    from cxr_tf.export import export_for_serving

    jpgs, dicom_dir = real_files
    files = jpgs[:2] + [str(dicom_dir / "CR-MONO1-10-chest.dcm")]
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    preset.save_weights(str(run / "checkpoints" / "best.weights.h5"))
    (run / "model.json").write_text(json.dumps({"config": preset.get_config()}))
    (run / "metrics.json").write_text(json.dumps({"threshold": 0.61}))
    (run / "config.json").write_text(json.dumps({"experiment": "x"}))  # a run's config is not a preset's
    s = predict_files(str(run), files, str(tmp_path / "run.csv"), verbose=0)
    by_run = pd.read_csv(tmp_path / "run.csv")
    assert s["thresholds"] == {"pneumonia": 0.61} and (by_run["threshold"] == 0.61).all()
    res = export_for_serving(preset, tmp_path / "saved_models", "tiny", class_names=CLASSES, image_size=S,
                             metadata={"threshold": 0.33})
    s = predict_files(str(res.path), files, str(tmp_path / "sm.csv"), verbose=0)
    by_sm = pd.read_csv(tmp_path / "sm.csv")
    assert s["thresholds"] == {"pneumonia": 0.33}
    np.testing.assert_allclose(by_sm[["p_normal", "p_pneumonia"]], by_run[["p_normal", "p_pneumonia"]], atol=1e-5)


def test_decide_rules():
    prob = np.array([[0.2, 0.8], [0.7, 0.3]])
    assert decide(prob, CLASSES, False, {"pneumonia": 0.9}) == (["normal", "normal"], [0.9, 0.9])
    assert decide(prob, CLASSES, False, {})[0] == ["pneumonia", "normal"]  # 0.5 without a threshold
    three = np.array([[0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    assert decide(three, ["a", "b", "c"], False, {"c": 0.99}) == (["c", "a"], ["", ""])  # argmax
    # per-class thresholds: the served graph's rule (most probable class over its threshold)
    from cxr_tf.export import decision_rule

    t = {"a": 0.45, "b": 0.25, "c": 0.7}  # row 1: only b passes; row 2: a and b pass, a is larger
    dec, _ = decide(three, ["a", "b", "c"], False, t)
    assert dec == ["b", "a"]
    assert [["a", "b", "c"][i] for i in decision_rule(three, class_thresholds=list(t.values()))] == dec
    dec, thr = decide(three, ["a", "b", "c"], True, {"a": 0.05})
    assert dec == ["a;c", "a"] and thr[0] == "a=0.05;b=0.5;c=0.5"


def test_find_images_filters_folders(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a.PNG", "sub/b.dcm", "sub/noext", "labels.csv", ".hidden.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert find_images([tmp_path]) == [str(tmp_path / "a.PNG"), str(tmp_path / "sub/b.dcm"),
                                       str(tmp_path / "sub/noext")]
    assert find_images([str(tmp_path / "notes.txt")]) == [str(tmp_path / "notes.txt")]  # named: always tried


def test_predict_keras_file_multiclass_without_real_data(tmp_path):
    """A .keras file and a 3-class model: argmax decisions, empty threshold column."""
    from PIL import Image

    m = build_model("tiny_cnn", num_classes=3, image_size=S, head="gap", freeze_until=0,
                    class_names=["normal", "bacteria", "virus"])
    m.save(tmp_path / "m.keras")
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 255, (40 + 10 * k, 50), dtype=np.uint8)).save(tmp_path / f"i{k}.png")
    s = predict_files(str(tmp_path / "m.keras"), [tmp_path], str(tmp_path / "out.csv"), verbose=0)
    df = pd.read_csv(tmp_path / "out.csv")
    assert s["images"] == 3 and list(df.columns[1:4]) == ["p_normal", "p_bacteria", "p_virus"]
    assert (df["decision"] == df["predicted"]).all() and df["threshold"].isna().all()
    assert (df["predicted"] == df[["p_normal", "p_bacteria", "p_virus"]].idxmax(1).str[2:]).all()


def test_predict_ensemble_and_tta_add_uncertainty_and_match_the_served_bytes(preset, real_files, tmp_path):
    from cxr_tf.export import export_for_serving, load_exported

    jpgs, _ = real_files
    res = export_for_serving(preset, tmp_path / "saved_models", "tiny", class_names=CLASSES, image_size=S,
                             threshold=0.4)
    s = predict_files(str(res.path), jpgs, str(tmp_path / "one.csv"), verbose=0)
    one = pd.read_csv(tmp_path / "one.csv")
    assert s["thresholds"] == {"pneumonia": 0.4}
    # predict decodes as the served graph does: equal to serving_default on the encoded bytes
    served = load_exported(res.path).predict_bytes([open(f, "rb").read() for f in jpgs])
    np.testing.assert_allclose(one[["p_normal", "p_pneumonia"]].to_numpy(), served, atol=1e-5)
    assert cli_main(["predict", "--model", str(res.path), "--model", "preset:tiny", *jpgs,
                     "--out", str(tmp_path / "ens.csv")]) == 0
    ens = pd.read_csv(tmp_path / "ens.csv")
    assert {"entropy", "mutual_information"} <= set(ens.columns)
    # two copies of one model (fp16 preset vs fp32 export): nearly no disagreement
    assert ens["mutual_information"].max() < 1e-3
    predict_files("preset:tiny", jpgs, str(tmp_path / "tta.csv"), verbose=0, tta=4)
    tta = pd.read_csv(tmp_path / "tta.csv")
    assert (tta["entropy"] >= 0).all() and tta["mutual_information"].max() > 0
