"""Decode-once cache: files the graph cannot decode as they are become 16-bit PNGs.

DICOM is decoded once, outside the graph, then cached, so the tf.data pipeline
only ever sees formats ``tf.io.decode_image`` reads.
"""
from __future__ import annotations

import hashlib
import os


import numpy as np
from PIL import Image

from ._common import DEFAULT_MAX_PIXELS
from .atomic import atomic_write


def cache_key(path: str | os.PathLike) -> str:
    """Hex key of (absolute path, size, mtime): a changed or moved file gets a new entry.

    Args:
        path: the source file.
    """
    path = os.fspath(path)
    st = os.stat(path)
    raw = f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}".encode("utf-8", "surrogateescape")
    return hashlib.sha256(raw).hexdigest()[:32]


def to_uint16_minmax(img: np.ndarray) -> np.ndarray:
    """Per-image min-max scale to uint16 ``[0, 65535]`` (constant image -> zeros).

    Non-finite values map to the minimum so one bad pixel cannot break the image.

    Args:
        img: 2-D array in any range.
    """
    x = np.array(img, dtype=np.float64)  # one working copy, then in-place (memory budget)
    finite = np.isfinite(x)
    if not finite.any():
        return np.zeros(x.shape, np.uint16)
    all_finite = bool(finite.all())
    lo, hi = (float(x.min()), float(x.max())) if all_finite else (float(x[finite].min()), float(x[finite].max()))
    if not all_finite:
        x[~finite] = lo
    del finite
    if hi <= lo:
        return np.zeros(x.shape, np.uint16)
    x -= lo
    x *= 65535.0 / (hi - lo)
    np.rint(x, out=x)
    np.clip(x, 0, 65535, out=x)
    return x.astype(np.uint16)


def cache_path(path: str | os.PathLike, cache_dir: str | os.PathLike) -> str:
    """Where the decoded PNG of ``path`` lives in ``cache_dir`` (it may not exist yet)."""
    return os.path.join(os.fspath(cache_dir), cache_key(path) + ".png")


def write_cache(pixels: np.ndarray, out: str) -> str:
    """Write decoded pixels as the 16-bit gray PNG ``out`` (min-max scaled, atomically).

    The PNG holds pixels only: no text chunks, no DICOM header.
    """
    data = to_uint16_minmax(pixels)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    # no pnginfo given, so no metadata chunks: pixels only
    return atomic_write(out, lambda f: Image.fromarray(data).save(f, format="PNG"))


def to_png_cache(
    path: str | os.PathLike,
    cache_dir: str | os.PathLike,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> str:
    """Prove ``path`` decodes and return a path the graph decodes the same way.

    PNG and JPEG files the graph's own decoder reads as they are (checked with that
    very decoder) are returned unchanged. Anything else (DICOM, TIFF, NPY, BMP, GIF,
    CMYK JPEG, 16-bit colour PNG, EXIF-rotated JPEG) is decoded with
    :func:`read_image`, min-max scaled to uint16 and written as a grayscale PNG named
    by :func:`cache_key`, so later calls reuse it. See :mod:`cxr_tf.io.graph`.

    Args:
        path: source image.
        cache_dir: folder for cached PNGs (created if missing).
        max_pixels: passed to :func:`read_image`.

    Raises:
        CXRImageError: the source cannot be decoded.
    """
    from .validate import graph_input

    return graph_input(path, max_pixels=max_pixels, cache_dir=cache_dir)
