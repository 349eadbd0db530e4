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


def cam_sample(labels, n: int) -> np.ndarray:
    """Up to ``n`` indices of ``labels`` for the CAM check, as even over the classes as they
    allow and spread evenly through each class (a split that lists items by source would
    otherwise give ``n`` images of one class from one collection)."""
    labels = np.asarray(labels)
    per = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    take = dict.fromkeys(per, 0)
    for _ in range(min(n, len(labels))):  # one more from the class with the fewest taken that has any left
        c = min((c for c in per if take[c] < len(per[c])), key=lambda c: (take[c], c))
        take[c] += 1
    picks = [idx[np.linspace(0, len(idx) - 1, take[c]).round().astype(int)] for c, idx in per.items() if take[c]]
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, int)


def cam_check(model, images, run, name: str, method: str, step: int = 0) -> dict:
    """Border-band share of CAM mass over ``images`` (:func:`border_report`), an overlay grid
    in TensorBoard (``<run>/tensorboard/<name>``) and as ``<run>/<name>/<method>_overlays.png``;
    ``cam_seconds`` in the summary says what the maps cost."""
    import time
    from pathlib import Path

    from PIL import Image

    t = time.time()
    summary, cams = border_report(model, images, method=method)
    summary["cam_seconds"] = round(time.time() - t, 1)
    show = np.linspace(0, len(images) - 1, min(16, len(images))).round().astype(int)  # spread over the classes
    log_overlays_to_tensorboard(Path(str(run)) / "tensorboard" / name, images[show], cams[show],
                                tag=f"{method}_test_overlays", step=step,
                                description=f"{method} on {summary['layer']}, test images")
    grid = Image.fromarray(overlay_grid(images[show], cams[show]))  # the same grid as a file, 3x for viewing
    out = Path(str(run)) / name
    out.mkdir(exist_ok=True)
    grid.resize((grid.width * 3, grid.height * 3), Image.NEAREST).save(out / f"{method}_overlays.png")
    return summary
