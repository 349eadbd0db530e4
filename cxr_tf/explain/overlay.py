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
