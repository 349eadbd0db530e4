"""DICOM decoding with pydicom, outside the TensorFlow graph.

Radiographs come as DICOM from scanners and PACS exports; TF cannot decode them,
so they are decoded here once (modality LUT, VOI window, MONOCHROME1 inversion)
and, for training, cached as 16-bit PNGs by :func:`cxr_tf.io.to_png_cache`.
pydicom is imported lazily so the rest of cxr_tf works without it.
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from cxr_tf.errors import CXRConfigError, CXRDicomError, CXRImageError

from ._common import DEFAULT_MAX_PIXELS, as_gray_float32, check_budget, check_readable_file, luminance

_DECODER_HINT = (
    "transfer syntax {name} needs the optional decoders: pip install 'cxr_tf[dicom]' "
    "(pylibjpeg, pylibjpeg-openjpeg, pylibjpeg-libjpeg)"
)
_WINDOWS = ("voi", "minmax", None)

#: Header fields :func:`dicom_metadata_safe` may return. An allow-list on purpose:
#: nothing that identifies a patient, study, institution or date can leak.
SAFE_DICOM_TAGS = (
    "Modality",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsStored",
    "ViewPosition",
    "BodyPartExamined",
    "TransferSyntaxUID",
)


def _import_pydicom(path: str):
    try:
        import pydicom
        import pydicom.pixels  # noqa: F401 - pydicom 3 API used below
    except ImportError:
        raise CXRDicomError(path, "reading DICOM needs pydicom>=3: pip install 'pydicom>=3'") from None
    return pydicom


def _read_dataset(path: str, **kwargs):
    pydicom = _import_pydicom(path)
    check_readable_file(path, CXRDicomError)
    try:
        # force=True: ACR-NEMA files (e.g. CR-MONO1-10-chest) have no preamble / file meta.
        return pydicom.dcmread(path, force=True, **kwargs)
    except Exception as e:  # noqa: BLE001 - pydicom raises many types on bad input
        raise CXRDicomError(path, f"not a readable DICOM file ({type(e).__name__}: {e})") from None


def _ensure_transfer_syntax(ds) -> None:
    """Give a dataset without file meta (ACR-NEMA) the transfer syntax it was read with.

    pydicom 3 refuses to decode pixels without ``TransferSyntaxUID``; the encoding
    a forced read actually used is the right answer for uncompressed data.
    """
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    if "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if implicit is None:
        implicit, little = True, True
    meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    )


def _stored_range(ds) -> tuple[float, float]:
    """Nominal output range of the modality LUT (as pydicom's windowing assumes it)."""
    if ds.get("ModalityLUTSequence"):
        bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = sorted((lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)))
    return lo, hi


def _voi_uses_lut(ds) -> bool:
    """Mirror pydicom's ``apply_voi_lut`` choice: a complete VOI LUT wins over a window."""
    seq = ds.get("VOILUTSequence")
    return bool(seq) and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None


def _has_window(ds) -> bool:
    return ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None


def _monochrome(arr: np.ndarray, ds, path: str, window: str | None, photometric: str) -> np.ndarray:
    """Modality LUT, optional VOI, and MONOCHROME1 inversion of one grayscale frame."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        x = apply_modality_lut(arr, ds)
    except Exception as e:  # noqa: BLE001
        raise CXRDicomError(path, f"cannot apply the modality LUT / rescale ({type(e).__name__}: {e})") from None
    try:
        out_range = _stored_range(ds)
    except Exception:  # noqa: BLE001 - e.g. float pixel data has no BitsStored
        out_range = (np.inf, -np.inf)  # empty: the inversion below uses the data's own range

    if window == "voi" and (_voi_uses_lut(ds) or _has_window(ds)):
        try:
            windowed = apply_voi_lut(x, ds)
        except Exception as e:  # noqa: BLE001
            # A broken window (e.g. width 0) should not make a readable image unusable:
            # fall back to the full modality range, which per-image scaling handles.
            warnings.warn(f"{path}: ignoring invalid VOI LUT / window ({e})", RuntimeWarning, stacklevel=3)
        else:
            if _voi_uses_lut(ds):
                try:
                    bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
                    out_range = (0.0, float(2**bits - 1))
                except Exception:  # noqa: BLE001
                    out_range = (np.inf, -np.inf)
            x = windowed  # pydicom's windowing keeps the modality range computed above

    x = np.asarray(x, dtype=np.float64)
    # Presentation LUT Shape INVERSE asks for the same flip as MONOCHROME1 (some DX/CR
    # files store MONOCHROME2 pixels with INVERSE); a MONOCHROME1 file that also says
    # INVERSE is restating it (PS3.3 C.8.11.6), not asking for a second flip.
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    if photometric == "MONOCHROME1" or shape == "INVERSE":
        # MONOCHROME1 means low values are white; flip within the nominal range so
        # bone ends up bright like MONOCHROME2. Widen the range if a header
        # under-states it, so the result never leaves it.
        finite = x[np.isfinite(x)]
        lo, hi = out_range
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
        if np.isfinite(lo) and np.isfinite(hi):
            x = (lo + hi) - x
    if window == "minmax":
        finite = x[np.isfinite(x)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    return x


def read_dicom(
    path: str | os.PathLike,
    *,
    window: str | None = "voi",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode the first frame of a DICOM file to a float32 ``(H, W)`` grayscale array.

    The modality LUT (rescale slope/intercept) is always applied and
    MONOCHROME1 images are inverted so bone is bright. Color images (RGB, YBR,
    palette) are reduced to ITU-R 601 luminance without LUTs.

    Args:
        path: the DICOM file (with or without preamble / file meta).
        window: ``"voi"`` applies the file's VOI LUT or window center/width when
            present (values stay in the modality output range); ``None`` skips
            VOI; ``"minmax"`` skips VOI and scales the image to ``[0, 1]``.
        max_pixels: refuse frames with more than this many pixels (``Rows*Columns``)
            before decoding; ``None`` for no limit.

    Raises:
        CXRDicomError: unreadable file, no pixel data, unsupported or
            undecodable transfer syntax, missing optional decoders.
    """
    check_window(window)
    path = os.fspath(path)
    _require_dicom(path)
    return decode_dicom(path, window=window, max_pixels=max_pixels)


def check_window(window) -> None:
    """Raise ``CXRConfigError`` unless ``window`` is ``"voi"``, ``"minmax"`` or ``None``."""
    if window not in _WINDOWS:
        raise CXRConfigError(f"window must be one of {_WINDOWS}, got {window!r}")


def _require_dicom(path: str) -> None:
    """Refuse non-DICOM content up front: a forced parse of a PNG would otherwise
    end in a confusing "no pixel data"."""
    from .formats import sniff_format

    try:
        fmt = sniff_format(path)
    except CXRDicomError:
        raise
    except CXRImageError as e:
        raise CXRDicomError(path, e.cause) from None
    if fmt != "dicom":
        raise CXRDicomError(path, f"not a DICOM file (its content is {fmt.upper()})")


def decode_dicom(path: str, *, window: str | None, max_pixels: int | None) -> np.ndarray:
    """:func:`read_dicom` for a path already known to hold DICOM (no sniffing)."""
    ds = _read_dataset(path)
    return _pixels_from_dataset(ds, path, window, max_pixels)


def _pixels_from_dataset(ds, path: str, window: str | None, max_pixels: int | None) -> np.ndarray:
    from pydicom.pixels import apply_color_lut, pixel_array
    from pydicom.pixels.decoders.base import get_decoder

    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        kind = ds.get("SOPClassUID")
        what = f"SOP class {kind.name}" if kind is not None and hasattr(kind, "name") else "a header-only file"
        raise CXRDicomError(path, f"no pixel data (no (7FE0,0010) Pixel Data element; {what})")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
    except Exception as e:  # noqa: BLE001
        raise CXRDicomError(path, f"no usable Rows/Columns in the header ({type(e).__name__}: {e})") from None
    try:
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.get("BitsAllocated", 16) or 16)
    except (TypeError, ValueError):
        samples, bits = 1, 16
    check_budget(path, cols, rows, samples, bits, max_pixels, CXRDicomError)

    try:
        _ensure_transfer_syntax(ds)
        tsuid = ds.file_meta.TransferSyntaxUID
        name = tsuid.name
    except Exception as e:  # noqa: BLE001
        raise CXRDicomError(path, f"invalid transfer syntax in the file meta ({type(e).__name__}: {e})") from None
    try:
        decoder = get_decoder(tsuid)
    except NotImplementedError:
        raise CXRDicomError(
            path,
            f"transfer syntax {name if name == str(tsuid) else f'{name} ({tsuid})'} is not supported: "
            "pydicom has no pixel data decoder for it",
        ) from None
    except Exception as e:  # noqa: BLE001 - e.g. a malformed UID value
        raise CXRDicomError(path, f"invalid transfer syntax {tsuid!r} ({type(e).__name__}: {e})") from None
    if not decoder.is_available:
        raise CXRDicomError(path, _DECODER_HINT.format(name=name))

    try:
        # index=0: decode only the first frame of multi-frame files.
        arr = pixel_array(ds, index=0)
    except Exception as e:  # noqa: BLE001
        msg = str(e)
        if "missing dependencies" in msg or "no pixel data decoders" in msg.lower():
            raise CXRDicomError(path, _DECODER_HINT.format(name=name)) from None
        raise CXRDicomError(path, f"cannot decode the {name} pixel data ({type(e).__name__}: {msg})") from None

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    try:
        if photometric == "PALETTE COLOR":
            arr = luminance(apply_color_lut(arr, ds))
        elif arr.ndim == 3:
            # pydicom already converted YBR_* to RGB.
            arr = luminance(arr[..., :3]) if arr.shape[-1] >= 3 else arr[..., 0]
    except Exception as e:  # noqa: BLE001
        raise CXRDicomError(path, f"cannot convert {photometric} pixels to gray ({type(e).__name__}: {e})") from None
    if arr.ndim == 2 and photometric not in ("RGB", "PALETTE COLOR") and not photometric.startswith("YBR"):
        arr = _monochrome(arr, ds, path, window, photometric)
    elif window == "minmax":
        lo, hi = float(np.min(arr)), float(np.max(arr))
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr, dtype=np.float32)
    return as_gray_float32(arr, path, CXRDicomError)


def dicom_metadata_safe(path: str | os.PathLike) -> dict:
    """Non-identifying header fields of a DICOM file.

    Only :data:`SAFE_DICOM_TAGS` are returned (missing ones as ``None``); names,
    IDs, dates, institutions and UIDs of the study are never read out.

    Args:
        path: the DICOM file.

    Returns:
        ``{"Modality": "CR", "PhotometricInterpretation": "MONOCHROME1", "Rows": 440, ...}``;
        ``TransferSyntaxUID`` of a file without file meta is the encoding it was read with.
    """
    path = os.fspath(path)
    _require_dicom(path)
    ds = _read_dataset(path, stop_before_pixels=True)
    try:
        _ensure_transfer_syntax(ds)
    except Exception:  # noqa: BLE001 - metadata stays useful without it
        pass
    out: dict = {}
    for key in SAFE_DICOM_TAGS:
        try:
            value = ds.file_meta.get(key) if key == "TransferSyntaxUID" else ds.get(key)
        except Exception:  # noqa: BLE001 - an unparsable value is reported as missing
            value = None
        if value is None or value == "":
            out[key] = None
        elif key in ("Rows", "Columns", "BitsStored"):
            try:
                out[key] = int(value)
            except (TypeError, ValueError):
                out[key] = None
        else:
            out[key] = str(value).strip()
    return out
