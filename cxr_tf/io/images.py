"""Read any supported image file to a float32 ``(H, W)`` grayscale array with NumPy.

This is the eager, outside-the-graph reader (validation, caching, tools). Values
stay in the file's own range (0-255, 0-65535, DICOM modality units ...); scaling
happens in :mod:`cxr_tf.data.preprocess`, as for TF-decoded files.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps

from cxr_tf.errors import CXRImageError

from ._common import DEFAULT_MAX_PIXELS, as_gray_float32, budget_bytes, check_budget, check_pixels, luminance
from .dicom import check_window, decode_dicom
from .formats import Header, declared_header, jpeg_scan_problem, png_problem, sniff_format
from .graph import clean_tf_message

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


def check_header(path: str, fmt: str, max_pixels: int | None) -> Header | None:
    """Refuse a PNG/JPEG/BMP/GIF whose header is over budget or claims more pixels than
    the file can hold, before any decoder allocates for it; returns the header."""
    head = declared_header(path, fmt)
    if head is None:
        return None
    # Pixel count, then data length, then bytes: a header claiming far more pixels
    # than the file can hold is forged or truncated, whatever the byte budget says.
    check_pixels(path, head.width, head.height, max_pixels)
    if head.min_bytes:
        size = os.path.getsize(path)
        if size < head.min_bytes:
            raise CXRImageError(
                path,
                f"claims {head.width}x{head.height} pixels but holds only {size} bytes (at least "
                f"{head.min_bytes} needed): a truncated file or a forged header",
            )
    check_budget(path, head.width, head.height, head.channels, head.bits, max_pixels)
    return head


def exif_orientation(im) -> int:
    """EXIF orientation (1-8) of an open Pillow image; 1 when absent or unreadable."""
    try:
        value = im.getexif().get(0x0112, 1)
        return int(value) if int(value) in range(1, 9) else 1
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make the pixels unreadable
        return 1


def _read_pillow(path: str, fmt: str, max_pixels: int | None) -> np.ndarray:
    head = check_header(path, fmt, max_pixels)
    if fmt == "png" and head is not None and head.bits == 16 and head.channels in (2, 3, 4):
        return _read_png16_color(path)
    label = fmt.upper()
    try:
        with Image.open(path, formats=[_PIL_FORMATS[fmt]]) as im:
            bands = len(im.getbands())
            bits = 32 if im.mode in ("I", "F") else 16 if im.mode.startswith("I;16") else 8
            wide_color = fmt == "tiff" and bands >= 3 and _tiff_bits(im) == 16
            # TIFF (or a header our parser missed): same budget as any other format
            check_budget(path, *im.size, bands, 16 if wide_color else bits, max_pixels)
            if wide_color:
                return luminance(_read_tiff16_color(path, im))
            im.seek(0)
            # load() decodes every pixel now, so truncated data fails here (Pillow
            # raises OSError "image file is truncated") instead of later in training.
            im.load()
            if fmt == "jpeg" and exif_orientation(im) != 1:
                # Applied here, and the graph never sees such a JPEG unconverted
                # (cxr_tf.io.graph), so every path sees the same upright image. JPEG
                # only: TF ignores EXIF, and a PNG/TIFF tag is rare and not reliably
                # visible before decoding, so for those it is ignored on every path.
                im = ImageOps.exif_transpose(im)
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
    if fmt == "jpeg":
        problem = jpeg_scan_problem(_read_bytes(path))
        if problem:
            raise CXRImageError(path, f"truncated or corrupt JPEG file ({problem})")
    return as_gray_float32(arr, path)


def _tiff_bits(im) -> int:
    try:
        bps = im.tag_v2.get(258)
        bps = bps if isinstance(bps, tuple) else (bps,)
        return int(max(bps))
    except Exception:  # noqa: BLE001 - no usable tag: Pillow's mode decides
        return 8


def _read_tiff16_color(path: str, im) -> np.ndarray:
    """A 16-bit RGB(A) TIFF as uint16 ``(H, W, C)``, all 16 bits kept.

    Pillow has no 16-bit colour mode and cuts such files to 8 bits (60 grey levels of
    3,038 in issue 14), so uncompressed strips are read here with NumPy from the
    offsets Pillow parsed. Compressed ones are refused by name: silently losing 8 bits
    is what the docstring of read_image promises not to do.
    """
    tiles = list(im.tile)
    modes = {t.args[0] if isinstance(t.args, tuple) else t.args for t in tiles}
    if not tiles or any(t.codec_name != "raw" for t in tiles) or len(modes) != 1 \
            or not next(iter(modes)).startswith(("RGB;16", "RGBA;16")) \
            or any(isinstance(t.args, tuple) and len(t.args) > 2 and t.args[2] not in (1, None) for t in tiles):
        codec = ", ".join(sorted({t.codec_name for t in tiles})) or "unknown"
        raise CXRImageError(
            path, f"16-bit colour TIFF stored as {codec}: only uncompressed strips are read with full precision "
                  "(Pillow would cut it to 8 bits); save it uncompressed or as a 16-bit PNG")
    rawmode = next(iter(modes))
    bands = 4 if rawmode.startswith("RGBA") else 3
    dtype = np.dtype(">u2" if rawmode.endswith("B") else "<u2")
    w, h = im.size
    out = np.empty((h, w, bands), np.uint16)
    with open(path, "rb") as f:
        for t in tiles:
            x0, y0, x1, y1 = t.extents
            n = (x1 - x0) * (y1 - y0) * bands
            f.seek(t.offset)
            buf = f.read(n * 2)
            if len(buf) < n * 2:
                raise CXRImageError(path, f"truncated or corrupt TIFF file (a strip holds {len(buf)} of {n * 2} bytes)")
            out[y0:y1, x0:x1] = np.frombuffer(buf, dtype).reshape(y1 - y0, x1 - x0, bands)
    return out


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CXRImageError(path, f"cannot read file: {e.strerror or e}") from None


def _read_png16_color(path: str) -> np.ndarray:
    # The same libpng decode the training graph uses keeps all 16 bits; TF is only
    # imported for this rare case.
    import tensorflow as tf

    data = _read_bytes(path)
    try:
        arr = tf.io.decode_png(data, channels=0, dtype=tf.uint16).numpy()
    except Exception as e:  # noqa: BLE001 - tf.errors.InvalidArgumentError and friends
        why = png_problem(data, max_raw=budget_bytes(DEFAULT_MAX_PIXELS)) or clean_tf_message(e)
        raise CXRImageError(path, f"truncated or corrupt 16-bit PNG file ({why})") from None
    del data
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
    check_budget(path, int(arr.shape[1]), int(arr.shape[0]), int(arr.shape[2]) if arr.ndim == 3 else 1,
                 8 * arr.dtype.itemsize, max_pixels)
    try:
        arr = np.array(arr)  # copy out of the memory map (closes the file)
    except Exception as e:  # noqa: BLE001
        raise CXRImageError(path, f"truncated or corrupt NPY file ({type(e).__name__}: {e})") from None
    return as_gray_float32(arr, path)
