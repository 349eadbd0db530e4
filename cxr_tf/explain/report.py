"""CAMs in experiments: overlays to TensorBoard and the per-model border-band check."""
from __future__ import annotations

import numpy as np

from cxr_tf.explain.cam import Explainer, border_mass, uniform_border_share
from cxr_tf.explain.overlay import overlay_grid


def log_overlays_to_tensorboard(log_dir, images, cams, tag: str = "cam_overlays", step: int = 0,
                                description: str = "") -> None:
    """One image summary: a grid of CAM overlays (image + heat map)."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default():
        tf.summary.image(tag, overlay_grid(images, cams)[None], step=step, description=description)
    writer.flush()


def border_report(model, images, method: str = "gradcam", band: float = 0.1, batch_size: int = 16,
                  layer: str | None = None, max_n: int | None = 32) -> tuple[dict, np.ndarray]:
    """The shortcut check over a set of images (e.g. the test split).

    Returns:
        ``(summary, cams)``: summary has the mean / median border share, the share of a
        uniform map (``uniform``), the fraction of images above it, ``n``, the method,
        the target layer, its grid (``cam_grid``, e.g. ``"7x7"``) and ``resolves_border``:
        False when the grid is under 3 cells on a side, since then every cell touches the
        image border and the share reflects the upsampling, not where the evidence is
        (e.g. ResNet at 64 px: a 2x2 grid); use a larger image size for the check.
    """
    ex = Explainer(model, method, layer=layer, max_n=max_n)
    shape = model.get_layer(ex.layer).output.shape
    grid = (int(shape[1]), int(shape[2])) if len(shape) == 4 and shape[1] and shape[2] else None
    x = np.asarray(images, np.float32)
    cams = np.concatenate([ex(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    share = border_mass(cams, band)
    ok = share[np.isfinite(share)]
    uni = uniform_border_share(band)
    summary = {
        "method": method, "layer": ex.layer, "band": band, "n": int(len(ok)),
        "border_share_mean": float(ok.mean()) if len(ok) else float("nan"),
        "border_share_median": float(np.median(ok)) if len(ok) else float("nan"),
        "uniform": uni,
        "fraction_above_uniform": float((ok > uni).mean()) if len(ok) else float("nan"),
        "cam_grid": f"{grid[0]}x{grid[1]}" if grid else "",
        "resolves_border": bool(grid and min(grid) >= 3),
    }
    return summary, cams
