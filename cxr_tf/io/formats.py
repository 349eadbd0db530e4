"""Format detection by content (magic bytes) and cheap header-size parsing.

File extensions lie (a PNG saved as ``.jpg``, a text file named ``.png``), so the
format is decided by the first bytes. Declared sizes are read straight from the
header so an absurd size is refused before any decoder allocates memory.
"""
from __future__ import annotations

import dataclasses
import os
import struct

from cxr_tf.errors import CXRDicomError, CXRImageError

from ._common import check_readable_file

#: Formats :func:`cxr_tf.io.read_image` reads.
SUPPORTED_FORMATS = ("png", "jpeg", "bmp", "gif", "tiff", "dicom", "npy")
#: Formats the training graph may decode unconverted (``tf.io.decode_image`` with one
#: channel refuses BMP and GIF; see :mod:`cxr_tf.io.graph` for the rest of the rule).
TF_DECODABLE_FORMATS = frozenset({"png", "jpeg"})

_DICOM_EXTENSIONS = frozenset({".dcm", ".dicom", ".dic", ".ima"})
_BMP_DIB_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
# Tags that any real image DICOM carries; a forced parse of random bytes practically
# never yields one of them, so they separate ACR-NEMA files from garbage.
_DICOM_ANCHOR_TAGS = (0x00080016, 0x00080018, 0x00080060, 0x00280010, 0x00280011, 0x0020000D)
# JPEG start-of-frame markers (SOF0-3, 5-7, 9-11, 13-15) carry the frame size.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# Standalone markers have no length field.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
# Segments allowed between the scans of a (progressive) JPEG: DHT, DAC, DQT, DRI, DNL,
# SOS, COM and APPn.
_JPEG_BETWEEN_SCANS = frozenset({0xC4, 0xCC, 0xDB, 0xDD, 0xDC, 0xDA, 0xFE, *range(0xE0, 0xF0)})


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
    # DICOM before TIFF: a DICOM preamble is 128 free bytes, and dual-format files
    # (pydicom's CT_small, MR_small, examples_rgb_color) put TIFF magic there.
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
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


@dataclasses.dataclass(frozen=True)
class Header:
    """What a PNG, JPEG, BMP or GIF header declares, read without decoding.

    Attributes:
        width, height: declared size in pixels.
        channels: samples per pixel once decoded (palette images expand to 3).
        bits: bits per sample (8 or 16; JPEG precision).
        min_bytes: the smallest file that could hold that many pixels (0 when no
            safe bound is known); a smaller file is a forged or truncated header.
        graph_native: the graph decoder (``tf.io.decode_image``) can decode this
            kind of file to the same gray image as :func:`cxr_tf.io.read_image`.
    """

    width: int
    height: int
    channels: int
    bits: int
    min_bytes: int = 0
    graph_native: bool = False


# PNG colour type -> (samples stored per pixel, samples after decoding).
_PNG_CHANNELS = {0: (1, 1), 2: (3, 3), 3: (1, 3), 4: (2, 2), 6: (4, 4)}
# Deflate cannot compress better than about 1032:1 (RFC 1951: 258-byte matches in
# at least 2 bits), so a PNG needs at least raw / 1032 bytes of IDAT.
_DEFLATE_MAX_RATIO = 1032
# Arithmetic-coded and lossless JPEG frames (neither TF nor Pillow decode them the same way).
_JPEG_ARITHMETIC = frozenset({0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_LOSSLESS = frozenset({0xC3, 0xC7, 0xCB, 0xCF})


def declared_header(path: str, fmt: str) -> Header | None:
    """The :class:`Header` of a PNG, JPEG, BMP or GIF; ``None`` if unknown or unparsable.

    Only the header is read, so a file claiming 100000x100000 pixels costs nothing.
    Hand-parsed because Pillow's lazy ``Image.open`` does not say the PNG colour type
    and bit depth together, the JPEG frame type, or a size bound.

    Args:
        path: the file.
        fmt: its format from :func:`sniff_format`.
    """
    try:
        with open(path, "rb") as f:
            if fmt == "png":
                head = f.read(26)
                if len(head) == 26 and head[12:16] == b"IHDR":
                    w, h = struct.unpack(">II", head[16:24])
                    depth, ctype = head[24], head[25]
                    stored, decoded = _PNG_CHANNELS.get(ctype, (4, 4))
                    raw = h * (1 + (w * stored * depth + 7) // 8)
                    # 16-bit colour: libpng's rgb_to_gray weights are not ITU-R 601, so
                    # these go through read_image and the cache.
                    native = not (depth == 16 and ctype in (2, 6))
                    return Header(w, h, decoded, depth, raw // _DEFLATE_MAX_RATIO, native)
            elif fmt == "gif":
                head = f.read(10)
                if len(head) == 10:
                    w, h = struct.unpack("<HH", head[6:10])
                    return Header(w, h, 3, 8)
            elif fmt == "bmp":
                head = f.read(34)
                if len(head) >= 26:
                    if struct.unpack_from("<I", head, 14)[0] == 12:  # OS/2 BITMAPCOREHEADER
                        w, h, _, bpp = struct.unpack_from("<HHHH", head, 18)
                        compression = 0
                    elif len(head) == 34:
                        w, h = struct.unpack_from("<ii", head, 18)
                        h = abs(h)  # negative height = top-down rows
                        bpp, compression = struct.unpack_from("<HI", head, 28)
                    else:
                        return None
                    # Uncompressed rows are padded to 4 bytes; RLE has no useful bound.
                    need = h * (((w * bpp + 31) // 32) * 4) if compression in (0, 3) and w > 0 else 0
                    return Header(w, h, 4 if bpp == 32 else 3, 8, need)
            elif fmt == "jpeg":
                sof = _jpeg_sof(f)
                if sof is not None:
                    marker, w, h, precision, ncomp = sof
                    # Every Huffman-coded frame has a full-resolution component, and each of
                    # its 8x8 blocks costs at least one bit (its DC code), in baseline and
                    # progressive alike; arithmetic coding has no such floor.
                    blocks = ((w + 7) // 8) * ((h + 7) // 8)
                    need = 0 if marker in _JPEG_ARITHMETIC else blocks // 8
                    native = ncomp in (1, 3) and precision == 8 and marker not in _JPEG_LOSSLESS | _JPEG_ARITHMETIC
                    return Header(w, h, max(ncomp, 1), precision, need, native)
    except (OSError, struct.error):
        pass
    return None


def declared_size(path: str, fmt: str) -> tuple[int, int] | None:
    """``(width, height)`` from the header of a PNG, JPEG, BMP or GIF; ``None`` if unknown."""
    head = declared_header(path, fmt)
    return None if head is None else (head.width, head.height)


def _jpeg_sof(f) -> tuple[int, int, int, int, int] | None:
    """Walk JPEG marker segments up to the first SOF: ``(marker, width, height, precision, components)``."""
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
            body = f.read(6)
            if len(body) < 6:
                return None
            precision, h, w, ncomp = struct.unpack(">BHHB", body)
            return (marker, w, h, precision, ncomp) if h else None  # height 0 = defined later by DNL
        if length < 2:
            return None
        f.seek(length - 2, os.SEEK_CUR)
    return None


def jpeg_scan_problem(data: bytes) -> str | None:
    """Why the entropy-coded data of a JPEG is damaged, or ``None`` if it looks whole.

    libjpeg (in Pillow and in TF alike) only *warns* on "Corrupt JPEG data" and
    returns garbage pixels, and neither surfaces the warning, so the marker structure
    after the first SOS is checked here: inside scan data every 0xFF must be a stuffed
    0xFF00 or the next restart marker in sequence; between scans only table, restart
    interval, comment, APPn or SOS segments may appear; the file ends with EOI. Random
    bytes written into a scan almost always break one of these. A flipped bit that keeps
    the structure is not caught (libjpeg itself cannot tell it).
    """
    # Walk the header segments (an EXIF thumbnail holds a whole JPEG, SOS included,
    # so searching for the first FFDA would land inside it).
    pos, n = 2, len(data)
    while True:
        while pos < n and data[pos] != 0xFF:
            pos += 1  # stray bytes between segments: libjpeg skips them with a warning too
        while pos + 1 < n and data[pos + 1] == 0xFF:
            pos += 1
        if pos + 4 > n:
            return "no scan data (no SOS marker before the end of the file)"
        marker = data[pos + 1]
        if marker == 0xDA:
            break
        if marker in _JPEG_STANDALONE or marker == 0x00:
            pos += 2
            continue
        if marker == 0xD9:
            return "no scan data (EOI before any SOS marker)"
        pos += 2 + struct.unpack_from(">H", data, pos + 2)[0]
    expect_rst = 0
    while True:
        # pos is at a segment marker (SOS or a between-scans segment)
        if pos + 4 > n:
            return "ends inside a marker segment"
        length = struct.unpack_from(">H", data, pos + 2)[0]
        if length < 2:
            return f"marker 0xFF{data[pos + 1]:02X} has an invalid length {length}"
        is_sos = data[pos + 1] == 0xDA
        pos += 2 + length
        if not is_sos:
            if pos > n:
                return "ends inside a marker segment"
        else:
            expect_rst = 0
            # scan data: find the next real marker
            while True:
                ff = data.find(b"\xff", pos)
                if ff < 0 or ff + 1 >= n:
                    return "scan data ends without an EOI marker (truncated)"
                nxt = data[ff + 1]
                if nxt == 0x00 or nxt == 0xFF:  # stuffed byte / fill byte
                    pos = ff + 1 if nxt == 0xFF else ff + 2
                    continue
                if 0xD0 <= nxt <= 0xD7:
                    if nxt - 0xD0 != expect_rst:
                        return f"restart marker RST{nxt - 0xD0} where RST{expect_rst} was due (corrupt scan data)"
                    expect_rst = (expect_rst + 1) % 8
                    pos = ff + 2
                    continue
                pos = ff
                break
        # pos at a marker between scans (or EOI)
        if pos + 1 >= n or data[pos] != 0xFF:
            return "scan data ends without an EOI marker (truncated)"
        while pos + 1 < n and data[pos + 1] == 0xFF:
            pos += 1
        marker = data[pos + 1] if pos + 1 < n else None
        if marker == 0xD9:
            return None
        if marker not in _JPEG_BETWEEN_SCANS:
            name = "end of file" if marker is None else f"0xFF{marker:02X}"
            return f"unexpected marker {name} inside the image data (corrupt scan data)"


_PNG_CRITICAL = frozenset({b"IHDR", b"PLTE", b"IDAT", b"IEND"})


def png_problem(data: bytes, max_raw: int | None = None) -> str | None:
    """Why libpng refuses a PNG, in words: bad chunk CRC, chunk order, unknown critical
    chunk, missing IEND, short or broken IDAT; ``None`` if no such fault is found.

    Run only after the graph decoder refused a file (TF's message is just "Invalid PNG
    data"), so good files pay nothing. Pillow is not asked: it skips IDAT CRCs and
    tolerates several of these, which is how such files used to pass validation.

    Args:
        data: the whole file.
        max_raw: stop inflating IDAT beyond this many bytes (memory bound).
    """
    import zlib

    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "no PNG signature"
    pos, first, seen_iend = 8, True, False
    inflater = zlib.decompressobj()
    raw = 0
    expected = None
    while pos + 8 <= len(data):
        length = struct.unpack_from(">I", data, pos)[0]
        kind = data[pos + 4:pos + 8]
        name = kind.decode("latin-1")
        if pos + 12 + length > len(data):
            return f"chunk {name!r} runs past the end of the file: truncated"
        body = data[pos + 8:pos + 8 + length]
        crc = struct.unpack_from(">I", data, pos + 8 + length)[0]
        if zlib.crc32(kind + body) != crc:
            return f"bad CRC in the {name!r} chunk"
        if first and kind != b"IHDR":
            return f"first chunk is {name!r}, not IHDR"
        first = False
        if kind == b"IHDR" and length == 13:
            w, h, depth, ctype = struct.unpack_from(">IIBB", body)
            stored = _PNG_CHANNELS.get(ctype, (4, 4))[0]
            expected = h * (1 + (w * stored * depth + 7) // 8)
        elif kind == b"IDAT":
            try:
                # inflate 1 MiB at a time and drop it: only the length is needed
                buf = body
                while buf and (max_raw is None or raw < max_raw):
                    raw += len(inflater.decompress(buf, 1 << 20))
                    buf = inflater.unconsumed_tail
            except zlib.error as e:
                return f"IDAT data is not valid zlib data: {e}"
        elif kind == b"IEND":
            seen_iend = True
            break
        elif kind not in _PNG_CRITICAL and not (kind[0] & 0x20):
            return f"unknown critical chunk {name!r}, which a decoder must refuse"
        pos += 12 + length
    if expected is not None and raw < expected and (max_raw is None or raw < max_raw):
        return f"IDAT data too short: {raw} of {expected} bytes of image data"
    if not seen_iend:
        return "no IEND chunk: the file is truncated"
    return None
