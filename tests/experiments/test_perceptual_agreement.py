"""perceptual_agreement: real judgments win over the proxy; scores match their definition."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from cxr_tf.errors import CXRDatasetError  # noqa: E402
from cxr_tf.experiments import perceptual_agreement as pa  # noqa: E402
from cxr_tf.experiments import perceptual_testset as pt  # noqa: E402
from cxr_tf.perceptual import bapps  # noqa: E402
from cxr_tf.perceptual.distances import l2  # noqa: E402
from cxr_tf.training.config import parse_config  # noqa: E402


@pytest.fixture(scope="module")
def testset(tmp_path_factory):
    root = tmp_path_factory.mktemp("agree") / "ts"
    pt.run(parse_config(pt.PerceptualTestsetConfig, ["--smoke", "--cnn", "false", "--grid", "false",
                                                     "--n-2afc", "24", "--n-jnd", "16", "--out-dir", str(root)]))
    return root


def _run(testset, tmp_path, *extra):
    cfg = parse_config(pa.PerceptualAgreementConfig, ["--testset", str(testset), "--runs-dir", str(tmp_path),
                                                      "--n-boot", "40", "--image-size", "32", *extra])
    out = pa.run(cfg)
    return pd.read_csv(out / "results.csv"), (out / "results.md").read_text(), out


def test_proxy_is_labelled_and_follows_severity(testset, tmp_path):
    man = bapps.read_manifest(testset)
    two = man[man["kind"] == "2afc"]
    j = pa.proxy_judgments(two, "2afc", 5, 0.0, 0.1, 0)  # noiseless oracle: unanimous, lower severity wins
    for _, r in two.iterrows():
        assert j[r["id"]] == float(r["severity_p1"] < r["severity_p0"])
    jn = pa.proxy_judgments(man[man["kind"] == "jnd"], "jnd", 5, 0.0, 0.1, 0)
    assert all(v == float(s < 0.1) for v, s in zip(jn.values(), man[man["kind"] == "jnd"]["severity_p1"]))
    df, md, out = _run(testset, tmp_path, "--lin", "false")
    assert (df["judgments"] == "PROXY (severity oracle)").all()
    assert "PROXY RATER, NOT HUMAN JUDGMENTS" in md
    assert set(df["distance"]) == {"L2", "1-SSIM", "1-MS-SSIM", "deep[random:tiny_cnn]"}
    assert ((df["ci_low"] <= df["score"] + 1e-9) & (df["score"] <= df["ci_high"] + 1e-9)).all()
    assert not (testset / "2afc" / "traditional" / "judge").exists()  # proxy never written as judgments


def test_real_judgments_are_used_when_present(testset, tmp_path):
    import shutil

    root = tmp_path / "judged"
    shutil.copytree(testset, root)
    # "raters" who judge exactly by L2 on 2AFC, and call the 5 L2-closest JND pairs same
    it = bapps.read_items(root, "2afc", "traditional", judgments={f"{i:06d}": 0.0 for i in range(24)})
    d0, d1 = l2(it.images["ref"], it.images["p0"]), l2(it.images["ref"], it.images["p1"])
    for iid, a, b in zip(it.ids, d0, d1):
        bapps.write_judgment(root, "2afc", "traditional", iid, float(b < a))
    jt = bapps.read_items(root, "jnd", "traditional", judgments={f"{i:06d}": 0.0 for i in range(16)})
    d = l2(jt.images["p0"], jt.images["p1"])
    close = set(np.argsort(d, kind="stable")[:5])
    for k, iid in enumerate(jt.ids):
        bapps.write_judgment(root, "jnd", "traditional", iid, float(k in close))
    df, md, out = _run(root, tmp_path, "--lin", "false")
    assert (df["judgments"] == "real raters").all() and "PROXY RATER" not in md
    row = lambda kind: df[(df["distance"] == "L2") & (df["kind"] == kind)]["score"].item()
    assert row("2afc") == 1.0 and row("jnd") == pytest.approx(1.0)
    items = pd.read_csv(out / "item_distances.csv", dtype={"id": str})
    np.testing.assert_allclose(items[items["kind"] == "2afc"]["L2_d0"], d0, rtol=1e-5)
    # --judgments proxy overrides; --judgments real refuses a test set without judgments
    df2, md2, _ = _run(root, tmp_path, "--lin", "false", "--judgments", "proxy")
    assert (df2["judgments"].str.startswith("PROXY")).all()
    with pytest.raises(CXRDatasetError, match="no judge"):
        _run(testset, tmp_path, "--judgments", "real")


def test_lin_variant_scored(testset, tmp_path):
    df, md, _ = _run(testset, tmp_path)
    lin = df[df["distance"] == "deep[random:tiny_cnn]+lin"]
    assert set(lin["kind"]) >= {"2afc", "jnd"} and lin["score"].between(0, 1).all()
