"""Read any supported image file to a float32 ``(H, W)`` grayscale array with NumPy.

This is the eager, outside-the-graph reader (validation, caching, tools). Values
stay in the file's own range (0-255, 0-65535, DICOM modality units ...); scaling
happens in :mod:`cxr_tf.data.preprocess`, as for TF-decoded files.
"""
from __future__ import annotations

import os
import re

import numpy as np
from PIL import Image

from cxr_tf.errors import CXRImageError

from ._common import DEFAULT_MAX_PIXELS, as_gray_float32, check_pixels, luminance
from .dicom import check_window, decode_dicom
from .formats import declared_size, sniff_format

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "bmp": "BMP", "gif": "GIF", "tiff": "TIFF"}
# Pillow modes whose integer values exceed 8 bits: read them as arrays, never via "L".
_WIDE_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})


def read_image(
    path: str | os.PathLike,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    window: str | None = "voi",
) -> np.ndarray:
    """Decode an image file to a float32 ``(H, W)`` grayscale array, unscaled.

    PNG (1-16 bit; gray, RGB, RGBA, palette), JPEG, BMP, GIF (first frame),
    TIFF (first page), DICOM and ``.npy`` are accepted, detected by content.
    Color is reduced to ITU-R 601 luminance; 16-bit data keeps its precision.

    Args:
        path: the image file.
        max_pixels: refuse images whose header claims more than this many pixels,
            before decoding; ``None`` for no limit (Pillow's own decompression-bomb
            limit, ``PIL.Image.MAX_IMAGE_PIXELS``, still applies to Pillow formats).
        window: DICOM only, see :func:`cxr_tf.io.read_dicom`
            (``"voi"``, ``"minmax"`` or ``None``).

    Raises:
        CXRImageError: the file is missing, empty, of an unknown format,
            truncated, corrupt or too large (``CXRDicomError`` for DICOM).
    """
    check_window(window)
    path = os.fspath(path)
    fmt = sniff_format(path)
    if fmt == "dicom":
        return decode_dicom(path, window=window, max_pixels=max_pixels)
    if fmt == "npy":
        return _read_npy(path, max_pixels)
    return _read_pillow(path, fmt, max_pixels)


def _read_pillow(path: str, fmt: str, max_pixels: int | None) -> np.ndarray:
    size = declared_size(path, fmt)
    if size is not None:
        check_pixels(path, *size, max_pixels)
    if fmt == "png" and _is_16bit_color_png(path):
        return _read_png16_color(path)
    label = fmt.upper()
    try:
        with Image.open(path, formats=[_PIL_FORMATS[fmt]]) as im:
            check_pixels(path, *im.size, max_pixels)  # TIFF, or a header our parser missed
            im.seek(0)
            # load() decodes every pixel now, so truncated data fails here (Pillow
            # raises OSError "image file is truncated") instead of later in training.
            im.load()
            if im.mode in _WIDE_MODES:
                arr = np.asarray(im)
            elif im.mode == "L":
                arr = np.asarray(im)
            else:
                # RGB, RGBA, P, LA, 1, CMYK ...: Pillow's "L" is ITU-R 601, rounded
                # like TF/libjpeg do for 8-bit data.
                arr = np.asarray(im.convert("L"))
    except CXRImageError:
        raise
    except Image.DecompressionBombError as e:
        raise CXRImageError(path, f"image too large for Pillow's decompression-bomb limit: {e}") from None
    except OSError as e:
        # Pillow's truncated/corrupt data errors are OSErrors (incl. UnidentifiedImageError).
        raise CXRImageError(path, f"truncated or corrupt {label} file ({e})") from None
    except Exception as e:  # noqa: BLE001 - Pillow plugins raise SyntaxError, ValueError, struct.error ...
        raise CXRImageError(path, f"cannot decode {label} file ({type(e).__name__}: {e})") from None
    return as_gray_float32(arr, path)


def _is_16bit_color_png(path: str) -> bool:
    """True for 16-bit RGB / RGBA / gray+alpha PNGs, which Pillow cuts to 8 bits."""
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError:
        return False  # Pillow will report the unreadable file
    return len(head) == 26 and head[12:16] == b"IHDR" and head[24] == 16 and head[25] in (2, 4, 6)


def _read_png16_color(path: str) -> np.ndarray:
    # The same libpng decode the training graph uses keeps all 16 bits; TF is only
    # imported for this rare case.
    import tensorflow as tf

    try:
        with open(path, "rb") as f:
            data = f.read()
        arr = tf.io.decode_png(data, channels=0, dtype=tf.uint16).numpy()
    except Exception as e:  # noqa: BLE001 - tf.errors.InvalidArgumentError and friends
        # TF messages carry graph noise ("{{function_node ...}} ... [Op:DecodePng]").
        msg = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:\w+\]", "", str(getattr(e, "message", e))).strip()
        raise CXRImageError(path, f"truncated or corrupt 16-bit PNG file ({msg})") from None
    if arr.ndim == 3 and arr.shape[-1] >= 3:
        return luminance(arr)
    return as_gray_float32(arr, path)


def _read_npy(path: str, max_pixels: int | None) -> np.ndarray:
    try:
        # mmap_mode reads only the header first, so the shape is checked before loading.
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - ValueError / OSError on bad headers or object arrays
        raise CXRImageError(path, f"cannot read NPY file ({type(e).__name__}: {e})") from None
    if arr.ndim not in (2, 3):
        raise CXRImageError(path, f"NPY array has shape {arr.shape}; expected (H, W) or (H, W, C)")
    check_pixels(path, int(arr.shape[1]), int(arr.shape[0]), max_pixels)
    try:
        arr = np.array(arr)  # copy out of the memory map (closes the file)
    except Exception as e:  # noqa: BLE001
        raise CXRImageError(path, f"truncated or corrupt NPY file ({type(e).__name__}: {e})") from None
    return as_gray_float32(arr, path)
