"""DICOM reading, safe metadata and the decode-once PNG cache (cxr_tf.io)."""
from __future__ import annotations

import csv
import os
import struct

import numpy as np
import pydicom
import pytest
from _io_helpers import make_dicom_bytes

from cxr_tf.errors import CXRConfigError, CXRDicomError, CXRImageError
from cxr_tf.io import (
    SAFE_DICOM_TAGS,
    dicom_metadata_safe,
    read_dicom,
    read_image,
    sniff_format,
    to_png_cache,
)

SIIM = "siim_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
J2K_UID = "1.2.840.10008.1.2.4.91"


def minmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return (x - x.min()) / (x.max() - x.min())


@pytest.fixture(scope="module")
def index(dicom_dir):
    with open(dicom_dir / "dicom_index.csv", newline="") as f:
        return {row["file"]: row for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def decoded(dicom_dir):
    """Every real DICOM decoded once with the defaults (RG1 J2K is the slow one)."""
    return {p.name: read_dicom(p) for p in sorted(dicom_dir.glob("*.dcm"))}


# --------------------------------------------------------------------- real files


def test_every_real_dicom_reads_to_indexed_size(dicom_dir, index, decoded):
    assert set(decoded) == set(index), "dicom_index.csv and the folder disagree"
    for name, img in decoded.items():
        row = index[name]
        assert img.dtype == np.float32 and img.ndim == 2, name
        assert img.shape == (int(row["rows"]), int(row["cols"])), name
        assert np.isfinite(img).all(), name
        assert img.max() > img.min(), f"{name} decoded to a constant image"
        # read_image routes DICOM by content to the same reader.
        assert sniff_format(dicom_dir / name) == "dicom"


def test_read_image_equals_read_dicom(dicom_dir, decoded):
    np.testing.assert_array_equal(read_image(dicom_dir / SIIM), decoded[SIIM])


def test_fake_monochrome1_is_siim_inverted(decoded):
    # Same stored pixels, header says MONOCHROME1: a correct reader inverts it.
    fake, siim = minmax(decoded["txv_Fake_MONOHR1.dcm"]), minmax(decoded[SIIM])
    np.testing.assert_allclose(fake, 1.0 - siim, atol=1e-6)


def test_rg1_jpeg2000_matches_its_decoded_twin(dicom_dir, decoded):
    # The uncompressed twin was derived by decoding the lossy J2K file, so the
    # pixels are bit-identical (not merely within lossy tolerance).
    np.testing.assert_array_equal(decoded["RG1_J2KI.dcm"], decoded["RG1_J2KI_decoded_uncompressed.dcm"])
    raw_j2k = pydicom.dcmread(dicom_dir / "RG1_J2KI.dcm").pixel_array
    raw_plain = pydicom.dcmread(dicom_dir / "RG1_J2KI_decoded_uncompressed.dcm").pixel_array
    np.testing.assert_array_equal(raw_j2k, raw_plain)


def test_acr_nema_file_without_preamble_reads_and_is_inverted(dicom_dir):
    path = dicom_dir / "CR-MONO1-10-chest.dcm"
    assert path.read_bytes()[128:132] != b"DICM"  # the case under test: no preamble, no meta
    assert sniff_format(path) == "dicom"

    ds = pydicom.dcmread(path, force=True)
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    raw = ds.pixel_array.astype(np.float64)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.BitsStored == 10

    img = read_dicom(path, window=None)  # no VOI: plain inversion within 10 bits
    np.testing.assert_array_equal(img, (1023 - raw).astype(np.float32))
    # After inversion bone is bright: mediastinum/spine (center) > lung fields.
    h, w = img.shape
    center = img[h // 3 : 2 * h // 3, 5 * w // 11 : 6 * w // 11].mean()
    rows = slice(h // 3, 2 * h // 3)
    lungs = (img[rows, w // 4 : w // 3].mean() + img[rows, 2 * w // 3 : 3 * w // 4].mean()) / 2
    assert center > lungs + 100

    voi = read_dicom(path)  # window 550/1024 clips a little, keeps orientation
    assert np.corrcoef(voi.ravel(), img.ravel())[0, 1] > 0.99
    scaled = read_dicom(path, window="minmax")
    assert scaled.min() == 0.0 and scaled.max() == 1.0


def test_metadata_is_safe_and_matches_index(dicom_dir, index):
    for name, row in index.items():
        path = dicom_dir / name
        meta = dicom_metadata_safe(path)
        assert tuple(meta) == SAFE_DICOM_TAGS
        assert meta["Rows"] == int(row["rows"]) and meta["Columns"] == int(row["cols"])
        assert meta["PhotometricInterpretation"] == row["photometric"]
        assert meta["BitsStored"] == int(row["bits_stored"])
        assert meta["Modality"] == row["modality"]
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
        text = repr(meta)
        for key in ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "StudyInstanceUID"):
            value = str(ds.get(key, "") or "")
            if len(value) > 3:
                assert value not in text, f"{name}: {key} leaked"
    assert dicom_metadata_safe(dicom_dir / "CR-MONO1-10-chest.dcm")["TransferSyntaxUID"] == "1.2.840.10008.1.2"


# ------------------------------------------------------------ decoder availability


def test_missing_j2k_decoder_gives_install_hint(dicom_dir, monkeypatch):
    from pydicom.pixels.decoders.base import get_decoder

    # Simulate an install without Pillow-openjpeg / pylibjpeg: no plugin available.
    monkeypatch.setattr(get_decoder(J2K_UID), "_available", {})
    path = dicom_dir / "RG1_J2KI.dcm"
    with pytest.raises(CXRDicomError) as e:
        read_dicom(path)
    msg = str(e.value)
    assert str(path) in msg and "JPEG 2000" in msg
    assert "pip install 'cxr_tf[dicom]'" in msg and "pylibjpeg-openjpeg" in msg


def test_decode_time_missing_dependency_error_gives_install_hint(dicom_dir, monkeypatch):
    import pydicom.pixels

    def no_handler(*args, **kwargs):
        raise RuntimeError(
            "Unable to decompress 'JPEG Baseline (Process 1)' pixel data because all plugins are missing dependencies"
        )

    monkeypatch.setattr(pydicom.pixels, "pixel_array", no_handler)
    with pytest.raises(CXRDicomError, match=r"JPEG Baseline .*pip install 'cxr_tf\[dicom\]'"):
        read_dicom(dicom_dir / SIIM)


# ------------------------------------------------------------------- bad DICOMs


def test_dicom_without_pixel_data(dicom_dir, tmp_path):
    ds = pydicom.dcmread(dicom_dir / SIIM)
    del ds.PixelData
    path = tmp_path / "nopixels.dcm"
    ds.save_as(path)
    with pytest.raises(CXRDicomError, match="no pixel data") as e:
        read_image(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize(
    "uid, name",
    [("1.2.840.10008.1.2.4.100", "MPEG2"), ("1.2.826.0.1.3680043.9.9999.1", "1.2.826.0.1.3680043.9.9999.1")],
)
def test_dicom_with_unsupported_transfer_syntax(dicom_dir, tmp_path, uid, name):
    ds = pydicom.dcmread(dicom_dir / SIIM)
    ds.file_meta.TransferSyntaxUID = uid
    path = tmp_path / "odd_syntax.dcm"
    ds.save_as(path, implicit_vr=False, little_endian=True)
    with pytest.raises(CXRDicomError) as e:
        read_image(path)
    msg = str(e.value)
    assert str(path) in msg and "transfer syntax" in msg and name in msg and "not supported" in msg


def test_empty_and_garbage_dcm(write):
    empty = write("empty.dcm", b"")
    with pytest.raises(CXRDicomError, match=r"file is empty \(0 bytes\)"):
        read_image(empty)
    text = write("notes.dcm", b"this is a radiology report, not an image\n" * 10)
    with pytest.raises(CXRImageError, match="unrecognised file format"):
        read_image(text)
    with pytest.raises(CXRDicomError, match="file not found"):
        read_dicom(os.path.join(os.path.dirname(text), "missing.dcm"))


def test_truncated_dicom_pixel_data(write):
    data = make_dicom_bytes(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    path = write("cut.dcm", data[: len(data) - 3000])
    with pytest.raises(CXRDicomError) as e:
        read_image(path)
    assert path in str(e.value)


def test_dicom_pixel_limit_checked_before_decoding(write):
    path = write("small.dcm", make_dicom_bytes(np.zeros((40, 50), np.uint8)))
    with pytest.raises(CXRDicomError, match="claims 50x40 pixels, over the limit of 1000"):
        read_image(path, max_pixels=1000)


def test_invalid_window_option(write):
    path = write("small.dcm", make_dicom_bytes(np.zeros((4, 4), np.uint8)))
    with pytest.raises(CXRConfigError):
        read_dicom(path, window="auto")
    with pytest.raises(CXRConfigError):
        read_image(path, window="auto")


def test_dicom_functions_refuse_other_content(write):
    from PIL import Image

    path = write("scan.dcm", b"")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(path, format="PNG")
    for fn in (read_dicom, dicom_metadata_safe):
        with pytest.raises(CXRDicomError, match="not a DICOM file"):
            fn(path)
    text = write("text.dcm", b"hello\n" * 50)
    with pytest.raises(CXRDicomError, match="unrecognised file format"):
        read_dicom(text)
    assert read_image(path).shape == (4, 4)  # read_image goes by content


# ---------------------------------------------------- synthetic pixel semantics


def test_rescale_slope_intercept_applied(write):
    px = np.array([[0, 100], [200, 4095]], np.uint16)
    path = write("ct.dcm", make_dicom_bytes(px, RescaleSlope="2", RescaleIntercept="-1024", BitsStored=12))
    np.testing.assert_array_equal(read_dicom(path), px * 2.0 - 1024)


def test_window_applied_and_monochrome1_inverted_in_range(write):
    px = np.array([[0, 100], [200, 255]], np.uint8)
    path = write("w.dcm", make_dicom_bytes(px, WindowCenter="128", WindowWidth="256"))
    np.testing.assert_allclose(read_dicom(path), px, atol=1.0)  # ~identity window
    path = write("m1.dcm", make_dicom_bytes(px, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(read_dicom(path), 255.0 - px)


def test_invalid_window_falls_back_to_modality_range(write):
    px = np.array([[0, 10], [20, 30]], np.uint8)
    path = write("w0.dcm", make_dicom_bytes(px, WindowCenter="10", WindowWidth="0"))
    with pytest.warns(RuntimeWarning, match="ignoring invalid VOI"):
        img = read_dicom(path)
    np.testing.assert_array_equal(img, px)


def test_multiframe_reads_first_frame(write):
    frames = np.stack([np.full((8, 6), v, np.uint16) for v in (7, 8, 9)])
    frames[0, 0, 0] = 100
    img = read_image(write("mf.dcm", make_dicom_bytes(frames)))
    assert img.shape == (8, 6) and img[0, 0] == 100 and img[1, 1] == 7


def test_rgb_dicom_to_luminance(write):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    img = read_image(write("rgb.dcm", make_dicom_bytes(rgb, photometric="RGB")))
    assert img.shape == (4, 5)
    np.testing.assert_allclose(img, 0.299 * 200 + 0.587 * 100 + 0.114 * 50, rtol=1e-6)


# ------------------------------------------------------------------ PNG cache


def _png_chunk_types(data: bytes) -> list[bytes]:
    out, pos = [], 8
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        out.append(data[pos + 4 : pos + 8])
        pos += 12 + n
    return out


def test_png_cache_round_trip(dicom_dir, tmp_path, monkeypatch):
    import tensorflow as tf

    from cxr_tf.data.preprocess import decode_image, prepare_image
    from cxr_tf.io import cache

    src = dicom_dir / SIIM
    cache_dir = tmp_path / "cache"
    png = to_png_cache(src, cache_dir)
    assert os.path.dirname(png) == str(cache_dir) and png.endswith(".png")
    assert sniff_format(png) == "png"
    data = open(png, "rb").read()
    assert data[24] == 16 and data[25] == 0, "expected a 16-bit grayscale PNG"
    assert set(_png_chunk_types(data)) == {b"IHDR", b"IDAT", b"IEND"}, "no metadata chunks allowed"
    ds = pydicom.dcmread(src, stop_before_pixels=True)
    for secret in (str(ds.PatientName), str(ds.PatientID)):
        assert secret.encode() not in data

    # The training graph decodes it, and gets the per-image scaled DICOM.
    contents = tf.io.read_file(png)
    decoded = decode_image(contents).numpy()[..., 0]
    expected = minmax(read_image(src)) * 65535
    np.testing.assert_allclose(decoded, expected, atol=0.5 + 1e-6)
    ready = prepare_image(contents, 224).numpy()
    assert ready.shape == (224, 224, 1) and 0.0 <= ready.min() and ready.max() <= 1.0 and ready.max() > 0.5

    # Second call: same path, no decode, file untouched.
    before = os.stat(png)

    def must_not_decode(*a, **k):
        raise AssertionError("cache miss: the DICOM was decoded again")

    from cxr_tf.io import validate

    monkeypatch.setattr(validate, "read_image", must_not_decode)
    assert to_png_cache(src, cache_dir) == png
    after = os.stat(png)
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)
    assert [p for p in os.listdir(cache_dir) if p.startswith(".tmp")] == []


def test_png_cache_key_changes_with_file(write, tmp_path):
    path = write("a.dcm", make_dicom_bytes(np.arange(16, dtype=np.uint8).reshape(4, 4)))
    first = to_png_cache(path, tmp_path / "c")
    with open(path, "wb") as f:
        f.write(make_dicom_bytes(np.arange(20, dtype=np.uint8).reshape(4, 5)))
    os.utime(path, ns=(1, 1))  # different mtime even on coarse-clock filesystems
    second = to_png_cache(path, tmp_path / "c")
    assert second != first
    assert to_png_cache(path, tmp_path / "c") == second


def test_png_cache_passes_tf_decodable_files_through(data_dir, tmp_path):
    for rel in ("misc_images/16747_3_1.jpg", "misc_images/tbx11k_test_data/imgs/tb/tb0005.png"):
        src = str(data_dir / rel)
        assert to_png_cache(src, tmp_path / "c") == src
    assert not (tmp_path / "c").exists()


def test_png_cache_error_names_file(write, tmp_path):
    path = write("broken.dcm", make_dicom_bytes(np.zeros((32, 32), np.uint16))[:-500])
    with pytest.raises(CXRDicomError) as e:
        to_png_cache(path, tmp_path / "c")
    assert path in str(e.value)
    assert not (tmp_path / "c").exists() or os.listdir(tmp_path / "c") == []
