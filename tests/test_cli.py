"""``cxr-tf`` command line: augment-grid (an inspectable grid of augmented images)."""
import numpy as np
import pytest
import tensorflow as tf

from cxr_tf.cli import main
from cxr_tf.datasets.synthetic import write_synthetic_folder


@pytest.fixture
def pngs(tmp_path):
    ds = write_synthetic_folder(tmp_path / "films", n=3, image_size=48, seed=0)
    return [str(p) for p in ds.items]


def _tiles(path, size, header=14):
    """The grid below its column-label strip, cut into tiles."""
    full = tf.io.decode_png(open(path, "rb").read()).numpy()[..., 0].astype(float)
    labels, grid = full[:header], full[header:]
    assert labels.max() > 128 and labels.min() < 64  # white text on black: the columns are labelled
    rows, cols = grid.shape[0] // size, grid.shape[1] // size
    return grid, [[grid[r * size:(r + 1) * size, c * size:(c + 1) * size] for c in range(cols)] for r in range(rows)]


@pytest.mark.parametrize("policy", ["moderate+clahe", "strong+mixup", "s2+cutmix"])
def test_augment_grid_writes_png_of_expected_size(pngs, tmp_path, capsys, policy):
    out = tmp_path / "grid.png"
    argv = ["augment-grid", *pngs, "--policy", policy, "--image-size", "32", "--n", "4", "--seed", "3"]
    assert main(argv + ["--out", str(out)]) == 0 and f"wrote {out}" in capsys.readouterr().out
    grid, tiles = _tiles(out, 32)
    assert grid.shape == (3 * 32, (1 + 4) * 32)  # a row per image: the original, then 4 draws
    for row in tiles:
        original, draws = row[0], row[1:]
        assert original.std() > 10  # a real film, not a blank tile
        assert all(np.abs(d - original).mean() > 1 for d in draws)  # augmented ...
        assert np.abs(draws[0] - draws[1]).mean() > 1  # ... and each draw differs
    # the originals are the input films (prepared at 32 px), one per row
    assert all(np.abs(tiles[r][0] - tiles[r + 1][0]).mean() > 1 for r in range(2))
    # the same --seed writes the same grid (MixUp / CutMix included), another seed another one
    assert main(argv + ["--out", str(tmp_path / "again.png")]) == 0
    assert (tmp_path / "again.png").read_bytes() == out.read_bytes()
    argv[-1] = "4"
    assert main(argv + ["--out", str(tmp_path / "other.png")]) == 0
    assert (tmp_path / "other.png").read_bytes() != out.read_bytes()


def test_augment_grid_unknown_policy_is_a_clear_error(pngs, tmp_path, capsys):
    out = tmp_path / "grid.png"
    rc = main(["augment-grid", pngs[0], "--policy", "moderate+sparkles", "--out", str(out)])
    assert rc == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "cxr_tf: error: unknown augmentation extra 'sparkles'" in err and "Traceback" not in err


# --------------------------------------------------------------------------- help, train, extras, inspect
def test_train_help_lists_every_experiment_with_a_description(capsys):
    from cxr_tf.cli import _experiments

    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for name in _experiments():
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(name + " "))
        assert len(line.split(None, 1)[1]) > 10, line  # a real one-line description
    assert "pneumonia_freeze" in out and "layer-indexed freezing" in out
    assert main(["train"]) == 2  # no experiment: the list, on stderr, and a usage error
    err = capsys.readouterr().err
    assert "deep_covid" in err and "name an experiment" in err
    assert main(["train", "no_such_experiment"]) == 2
    assert "unknown experiment 'no_such_experiment'" in capsys.readouterr().err


@pytest.mark.parametrize("argv,expected", [
    (["--help"], ["train", "evaluate", "explain", "inspect", "judge"]),
    (["evaluate", "--help"], ["auto,kermany,folder,npz,csv", "raise,skip"]),
    (["explain", "--help"], ["gradcam,gradcam++,scorecam", "7x7"]),
    (["augment-grid", "--help"], ["moderate", "mixup", "clahe"]),
    (["distortion-grid", "--help"], ["pink_noise", "jpeg"]),
    (["inspect", "--help"], ["--raw", "threshold"]),
    (["info", "--help"], ["usage"]),
    (["judge", "--help"], ["serve", "add-rater", "export"]),
    (["judge", "serve", "--help"], ["--testset", "--port"]),
])
def test_every_subcommand_help_exits_0_and_lists_its_choices(argv, expected, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps long lines
    for word in expected:
        assert word in out, (argv, word)


def test_help_names_match_the_registries():
    from cxr_tf.cli import EXTRA_NAMES, POLICY_NAMES
    from cxr_tf.data.augment import EXTRAS, POLICIES

    assert set(POLICY_NAMES) == set(POLICIES) and set(EXTRA_NAMES) == set(EXTRAS)


def test_missing_optional_extra_is_one_line_with_the_install_hint(pngs, tmp_path, capsys, monkeypatch):
    """perceptual_testset / distortion-grid without OpenCV: the hint, never ``No module named 'cv2'``."""
    import sys

    from cxr_tf.errors import CXRConfigError
    from cxr_tf.perceptual.testset import _to_unit

    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 -> ImportError, as without the extra
    with pytest.raises(CXRConfigError, match=r"pip install 'cxr_tf\[perceptual\]'"):
        _to_unit(np.zeros((4, 4)), 2)
    assert main(["distortion-grid", pngs[0], "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert "cxr_tf: error:" in err and "cxr_tf[perceptual]" in err and "Traceback" not in err
    monkeypatch.setitem(sys.modules, "tf_keras_vis", None)
    from cxr_tf.explain.cam import _require_tf_keras_vis

    with pytest.raises(CXRConfigError, match=r"pip install 'cxr_tf\[explain\]'"):
        _require_tf_keras_vis()


def test_no_raw_optional_imports_left():
    """Every import of an optional extra's module goes through require_optional (or a guarded try)."""
    import re
    from pathlib import Path

    import cxr_tf

    root = Path(cxr_tf.__file__).parent
    raw = []
    for f in root.rglob("*.py"):
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if re.match(r"\s*(import|from)\s+(cv2|tf_keras_vis|albumentations)\b", line):
                raw.append(f"{f.relative_to(root)}:{n}")
    # tf_keras_vis submodules are imported inside Explainer, after _require_tf_keras_vis
    assert all(r.startswith("explain/cam.py") for r in raw), raw


def test_inspect_prints_classes_size_threshold_and_signatures(tmp_path, capsys):
    import keras

    from cxr_tf.export import export_for_serving

    inp = keras.Input((16, 16, 1))
    out = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(
        keras.layers.Conv2D(2, 3)(inp)))
    res = export_for_serving(keras.Model(inp, out, name="m"), tmp_path, "m", class_names=["normal", "pneumonia"],
                             image_size=16, threshold=0.968)
    assert main(["inspect", str(res.path)]) == 0
    text = capsys.readouterr().out
    assert "classes:     normal, pneumonia" in text and "image size:  16 x 16" in text
    assert "threshold:   0.968" in text and "serving_default: (image_bytes string [N])" in text
    assert main(["inspect", str(tmp_path / "missing")]) == 2
