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
    import errno
    import stat

    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise error(path, f"broken symbolic link (its target {_link_target(path)} does not exist)") from None
        raise error(path, "file not found") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise error(path, "symbolic link loop (the link resolves to itself)") from None
        raise error(path, f"cannot access file: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(path, "is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise error(path, "is not a regular file (a device, pipe or socket)")
    if st.st_size == 0:
        raise error(path, "file is empty (0 bytes)")
    return st.st_size


def _link_target(path: str) -> str:
    try:
        return repr(os.readlink(path))
    except OSError:
        return "?"


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


def decoded_bytes(width: int, height: int, channels: int, bits: int) -> int:
    """Bytes the decoded samples of an image take (the unit of the per-image budget)."""
    return int(width) * int(height) * max(int(channels), 1) * max((int(bits) + 7) // 8, 1)


def budget_bytes(max_pixels: int | None) -> int | None:
    """The per-image decode budget: ``max_pixels`` 16-bit gray pixels (2 bytes each).

    A 16-bit grayscale radiograph at the pixel limit fits; a 16-bit RGBA image fits
    at a quarter of it. Peak memory of one decode is a small multiple of this
    (measured in tests/reliability/test_hostile_inputs.py).
    """
    return None if max_pixels is None else 2 * int(max_pixels)


def check_budget(path: str, width: int, height: int, channels: int, bits: int, max_pixels: int | None,
                 error=CXRImageError) -> int:
    """:func:`check_pixels`, then refuse an image whose decoded samples exceed the budget.

    Returns:
        The decoded size in bytes (what the validation scheduler reserves).
    """
    check_pixels(path, width, height, max_pixels, error)
    need = decoded_bytes(width, height, channels, bits)
    limit = budget_bytes(max_pixels)
    if limit is not None and need > limit:
        raise error(
            path,
            f"{width}x{height} pixels x {channels} channel(s) x {bits} bits needs {need / 1e6:.0f} MB decoded, "
            f"over the per-image budget of {limit / 1e6:.0f} MB (max_pixels={max_pixels} 16-bit gray pixels; "
            "pass a larger max_pixels= if the image is genuine)",
        )
    return need


def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luminance of an ``(H, W, >=3)`` array, as float32 ``(H, W)``.

    Float arithmetic keeps 16-bit precision (Pillow's ``"L"`` would cut to 8 bits).
    Integer input is weighted in uint32 (exact: 1000 * 65535 fits) one channel at a
    time, so a 16-bit RGBA image costs about 4 + 4 + 8 bytes per pixel on top of its
    own 8, not a float64 copy of all four channels (the 62 bytes per pixel of issue 14).
    """
    x = np.asarray(rgb)
    wr, wg, wb = _LUMA_601
    if np.issubdtype(x.dtype, np.integer) and x.dtype.itemsize <= 2 and not np.issubdtype(x.dtype, np.signedinteger):
        acc = np.multiply(x[..., 0], wr, dtype=np.uint32)
        acc += np.multiply(x[..., 1], wg, dtype=np.uint32)
        acc += np.multiply(x[..., 2], wb, dtype=np.uint32)
        # float32 is enough: 1000 * x = 8 * 125x with 125x < 2**24 is exact in float32,
        # so equal channels still come back exactly, and no float64 copy is made.
        y = acc.astype(np.float32)
        del acc
        y /= 1000.0
        return y
    acc = np.multiply(x[..., 0], wr, dtype=np.float64)
    acc += np.multiply(x[..., 1], wg, dtype=np.float64)
    acc += np.multiply(x[..., 2], wb, dtype=np.float64)
    acc /= 1000.0
    return acc.astype(np.float32)


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
    out = np.ascontiguousarray(arr, dtype=np.float32)
    # A few NaN pixels are tolerated (the cache maps them to the minimum), but an image
    # with no finite pixel at all has no content: every path would see zeros.
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(out).any():
        raise error(path, "has no finite pixel values (all NaN or infinite)")
    return out


def display_name(path) -> str:
    """A file's name fit for a plot title or a log line: bytes that are not valid UTF-8
    (kept as surrogates in Python paths) become U+FFFD, which fonts can draw."""
    return os.path.basename(os.fspath(path)).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
