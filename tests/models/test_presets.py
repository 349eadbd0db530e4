"""Presets: format, metadata round trip, fp16 storage, the resolver's order and errors,
the loopback download, build_model / from_preset semantics and the ``presets`` CLI."""
from __future__ import annotations

import functools
import http.server
import json
import threading
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from cxr_tf.cli import main as cli_main
from cxr_tf.errors import (
    CXRArchitectureError,
    CXRChecksumError,
    CXRConfigError,
    CXRPresetNotFoundError,
    CXRWeightsError,
)
from cxr_tf.models import CXRClassifier, build_model, list_presets
from cxr_tf.models import presets as P
from cxr_tf.models.weights import resolve_weights

S = 32
CLASSES = ["normal", "pneumonia"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private user cache and an empty embedded folder (the package's stays untouched)."""
    monkeypatch.setenv("CXR_TF_HOME", str(tmp_path / "home"))
    embedded = tmp_path / "embedded"
    embedded.mkdir()
    monkeypatch.setattr(P, "embedded_dir", lambda: embedded)
    monkeypatch.setattr(P, "_REMOTE", {})
    return tmp_path


def tiny(seed=0, classes=CLASSES, head="fc16", noise=0.2):
    """A tiny classifier with weights far from their initial values (so a copy shows)."""
    keras.utils.set_random_seed(seed)  # initial weights too: the same model every run
    m = build_model("tiny_cnn", num_classes=len(classes), image_size=S, head=head, freeze_until=0,
                    class_names=list(classes))
    rng = np.random.default_rng(seed)
    for w in m.weights:
        w.assign(w.numpy() + rng.normal(0, noise, w.shape).astype("float32"))
    return m


def images(n=6, seed=1):
    return np.random.default_rng(seed).random((n, S, S, 1)).astype("float32")


FULL_META = {
    "description": "tiny test preset",
    "thresholds": {"pneumonia": 0.37},
    "calibration": {"method": "temperature", "T": 1.25, "fit_on": "val"},
    "training_data": [{"source": "kermany224", "images": 4100, "licence": "CC BY 4.0", "split": "train"},
                      {"source": "covid19_radiography", "images": 400, "licence": "Kaggle terms"}],
    "metrics": {"kermany224 test (patients held out)": {"macro_auc": {"value": 0.91, "ci95": [0.88, 0.94]},
                                                        "specificity_normal": {"value": 0.8, "ci95": [0.7, 0.87]}}},
    "limitations": ["over-calls pneumonia on adult normals"],
    "command": "python -m cxr_tf.experiments.x --flag",
    "git_commit": "abc123",
    "future_key": {"kept": True},  # a key this version does not know survives a round trip
}


def test_metadata_round_trip_and_card(home):
    m = tiny()
    out = P.save_preset(m, home / "p1", FULL_META, weights_dtype="float32")
    assert sorted(x.name for x in out.iterdir()) == ["MODEL_CARD.md", "config.json", "metadata.json",
                                                     "model.weights.h5"]
    p = P.read_preset(out)
    meta = p.metadata
    for k, v in FULL_META.items():
        if k != "future_key":
            assert getattr(meta, k) == v, k
    assert meta.extra == {"future_key": {"kept": True}}
    assert meta.name == "p1" and meta.class_names == CLASSES and meta.image_size == S
    assert meta.weights_sha256 == P.sha256_file(out / P.WEIGHTS_FILE)
    assert P.PresetMetadata.from_dict(meta.to_dict()) == meta
    assert p.backbone == "tiny_cnn" and p.config["input"]["range"] == [0.0, 1.0]
    card = (out / P.CARD_FILE).read_text()
    assert "NOT FOR CLINICAL USE" in card
    assert "| kermany224 | 4,100 | CC BY 4.0 |" in card
    assert "| kermany224 test (patients held out) | macro_auc | 0.910 | [0.880, 0.940] |" in card
    assert "| pneumonia | 0.3700 |" in card and "over-calls pneumonia" in card and meta.weights_sha256 in card


@pytest.mark.parametrize("bad, match", [
    ({"thresholds": {"covid": 0.5}}, "not one of the classes"),
    ({"thresholds": {"pneumonia": 1.5}}, r"\[0, 1\]"),
    ({"training_data": [{"source": "x", "images": 3}]}, "licence"),
    ({"metrics": {"t": {"auc": {"value": 0.9, "ci95": [0.92, 0.95]}}}}, "ci95"),
    ({"class_names": ["a", "b"]}, "differ from the model"),
])
def test_bad_metadata_is_refused_and_writes_nothing(home, bad, match):
    with pytest.raises(CXRConfigError, match=match):
        P.save_preset(tiny(), home / "bad", bad)
    assert not (home / "bad").exists() and not list(home.glob(".bad.*"))


def test_fp16_weights_match_fp32_predictions(home):
    m = tiny(noise=0.02)
    x = images()
    ref = m.predict(x, verbose=0)
    assert 0.05 < ref.min() and ref.max() < 0.95  # not saturated: a 1e-3 bound means something
    p16 = P.save_preset(m, home / "h", weights_dtype="float16")
    p32 = P.save_preset(m, home / "f", weights_dtype="float32")
    with h5py.File(p16 / P.WEIGHTS_FILE) as f:
        dtypes = {}
        f.visititems(lambda n, o: dtypes.__setitem__(n, (o.dtype, o.ndim)) if isinstance(o, h5py.Dataset) else None)
    assert any(dt == np.float16 for dt, nd in dtypes.values() if nd >= 2)
    assert all(dt == np.float32 for dt, nd in dtypes.values() if nd < 2)  # BN statistics keep their digits
    assert (p16 / P.WEIGHTS_FILE).stat().st_size < (p32 / P.WEIGHTS_FILE).stat().st_size
    got16 = CXRClassifier.from_preset(p16).predict(x, verbose=0)
    got32 = CXRClassifier.from_preset(p32).predict(x, verbose=0)
    assert np.abs(got32 - ref).max() < 1e-5
    assert np.abs(got16 - ref).max() < 1e-3
    k16 = CXRClassifier.from_preset(p16).get_layer("block2_conv").get_weights()[0]
    k = m.get_layer("block2_conv").get_weights()[0]
    assert not np.array_equal(k16, k) and np.allclose(k16, k, rtol=1e-3, atol=1e-6)  # really rounded


def _write(home, where, name, desc):
    base = {"cache": home / "home" / "presets", "embedded": home / "embedded", "folder": home / "local"}[where]
    return P.save_preset(tiny(), base / name, {"description": desc})


def test_lookup_order_folder_cache_embedded_remote(home, monkeypatch):
    _write(home, "embedded", "same", "embedded copy")
    assert P.load_preset("preset:same").source == "embedded"
    _write(home, "cache", "same", "cache copy")
    p = P.load_preset("preset:same")
    assert (p.source, p.metadata.description) == ("cache", "cache copy")
    local = _write(home, "folder", "same", "local copy")
    p = P.load_preset(f"preset:{local}")
    assert (p.source, p.metadata.description) == ("folder", "local copy")
    monkeypatch.chdir(home / "local")  # a relative folder name is a local folder first
    assert P.load_preset("same").source == "folder"
    (home / "local" / "other").mkdir()  # ... but only when it holds a preset
    _write(home, "cache", "other", "cached other")
    assert P.load_preset("other").source == "cache"
    assert list_presets() == ["other", "same"]


def test_missing_name_lists_available(home, capsys):
    _write(home, "cache", "alpha", "a")
    _write(home, "embedded", "beta", "b")
    with pytest.raises(CXRPresetNotFoundError, match="unknown preset 'gamma'; available: alpha, beta"):
        P.load_preset("preset:gamma")
    with pytest.raises(CXRPresetNotFoundError):
        build_model("tiny_cnn", num_classes=2, image_size=S, head="gap", freeze_until=0, weights="preset:gamma")
    assert cli_main(["presets", "show", "gamma"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cxr_tf: error: unknown preset 'gamma'")


def test_wrong_architecture_is_a_named_error(home):
    _write(home, "cache", "tinyp", "t")
    with pytest.raises(CXRArchitectureError, match="holds a 'tiny_cnn' backbone; this model is 'resnet18'"):
        build_model("resnet18", num_classes=2, image_size=S, weights="preset:tinyp")
    with pytest.raises(CXRArchitectureError):
        CXRClassifier.from_preset("tinyp", num_classes=3, backbone="squeezenet")


def test_corrupt_cached_weights_fail_checksum(home):
    out = _write(home, "cache", "c", "c")
    with open(out / P.WEIGHTS_FILE, "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\0" * 8)
    with pytest.raises(CXRChecksumError, match="differs from the metadata"):
        P.load_preset("c")


def test_build_model_and_from_preset_heads(home):
    m = tiny(seed=3)
    x = images()
    ref = m.predict(x, verbose=0)
    P.save_preset(m, home / "home" / "presets" / "own", weights_dtype="float32")
    # the preset's own classifier: classes omitted or equal
    own = CXRClassifier.from_preset("own")
    assert own.weights_loaded == "full" and own.preset.name == "own"
    np.testing.assert_allclose(own.predict(x, verbose=0), ref, atol=1e-6)
    same = build_model("tiny_cnn", num_classes=2, image_size=S, head="fc16", freeze_until=0,
                       class_names=CLASSES, weights="preset:own")
    assert same.weights_loaded == "full"
    np.testing.assert_allclose(same.predict(x, verbose=0), ref, atol=1e-6)
    # other classes: trunk from the preset, a new head
    new = CXRClassifier.from_preset("own", num_classes=3)
    assert new.weights_loaded == "trunk" and new.num_classes == 3 and new.weights_source == f"preset:{home}/home/presets/own"
    for name in m.backbone_layer_names:
        for a, b in zip(m.get_layer(name).get_weights(), new.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    fresh = build_model("tiny_cnn", num_classes=2, image_size=S, head="fc16", freeze_until=0, class_names=CLASSES)
    assert not np.allclose(fresh.get_layer("block1_conv").get_weights()[0], m.get_layer("block1_conv").get_weights()[0])
    # same classes but another head: trunk only
    other_head = build_model("tiny_cnn", num_classes=2, image_size=S, head="gap", freeze_until=0,
                             class_names=CLASSES, weights="preset:own")
    assert other_head.weights_loaded == "trunk"


def test_resolver_forms(home, tmp_path):
    pre = _write(home, "folder", "f", "f")
    assert resolve_weights(None).kind == resolve_weights("none").kind == "none"
    assert resolve_weights("imagenet").builder_arg() == "imagenet"
    assert resolve_weights(str(pre)).kind == "preset"  # a bare preset folder is a preset
    w = tmp_path / "trunk.keras"
    w.write_bytes(b"x")
    assert (resolve_weights(str(w)).kind, resolve_weights(str(w)).builder_arg()) == ("file", str(w))
    assert resolve_weights("run:some/run").path == "some/run"
    assert resolve_weights("ssl:enc").builder_arg() == "ssl:enc"
    with pytest.raises(CXRWeightsError, match=r"none \| imagenet \| PATH \| preset:NAME"):
        resolve_weights(str(tmp_path / "nowhere.h5"))


# ----------------------------------------------------------------------------- loopback download
@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving ``tmp_path/www``; ``server.hits`` counts GETs."""
    root = tmp_path / "www"
    root.mkdir()
    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    srv.root, srv.hits, srv.base = root, hits, f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def test_loopback_download_once_into_cache(home, server):
    m = tiny(seed=5)
    x = images()
    src = P.save_preset(m, home / "build" / "remote_tiny")
    sha = P.pack_preset(src, server.root / "remote_tiny.tar.gz")
    P.register_remote_preset("remote_tiny", f"{server.base}/remote_tiny.tar.gz", sha)
    assert "remote_tiny" in list_presets()
    p = P.load_preset("preset:remote_tiny")
    assert p.path == home / "home" / "presets" / "remote_tiny" and len(server.hits) == 1
    np.testing.assert_allclose(CXRClassifier.from_preset("remote_tiny").predict(x, verbose=0),
                               CXRClassifier.from_preset(src).predict(x, verbose=0), atol=0)
    assert P.load_preset("remote_tiny").source == "cache" and len(server.hits) == 1  # downloaded once
    # a URL given directly, with its checksum
    p = P.load_preset(f"{server.base}/remote_tiny.tar.gz#sha256={sha}")
    assert p.path.name == f"url-{sha[:16]}" and len(server.hits) == 2
    model = build_model("tiny_cnn", num_classes=3, image_size=S, head="gap", freeze_until=0,
                        weights=f"{server.base}/remote_tiny.tar.gz#sha256={sha}")
    assert model.weights_loaded == "trunk" and len(server.hits) == 2
    leftovers = [q.name for q in (home / "home" / "presets").iterdir()]
    assert sorted(leftovers) == sorted(["remote_tiny", f"url-{sha[:16]}"])


def test_bad_checksum_leaves_nothing(home, server):
    src = P.save_preset(tiny(), home / "build" / "x")
    sha = P.pack_preset(src, server.root / "x.tar.gz")
    wrong = ("0" if sha[0] != "0" else "1") + sha[1:]
    with pytest.raises(CXRChecksumError, match="nothing was cached"):
        P.load_preset(f"{server.base}/x.tar.gz#sha256={wrong}")
    P.register_remote_preset("xr", f"{server.base}/x.tar.gz", wrong)
    with pytest.raises(CXRChecksumError):
        P.load_preset("preset:xr")
    cache = home / "home" / "presets"
    assert list(cache.iterdir()) == []  # no partial file, no folder
    with pytest.raises(CXRConfigError, match="sha256"):
        P.load_preset(f"{server.base}/x.tar.gz")  # unchecked downloads are refused
    with pytest.raises(CXRWeightsError, match="download failed"):
        P.load_preset(f"{server.base}/missing.tar.gz#sha256={sha}")
    assert list(cache.iterdir()) == []


# ----------------------------------------------------------------------------- CLI
def test_presets_list_and_show_cli(home, capsys):
    assert cli_main(["presets", "list"]) == 0
    assert "no presets installed" in capsys.readouterr().out
    P.save_preset(tiny(), home / "home" / "presets" / "cached_one", {"description": "a cached preset"})
    P.save_preset(tiny(), home / "embedded" / "shipped", {"description": "an embedded preset"})
    P.register_remote_preset("far_away", "https://example.org/far.tar.gz", "a" * 64)
    assert cli_main(["presets", "list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == ["cached_one", "far_away", "shipped"]
    assert lines[0].split()[1:4] == ["cache", "tiny_cnn", f"{S}px"] and "classes=normal,pneumonia" in lines[0]
    assert "a cached preset" in lines[0] and "embedded" in lines[2] and "https://example.org/far.tar.gz" in lines[1]
    assert cli_main(["presets", "show", "shipped"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# shipped") and "an embedded preset" in out


def _fake_run(tmp_path, model) -> Path:
    """A finished run folder as pneumonia_freeze writes it (model.json, metrics.json, ...)."""
    from cxr_tf.evaluation import classification_metrics

    run = tmp_path / "runs" / "pneumonia_freeze" / "20260101T000000Z"
    (run / "checkpoints").mkdir(parents=True)
    model.save_weights(str(run / "checkpoints" / "best.weights.h5"))
    (run / "model.json").write_text(json.dumps({"config": model.get_config()}))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    p1 = np.clip(y * 0.6 + rng.random(60) * 0.5, 0, 1)
    metrics = classification_metrics(y, np.stack([1 - p1, p1], 1), CLASSES, threshold=0.42, n_boot=50)
    (run / "metrics.json").write_text(json.dumps({**metrics, "split": "test"}))
    (run / "config.json").write_text(json.dumps({"experiment": "pneumonia_freeze",
                                                 "data_dir": "/data/kermany224", "seed": 0}))
    (run / "environment.json").write_text(json.dumps({"argv": ["pneumonia_freeze.py", "--data-dir", "D"]}))
    (run / "splits.csv").write_text("item,patient,split\n" + "".join(
        f"i{k}.jpeg,p{k},{s}\n" for k, s in enumerate(["train"] * 7 + ["val"] * 2 + ["test"] * 3)))
    return run


def test_presets_save_from_run(home, tmp_path, capsys):
    m = tiny(seed=9)
    run = _fake_run(tmp_path, m)
    assert cli_main(["presets", "save", "--run", str(run), "--name", "from_run"]) == 0
    assert "wrote preset from_run" in capsys.readouterr().out
    p = P.load_preset("from_run")
    assert p.source == "cache" and p.metadata.thresholds == {"pneumonia": 0.42}
    assert p.metadata.training_data[0]["source"] == "kermany224"
    assert p.metadata.training_data[0]["images"] == 7 and "CC BY 4.0" in p.metadata.training_data[0]["licence"]
    (set_name, ms), = p.metadata.metrics.items()
    assert set_name.startswith("kermany224 test split") and ms["accuracy"]["ci95"][0] <= ms["accuracy"]["value"]
    assert {"accuracy", "macro_auc", "sensitivity", "specificity"} <= set(ms)  # binary: positive class's view
    assert p.metadata.command == "pneumonia_freeze.py --data-dir D"
    # which images it saw travels with it
    assert (p.path / "splits.csv").read_text() == (run / "splits.csv").read_text()
    assert p.metadata.extra["files"] == ["splits.csv"]
    x = images()
    assert np.abs(CXRClassifier.from_preset("from_run").predict(x, verbose=0) - m.predict(x, verbose=0)).max() < 1e-3
    assert cli_main(["presets", "save", "--run", str(run), "--name", "from_run"]) == 2  # exists: no silent overwrite
    assert cli_main(["presets", "save", "--run", str(tmp_path), "--name", "x"]) == 2


def test_cache_location_default_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv("CXR_TF_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert P.presets_home() == tmp_path / ".cache" / "cxr_tf" / "presets"
    monkeypatch.setenv("CXR_TF_HOME", str(tmp_path / "elsewhere"))
    assert P.presets_home() == tmp_path / "elsewhere" / "presets"
    assert P.embedded_dir() == Path(P.__file__).resolve().parents[1] / "presets"
    # the shipped remote index: every entry a URL with a full sha256 (checked downloads only)
    for name, e in json.loads((P.embedded_dir() / "remote.json").read_text()).items():
        assert P._NAME_RE.match(name) and e["url"].startswith("https://") and P._SHA_RE.match(e["sha256"])
