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
        uniform map (``uniform``), the fraction of images above it, ``n``, the method
        and the target layer.
    """
    ex = Explainer(model, method, layer=layer, max_n=max_n)
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
    }
    return summary, cams
