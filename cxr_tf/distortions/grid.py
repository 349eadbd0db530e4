"""A pair-grid figure: every distortion at a few severities on one image."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from cxr_tf.distortions import get_distortion, list_distortions
from cxr_tf.distortions.traditional import check_image


def distortion_grid(image, out_path: str | os.PathLike, names: Sequence[str] | None = None,
                    severities: Sequence[float] = (0.25, 0.5, 1.0), seed: int = 0, title: str | None = None) -> str:
    """Write a PNG: one row per distortion, columns = reference then each severity.

    Args:
        image: gray float ``(H, W)`` in [0, 1].
        out_path: PNG to write.
        names: registered distortion names (default: every registered one).
        severities: the severity of each column.
        seed: random seed of each distortion's draws (same draw across severities).
    Returns:
        ``out_path`` as a string.
    """
    names = list(names or list_distortions())
    return _grid_from({n: get_distortion(n) for n in names}, image, out_path, severities, seed, title)


def _grid_from(dists: dict, image, out_path, severities=(0.25, 0.5, 1.0), seed: int = 0, title=None) -> str:
    """:func:`distortion_grid` over explicit Distortion objects (e.g. unregistered CNN ones)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = check_image(image)
    names = list(dists)
    ncol = 1 + len(severities)
    fig, axes = plt.subplots(len(names), ncol, figsize=(1.6 * ncol, 1.6 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        d = dists[name]
        row = [img] + [d.apply(img, s, np.random.default_rng(seed))[0] for s in severities]
        for c, a in enumerate(row):
            ax = axes[r, c]
            ax.imshow(a, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("reference" if c == 0 else f"severity {severities[c - 1]:g}", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{name}\n({d.family})", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / (1.6 * len(names))) if title else None)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return os.fspath(out_path)
