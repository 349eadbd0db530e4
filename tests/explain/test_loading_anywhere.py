"""Every export explains from any working directory, in a process that never imported cxr_tf.models."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def test_export_and_keras_file_load_in_a_fresh_process_elsewhere(tmp_path):
    from cxr_tf.explain import attach_keras_model
    from cxr_tf.export import export_for_serving
    from cxr_tf.models import build_model

    clf = build_model("tiny_cnn", num_classes=2, image_size=32, head="gap", freeze_until=0,
                      class_names=["non_covid", "covid"])
    x = np.random.default_rng(0).random((2, 32, 32, 1)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "p.npy", clf.predict(x, verbose=0))
    plain = export_for_serving(clf, tmp_path / "sm", "plain", class_names=clf.class_names, image_size=32).path
    with_keras = export_for_serving(clf, tmp_path / "sm", "attached", class_names=clf.class_names, image_size=32).path
    attach_keras_model(with_keras, clf)  # the layout of older COVID exports
    # a config naming its weight file would break on any other machine or directory
    import json
    import zipfile

    with zipfile.ZipFile(with_keras / "assets.extra" / "cxr_tf_model.keras") as z:
        assert json.loads(z.read("config.json"))["config"]["weights"] is None
    code = (
        "import sys, numpy as np\n"
        "from cxr_tf.explain.loading import load_keras_model\n"  # not cxr_tf.models: the loader must register
        "x = np.load(sys.argv[1]); p = np.load(sys.argv[2])\n"
        "for path in sys.argv[3:]:\n"
        "    m = load_keras_model(path)\n"
        "    assert type(m).__name__ == 'CXRClassifier', type(m)\n"
        "    assert np.abs(m.predict(x, verbose=0) - p).max() < 1e-5\n"
        "print('ok')\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.npy"), str(tmp_path / "p.npy"), str(plain),
                          str(with_keras), str(with_keras / "assets.extra" / "cxr_tf_model.keras")],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
