"""The test-set builder: BAPPS layout, manifest, balance, reproducibility from a seed."""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from cxr_tf.distortions import TRADITIONAL, apply_distortion  # noqa: E402
from cxr_tf.experiments import perceptual_testset as pt  # noqa: E402
from cxr_tf.perceptual import bapps  # noqa: E402

ARGS = ["--smoke", "--cnn", "false", "--grid", "false", "--n-2afc", "38", "--n-jnd", "19"]


def _build(tmp_path, name, *extra):
    out = tmp_path / name
    from cxr_tf.training.config import parse_config

    cfg = parse_config(pt.PerceptualTestsetConfig, ARGS + ["--out-dir", str(out), *extra])
    pt.run(cfg)
    return out


def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "build_info.json"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    t = tmp_path_factory.mktemp("ts")
    return _build(t, "a"), _build(t, "b"), _build(t, "c", "--seed", "1")


def test_layout_and_manifest(built):
    root = built[0]
    man = bapps.read_manifest(root)
    assert list(man.columns) == bapps.MANIFEST_COLUMNS
    assert len(man) == 38 + 19 and set(man["subset"]) == {"traditional"}
    for _, r in man.iterrows():
        folders = ("ref", "p0", "p1") if r["kind"] == "2afc" else ("p0", "p1")
        for f in folders:
            assert (root / r["kind"] / r["subset"] / f / f"{r['id']}.png").is_file()
        json.loads(r["params_p0"]), json.loads(r["params_p1"])
    from PIL import Image

    im = Image.open(root / "2afc" / "traditional" / "ref" / "000000.png")
    assert im.mode == "L" and im.size == (32, 32)
    jnd = man[man["kind"] == "jnd"]
    assert (jnd["distortion_p0"] == "none").all() and (jnd["severity_p1"] <= 0.4).all()
    # JND p0 is the reference itself
    a = bapps.read_png(root / "jnd" / "traditional" / "p0" / "000000.png")
    src = man[(man["kind"] == "2afc") & (man["source_image"] == jnd.iloc[0]["source_image"])]
    if len(src):
        ref = bapps.read_png(root / "2afc" / "traditional" / "ref" / f"{src.iloc[0]['id']}.png")
        assert np.array_equal(a, ref)


def test_balance_across_distortions(built):
    man = bapps.read_manifest(built[0])
    two = man[man["kind"] == "2afc"]
    for col in ("distortion_p0", "distortion_p1"):
        c = Counter(two[col])
        assert set(c) == set(TRADITIONAL) and max(c.values()) - min(c.values()) <= 1
    assert (two["distortion_p0"] == two["distortion_p1"]).sum() >= 38 // 2
    c = Counter(man[man["kind"] == "jnd"]["distortion_p1"])
    assert max(c.values()) - min(c.values()) <= 1 and len(c) == 19
    assert man["severity_p0"][man["kind"] == "2afc"].between(0.1, 1).all()


def test_same_seed_identical_other_seed_differs(built):
    a, b, c = built
    da, db, dc = _digest(a), _digest(b), _digest(c)
    assert da == db
    assert set(da) == set(dc) and sum(da[k] != dc[k] for k in da) > 0.9 * len(da)


def test_manifest_regenerates_an_item(built):
    root = built[0]
    man = bapps.read_manifest(root)
    r = man[man["kind"] == "2afc"].iloc[5]
    rng = np.random.default_rng(int(r["seed"]))
    rng.uniform(0.1, 1.0, 2)  # the two severities were drawn first
    ref = bapps.read_png(root / "2afc" / "traditional" / "ref" / f"{r['id']}.png")
    p0 = bapps.read_png(root / "2afc" / "traditional" / "p0" / f"{r['id']}.png")
    # the recorded params reproduce p0 up to the 8-bit rounding of the stored reference
    out, params = apply_distortion(r["distortion_p0"], ref, float(r["severity_p0"]), rng)
    assert params == json.loads(r["params_p0"])
    assert np.abs(out - p0).mean() < 3 / 255


def test_read_items_with_judgments(built, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(built[0], root)
    bapps.write_judgment(root, "2afc", "traditional", "000003", 0.25)
    bapps.write_judgment(root, "2afc", "traditional", "000001", 1.0)
    assert np.load(root / "2afc/traditional/judge/000003.npy").shape == (1,)
    items = bapps.read_items(root, "2afc", "traditional")
    assert items.ids == ["000001", "000003"] and items.judgments.tolist() == [1.0, 0.25]
    assert items.images["ref"].shape == (2, 32, 32) and list(items.manifest["id"]) == items.ids
    bapps.write_judgment(root, "2afc", "traditional", "999999", 0.5)
    with pytest.raises(Exception, match="not in the manifest"):
        bapps.read_items(root, "2afc", "traditional")


def test_refuses_non_empty_out_dir(built):
    from cxr_tf.errors import CXRConfigError
    from cxr_tf.training.config import parse_config

    with pytest.raises(CXRConfigError, match="not empty"):
        pt.run(parse_config(pt.PerceptualTestsetConfig, ARGS + ["--out-dir", str(built[0])]))


@pytest.mark.slow
def test_real_kermany_with_cnn_subset(kermany_dir, tmp_path):
    from cxr_tf.training.config import parse_config

    out = tmp_path / "k"
    cfg = parse_config(pt.PerceptualTestsetConfig, ["--smoke", "--data-dir", str(kermany_dir), "--out-dir", str(out),
                                                    "--n-2afc", "8", "--n-jnd", "4", "--gan-steps", "2"])
    pt.run(cfg)
    man = bapps.read_manifest(out)
    cnn = man[(man["subset"] == "cnn") & (man["kind"] == "2afc")]
    assert set(cnn["distortion_p0"]) == {"dae", *pt.GAN_VARIANTS}
    assert (out / "distortion_grid.png").is_file()
    # test images come from patients the CNN distortions never trained on: one image per patient
    from cxr_tf.datasets.sources import kermany_patient_id

    info = json.loads((out / "build_info.json").read_text())
    test_p = {kermany_patient_id(Path(s).name) for s in man["source_image"]}
    train_p = {kermany_patient_id(Path(s).name) for s in info["cnn_training_images"]}
    assert len(set(man["source_image"])) == 6 and len(info["cnn_training_images"]) == 16
    assert test_p <= set(info["test_patients"]) and not (test_p & train_p)
