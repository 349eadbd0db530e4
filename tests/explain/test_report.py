"""log_overlays_to_tensorboard: the event file holds one PNG grid of the overlays, per call."""
from pathlib import Path

import numpy as np
import pytest

from cxr_tf.explain import log_overlays_to_tensorboard
from cxr_tf.explain.overlay import overlay_grid, overlay_rgb


def _image_events(log_dir: Path) -> list[tuple[int, str, str, list[bytes]]]:
    """(step, tag, plugin, tensor string values) of every summary value in ``log_dir``'s event files."""
    import tensorflow as tf

    out = []
    files = sorted(log_dir.glob("events.out.tfevents.*"))
    assert files, f"no event file in {log_dir}"
    for f in files:
        for ev in tf.compat.v1.train.summary_iterator(str(f)):
            for v in ev.summary.value:
                out.append((ev.step, v.tag, v.metadata.plugin_data.plugin_name,
                            list(tf.make_ndarray(v.tensor).ravel())))
    return out


def test_overlays_are_one_png_grid_per_call(tmp_path):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = rng.random((2, 12, 10, 1)).astype(np.float32)
    cams = np.zeros((2, 12, 10), np.float32)
    cams[0, :6] = 1.0  # top half hot
    cams[1, :, 5:] = 1.0  # right half hot
    log_overlays_to_tensorboard(tmp_path, images, cams, tag="val/cams", step=3, description="two images")
    log_overlays_to_tensorboard(tmp_path, images[:1], cams[:1], tag="val/cams", step=4)
    ev = sorted(e for e in _image_events(tmp_path) if e[1] == "val/cams")
    assert [(step, plugin) for step, _, plugin, _ in ev] == [(3, "images"), (4, "images")]
    # an image summary tensor is [width, height, PNG...]; one PNG per call
    w, h, *pngs = ev[0][3]
    assert (int(w), int(h), len(pngs)) == (20, 12, 1)  # 2 tiles side by side: 12 x (2 * 10)
    grid = tf.io.decode_png(pngs[0]).numpy()
    assert grid.shape == (12, 20, 3) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid, overlay_grid(images, cams))  # PNG is lossless
    np.testing.assert_array_equal(grid[:, :10], overlay_rgb(images[0], cams[0]))
    np.testing.assert_array_equal(grid[:, 10:], overlay_rgb(images[1], cams[1]))
    # the heat map shows where each CAM is hot (jet: dark red at 1, dark blue at 0)
    red_minus_blue = grid[..., 0].astype(int) - grid[..., 2].astype(int)
    assert (red_minus_blue[:6, :10] > 0).all() and (red_minus_blue[6:, :10] < 0).all()
    assert (red_minus_blue[:, 15:] > 0).all() and (red_minus_blue[:, 10:15] < 0).all()
    w1, h1, png1 = ev[1][3]
    assert (int(w1), int(h1)) == (10, 12) and tf.io.decode_png(png1).shape == (12, 10, 3)


def test_no_overlays_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="at least one image"):
        log_overlays_to_tensorboard(tmp_path, np.zeros((0, 4, 4, 1)), np.zeros((0, 4, 4)))


@pytest.mark.parametrize("size, layer, chosen, grid, resolves", [
    (64, None, "conv3_block2_out", "8x8", True),  # the automatic choice keeps a >= 7x7 map
    (128, None, "conv4_block2_out", "8x8", True),
    (64, "conv5_block2_out", "conv5_block2_out", "2x2", False),  # a coarse layer, asked for explicitly
])
def test_border_report_says_when_the_cam_grid_is_too_coarse(size, layer, chosen, grid, resolves):
    """ResNet18 downsamples by 32: at 64 px its last CAM is 2x2, every cell touches the border."""
    from cxr_tf.explain import border_report
    from cxr_tf.models import build_model

    model = build_model("resnet18", num_classes=2, image_size=size, head="gap", freeze_until=0, weights=None)
    x = np.random.default_rng(0).random((2, size, size, 1)).astype(np.float32)
    summary, cams = border_report(model, x, method="gradcam", layer=layer)
    assert summary["layer"] == chosen and summary["cam_grid"] == grid
    assert summary["resolves_border"] is resolves
    assert cams.shape == (2, size, size)
