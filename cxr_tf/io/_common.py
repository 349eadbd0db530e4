"""Shared helpers of :mod:`cxr_tf.io`: the pixel limit, file checks, luminance."""
from __future__ import annotations

import os

import numpy as np

from cxr_tf.errors import CXRImageError

#: Default ceiling on width x height of one image (100 megapixels). The largest
#: radiographs are ~4,300 x 4,300 (18 MP); anything far beyond is a corrupt or
#: hostile header, and checking it before decoding avoids a huge allocation.
DEFAULT_MAX_PIXELS = 100_000_000

# ITU-R BT.601 luma weights, as integers over 1000 so a gray image stored as three
# equal channels comes back exactly (1000 * x / 1000), whatever its bit depth.
_LUMA_601 = (299, 587, 114)


def check_readable_file(path: str, error=CXRImageError) -> int:
    """Raise ``error`` unless ``path`` is an existing, non-empty regular file.

    Args:
        path: file to check.
        error: error class to raise (``CXRImageError`` or a subclass).

    Returns:
        The file size in bytes.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(path, "file not found") from None
    except OSError as e:
        raise error(path, f"cannot access file: {e.strerror or e}") from None
    if os.path.isdir(path):
        raise error(path, "is a directory, not an image file")
    if st.st_size == 0:
        raise error(path, "file is empty (0 bytes)")
    return st.st_size


def check_pixels(path: str, width: int, height: int, max_pixels: int | None, error=CXRImageError) -> None:
    """Refuse a declared image size that is empty or over ``max_pixels``.

    Args:
        path: file the size was read from (for the message).
        width: declared width in pixels.
        height: declared height in pixels.
        max_pixels: limit on ``width * height``; ``None`` disables the check.
        error: error class to raise.
    """
    if width <= 0 or height <= 0:
        raise error(path, f"claims {width}x{height} pixels: the image is empty or its header is corrupt")
    if max_pixels is not None and width * height > max_pixels:
        raise error(
            path,
            f"claims {width}x{height} pixels, over the limit of {max_pixels} "
            "(pass a larger max_pixels= if the image is genuine)",
        )


def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luminance of an ``(H, W, >=3)`` array, as float32 ``(H, W)``.

    Float arithmetic keeps 16-bit precision (Pillow's ``"L"`` would cut to 8 bits).
    """
    x = np.asarray(rgb, dtype=np.float64)
    wr, wg, wb = _LUMA_601
    y = (wr * x[..., 0] + wg * x[..., 1] + wb * x[..., 2]) / 1000.0
    return y.astype(np.float32)


def as_gray_float32(arr: np.ndarray, path: str, error=CXRImageError) -> np.ndarray:
    """Turn a decoded ``(H, W)``, ``(H, W, 1)``, ``(H, W, 2)`` (gray+alpha) or
    ``(H, W, 3|4)`` array into a contiguous float32 ``(H, W)`` array.

    Args:
        arr: decoded pixels.
        path: file they came from (for the message).
        error: error class to raise on an unusable shape.
    """
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] in (1, 2):
        arr = arr[..., 0]  # gray, or gray + alpha: alpha is not image content
    elif arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = luminance(arr)
    if arr.ndim != 2:
        raise error(path, f"decoded to an array of shape {arr.shape}; expected a 2-D grayscale or RGB image")
    if arr.size == 0:
        raise error(path, f"decoded to an empty image of shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise error(path, f"has pixel type {arr.dtype}; expected real numbers")
    return np.ascontiguousarray(arr, dtype=np.float32)


def atomic_write(path: str, write, mode: str = "wb", **open_kwargs) -> str:
    """Write ``path`` via a temporary file in the same folder and ``os.replace``.

    Concurrent workers or an interrupted run never leave a half-written file under
    ``path``. ``write(f)`` receives the open temporary file.
    """
    import tempfile

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path
