"""Heat-map and overlay images (uint8 RGB) from an image and its CAM, and PNG writing."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def heatmap_rgb(cam: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """``(H, W)`` map in [0, 1] -> ``(H, W, 3)`` uint8 through a matplotlib colormap."""
    import matplotlib

    rgb = matplotlib.colormaps[cmap](np.clip(np.asarray(cam, np.float32), 0, 1))[..., :3]
    return (rgb * 255).round().astype(np.uint8)


def gray_rgb(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` / ``(H, W, 1)`` image in [0, 1] -> ``(H, W, 3)`` uint8."""
    g = np.asarray(image, np.float32)
    g = g[..., 0] if g.ndim == 3 else g
    g = (np.clip(g, 0, 1) * 255).round().astype(np.uint8)
    return np.repeat(g[..., None], 3, -1)


def overlay_rgb(image: np.ndarray, cam: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Blend the heat map over the gray image (``alpha`` = heat-map weight)."""
    out = (1 - alpha) * gray_rgb(image).astype(np.float32) + alpha * heatmap_rgb(cam).astype(np.float32)
    return out.round().clip(0, 255).astype(np.uint8)


def save_triplet(image: np.ndarray, cam: np.ndarray, out_dir: str | os.PathLike, stem: str) -> list[Path]:
    """Write ``<stem>_image.png``, ``<stem>_heatmap.png`` and ``<stem>_overlay.png``."""
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind, arr in (("image", gray_rgb(image)), ("heatmap", heatmap_rgb(cam)), ("overlay", overlay_rgb(image, cam))):
        p = out_dir / f"{stem}_{kind}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


def overlay_grid(images, cams, cols: int = 4) -> np.ndarray:
    """Overlays side by side in a grid ``(rows*H, cols*W, 3)`` uint8 (for TensorBoard)."""
    tiles = [overlay_rgb(i, c) for i, c in zip(images, cams)]
    if not tiles:
        raise ValueError("overlay_grid needs at least one image")
    h, w, _ = tiles[0].shape
    cols = min(cols, len(tiles))
    rows = -(-len(tiles) // cols)
    grid = np.zeros((rows * h, cols * w, 3), np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = t
    return grid


def display_gray(image: np.ndarray) -> np.ndarray:
    """An unscaled ``(H, W)`` image (any range, e.g. 10-bit DICOM) in [0, 1] for display.

    The 0.5th-99.5th percentiles are stretched: a few saturated pixels (text, collimator
    edges) would otherwise leave the lungs a flat gray.
    """
    g = np.asarray(image, np.float32)
    g = g[..., 0] if g.ndim == 3 else g
    lo, hi = np.percentile(g, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(g.min()), float(g.max())
    return np.clip((g - lo) / max(hi - lo, 1e-6), 0, 1)


def resize_map(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A CAM computed at the model's input size, bilinearly resized to ``shape`` (H, W).

    The model saw the image resized (aspect not kept) to a square; resizing the map back
    to the original height and width undoes that same mapping.
    """
    import tensorflow as tf

    c = tf.image.resize(np.asarray(cam, np.float32)[..., None], shape, method="bilinear").numpy()[..., 0]
    return np.clip(c, 0, 1)


def save_explanation(image: np.ndarray, cam: np.ndarray, out_dir: str | os.PathLike, stem: str, *,
                     label: str, title: str = "", alpha: float = 0.4, cmap: str = "jet") -> dict[str, Path]:
    """Write the explanation of one image at its original resolution.

    ``<stem>_overlay.png``: the image with the heat map blended in, exactly the original
    height x width, with ``label`` (class, probability, method) drawn in its corner;
    ``<stem>_heatmap.png``: the map alone at that size; ``<stem>_panel.png``: image and
    overlay side by side with a colour bar and ``title``.

    Args:
        image: the original ``(H, W)`` pixels, any range (see :func:`display_gray`).
        cam: the map ``(h, w)`` in [0, 1] at the model's input size.
        out_dir: output folder (created).
        stem: file-name prefix.
        label: text drawn on the overlay, e.g. ``"pneumonia p=0.93 | gradcam"``.
        title: the panel's title (e.g. the file name and layer).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gray = display_gray(image)
    h, w = gray.shape
    big = resize_map(cam, (h, w))
    paths = {k: out_dir / f"{stem}_{k}.png" for k in ("overlay", "heatmap", "panel")}

    dpi = 100
    fig = plt.figure(figsize=(w / dpi, h / dpi), dpi=dpi)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(gray, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.imshow(big, cmap=cmap, vmin=0, vmax=1, alpha=alpha, interpolation="nearest")
    ax.set_axis_off()
    # one line per " | " part; text about 1/30 of the image height, narrowed until the longest
    # line fits the width (a glyph is ~0.6 em wide); points = pixels * 72 / dpi
    lines = label.split(" | ")
    px = max(min(h / 30, 0.95 * w / (0.6 * max(map(len, lines)))), 5)
    ax.text(0.01 * w, 0.01 * h, "\n".join(lines), color="white", va="top", ha="left", fontsize=px * 72 / dpi,
            bbox=dict(facecolor="black", alpha=0.6, pad=2, edgecolor="none"))
    fig.savefig(paths["overlay"], dpi=dpi)
    plt.close(fig)

    from PIL import Image

    Image.fromarray(heatmap_rgb(big, cmap)).save(paths["heatmap"])

    fig, axes = plt.subplots(1, 2, figsize=(10, 5.4), dpi=dpi, layout="constrained")
    axes[0].imshow(gray, cmap="gray", vmin=0, vmax=1)
    axes[0].set_title(f"image ({w}x{h})")
    axes[1].imshow(gray, cmap="gray", vmin=0, vmax=1)
    im = axes[1].imshow(big, cmap=cmap, vmin=0, vmax=1, alpha=alpha)
    axes[1].set_title(label)
    for a in axes:
        a.set_axis_off()
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.02, label="relevance (map max = 1)")
    if title:
        fig.suptitle(title)
    fig.savefig(paths["panel"], dpi=dpi)
    plt.close(fig)
    return paths
