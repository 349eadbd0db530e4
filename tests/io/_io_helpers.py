"""Helpers for cxr_tf.io tests: tiny synthetic PNG and DICOM files.

A uniquely named module (not conftest) so tests can import it without clashing
with other test folders' modules.
"""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk with a correct CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(arr: np.ndarray) -> bytes:
    """Minimal PNG encoder (no filters) for uint8/uint16 gray, gray+alpha, RGB or RGBA arrays.

    Written by hand so tests can make 16-bit color PNGs, which Pillow cannot write.
    """
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[..., None]
    h, w, c = arr.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    depth = 16 if arr.dtype == np.uint16 else 8
    raw = arr.astype(">u2" if depth == 16 else np.uint8).tobytes()
    row = w * c * depth // 8
    data = b"".join(b"\x00" + raw[i * row : (i + 1) * row] for i in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(data))
        + png_chunk(b"IEND", b"")
    )


def make_dicom_bytes(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    frames: int = 1,
    **elements,
) -> bytes:
    """A small valid uncompressed (Explicit VR LE) DICOM file holding ``pixels``.

    ``pixels`` is (frames, rows, cols[, 3]) or (rows, cols[, 3]); extra keyword
    arguments become header elements (e.g. RescaleSlope="2").
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    pixels = np.asarray(pixels)
    color = photometric == "RGB"
    if pixels.ndim == (3 if color else 2):
        pixels = pixels[None]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("mem.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-SECRET-123"
    ds.Rows, ds.Columns = pixels.shape[1], pixels.shape[2]
    ds.SamplesPerPixel = 3 if color else 1
    if color:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if np.issubdtype(pixels.dtype, np.signedinteger) else 0
    if frames > 1 or pixels.shape[0] > 1:
        ds.NumberOfFrames = pixels.shape[0]
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def mutate(draw, data: bytes, max_ops: int, head: int | None = None) -> bytes:
    """Hypothesis: 1..``max_ops`` random bit flips, cuts, inserts or zeroed words of ``data``
    (positions within the first ``head`` bytes when given: headers are where parsers break)."""
    from hypothesis import strategies as st

    data = bytearray(data)
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "zero"]))
        limit = len(data) if head is None else min(len(data), head)
        pos = draw(st.integers(0, max(limit - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            data = data[: draw(st.integers(0, len(data)))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif data:
            data[pos:pos + 4] = b"\x00\x00\x00\x00"
    return bytes(data)
