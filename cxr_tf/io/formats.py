"""Format detection by content (magic bytes) and cheap header-size parsing.

File extensions lie (a PNG saved as ``.jpg``, a text file named ``.png``), so the
format is decided by the first bytes. Declared sizes are read straight from the
header so an absurd size is refused before any decoder allocates memory.
"""
from __future__ import annotations

import os
import struct

from cxr_tf.errors import CXRDicomError, CXRImageError

from ._common import check_readable_file

#: Formats :func:`cxr_tf.io.read_image` reads.
SUPPORTED_FORMATS = ("png", "jpeg", "bmp", "gif", "tiff", "dicom", "npy")
#: Formats ``tf.io.decode_image`` decodes in the training graph.
TF_DECODABLE_FORMATS = frozenset({"png", "jpeg", "bmp", "gif"})

_DICOM_EXTENSIONS = frozenset({".dcm", ".dicom", ".dic", ".ima"})
_BMP_DIB_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
# Tags that any real image DICOM carries; a forced parse of random bytes practically
# never yields one of them, so they separate ACR-NEMA files from garbage.
_DICOM_ANCHOR_TAGS = (0x00080016, 0x00080018, 0x00080060, 0x00280010, 0x00280011, 0x0020000D)
# JPEG start-of-frame markers (SOF0-3, 5-7, 9-11, 13-15) carry the frame size.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# Standalone markers have no length field.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def _unsupported(path: str, head: bytes) -> CXRImageError:
    names = ", ".join(f.upper() for f in SUPPORTED_FORMATS)
    return CXRImageError(path, f"unrecognised file format (starts with {head[:8]!r}); supported formats: {names}")


def sniff_format(path: str | os.PathLike) -> str:
    """Identify an image file by its content.

    Args:
        path: the file.

    Returns:
        One of ``"png"``, ``"jpeg"``, ``"bmp"``, ``"gif"``, ``"tiff"``, ``"dicom"``, ``"npy"``.

    Raises:
        CXRImageError: missing, empty or unrecognised file.
    """
    path = os.fspath(path)
    is_dicom_ext = os.path.splitext(path)[1].lower() in _DICOM_EXTENSIONS
    check_readable_file(path, CXRDicomError if is_dicom_ext else CXRImageError)
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as e:
        raise CXRImageError(path, f"cannot read file: {e.strerror or e}") from None

    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    # "BM" alone is too weak (plain text can start with it): also require a known
    # DIB header size at offset 14.
    if head.startswith(b"BM") and len(head) >= 18 and struct.unpack_from("<I", head, 14)[0] in _BMP_DIB_HEADER_SIZES:
        return "bmp"
    # ACR-NEMA / preamble-less DICOM: no magic at all. Try a parse when the name
    # says DICOM or the first tag is a plausible group (0002 meta or 0008 identifying).
    first_group = struct.unpack_from("<H", head, 0)[0] if len(head) >= 2 else None
    if is_dicom_ext or first_group in (0x0002, 0x0008):
        if _parses_as_dicom(path, default=is_dicom_ext):
            return "dicom"
    raise _unsupported(path, head)


def _parses_as_dicom(path: str, default: bool) -> bool:
    """True when a forced pydicom parse of ``path`` yields a plausible image header."""
    try:
        import pydicom
    except ImportError:
        # Let read_dicom report the missing dependency for files named like DICOM.
        return default
    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True, defer_size=4096)
        return any(tag in ds for tag in _DICOM_ANCHOR_TAGS)
    except Exception:  # noqa: BLE001 - any parse failure just means "not DICOM"
        return False


def declared_size(path: str, fmt: str) -> tuple[int, int] | None:
    """``(width, height)`` from the header of a PNG, JPEG, BMP or GIF; ``None`` if unknown.

    Only the header is read, so a file claiming 100000x100000 pixels costs nothing.

    Args:
        path: the file.
        fmt: its format from :func:`sniff_format`.
    """
    try:
        with open(path, "rb") as f:
            if fmt == "png":
                head = f.read(24)
                if len(head) == 24 and head[12:16] == b"IHDR":
                    return struct.unpack(">II", head[16:24])
            elif fmt == "gif":
                head = f.read(10)
                if len(head) == 10:
                    return struct.unpack("<HH", head[6:10])
            elif fmt == "bmp":
                head = f.read(26)
                if len(head) == 26:
                    if struct.unpack_from("<I", head, 14)[0] == 12:  # OS/2 BITMAPCOREHEADER
                        return struct.unpack_from("<HH", head, 18)
                    w, h = struct.unpack_from("<ii", head, 18)
                    return w, abs(h)  # negative height = top-down rows
            elif fmt == "jpeg":
                return _jpeg_size(f)
    except (OSError, struct.error):
        pass
    return None


def _jpeg_size(f) -> tuple[int, int] | None:
    """Walk JPEG marker segments up to the first SOF and return its (width, height)."""
    f.seek(2)  # past SOI
    for _ in range(10_000):  # bounded: a real file reaches SOF in a handful of segments
        b = f.read(1)
        if not b:
            return None
        if b != b"\xff":
            continue  # stray byte; resynchronise on the next 0xFF
        m = f.read(1)
        while m == b"\xff":  # fill bytes
            m = f.read(1)
        if not m:
            return None
        marker = m[0]
        if marker in _JPEG_STANDALONE or marker == 0x00:
            continue
        if marker in (0xD9, 0xDA):  # EOI / SOS before any SOF
            return None
        seg = f.read(2)
        if len(seg) < 2:
            return None
        length = struct.unpack(">H", seg)[0]
        if marker in _JPEG_SOF:
            body = f.read(5)
            if len(body) < 5:
                return None
            h, w = struct.unpack(">HH", body[1:5])
            return (w, h) if h else None  # height 0 = defined later by DNL
        if length < 2:
            return None
        f.seek(length - 2, os.SEEK_CUR)
    return None
