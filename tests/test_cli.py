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
