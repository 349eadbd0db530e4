"""Format sniffing, image decoding, bad-input errors and validation (cxr_tf.io)."""
from __future__ import annotations

import csv
import io
import struct
import tempfile

import numpy as np
import pytest
from _io_helpers import encode_png, make_dicom_bytes, mutate, png_chunk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cxr_tf.errors import CXRImageError
from cxr_tf.io import read_image, sniff_format, validate_images, write_skip_list

TBX = "misc_images/tbx11k_test_data/imgs"


def pil_bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def huge_png_header(width: int = 100_000, height: int = 100_000) -> bytes:
    """Valid signature + IHDR (correct CRC) claiming a huge image, and no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


GRAY = np.add.outer(np.arange(24), np.arange(32)).astype(np.uint8) * 3  # (24, 32)


# -------------------------------------------------------------------- sniffing


@pytest.mark.parametrize(
    "name, data, fmt",
    [
        ("a.png", pil_bytes(Image.fromarray(GRAY), "PNG"), "png"),
        ("a.bin", pil_bytes(Image.fromarray(GRAY), "JPEG"), "jpeg"),
        ("a.png", pil_bytes(Image.fromarray(GRAY), "BMP"), "bmp"),  # extension lies
        ("a.gif", pil_bytes(Image.fromarray(GRAY), "GIF"), "gif"),
        ("a.tif", pil_bytes(Image.fromarray(GRAY), "TIFF"), "tiff"),
        ("a.dcm", make_dicom_bytes(GRAY), "dicom"),
    ],
)
def test_sniff_by_content(write, name, data, fmt):
    assert sniff_format(write(name, data)) == fmt


def test_sniff_npy(tmp_path):
    np.save(tmp_path / "a.npy", GRAY)
    assert sniff_format(tmp_path / "a.npy") == "npy"


def test_sniff_unknown_lists_supported_formats(write):
    path = write("scan.png", b"BMW is a car, not a bitmap\n")
    with pytest.raises(CXRImageError) as e:
        sniff_format(path)
    msg = str(e.value)
    assert path in msg and "unrecognised" in msg and "PNG" in msg and "DICOM" in msg


# ------------------------------------------------------------- real image files


def test_misc_images_sizes(data_dir):
    cases = {
        "misc_images/covid-19-pneumonia-58-prior.jpg": (2373, 2373),
        "misc_images/16747_3_1.jpg": (885, 1036),
        f"{TBX}/health/h0001.png": (512, 512),
        f"{TBX}/tb/tb0005.png": (512, 512),
        f"{TBX}/tb/tb0007.png": (512, 512),
    }
    for rel, shape in cases.items():
        img = read_image(data_dir / rel)
        assert img.dtype == np.float32 and img.shape == shape, rel
        assert 0 <= img.min() < img.max() <= 255, rel


def test_kermany_originals_read_to_gray(data_dir):
    root = data_dir / "kermany_originals"
    if not root.is_dir():
        pytest.skip("kermany_originals missing")
    with open(root / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 50 and any(r["mode"] == "RGB" for r in rows)
    for r in rows:
        img = read_image(root / r["path"])
        assert img.ndim == 2 and img.dtype == np.float32, r["path"]
        assert img.shape == (int(r["height"]), int(r["width"])), r["path"]
        if r["mode"] == "RGB":  # matches Pillow's ITU-R 601 "L" conversion
            with Image.open(root / r["path"]) as im:
                np.testing.assert_array_equal(img, np.asarray(im.convert("L"), np.float32))


# --------------------------------------------------------- pixel semantics


def test_16bit_png_keeps_precision(write):
    arr = (np.arange(40 * 30, dtype=np.uint32).reshape(40, 30) * 53 % 65536).astype(np.uint16)
    arr[0, 0], arr[0, 1] = 65535, 1  # odd values and the extremes survive
    path = write("g16.png", pil_bytes(Image.fromarray(arr), "PNG"))
    with open(path, "rb") as f:
        assert f.read(25)[24] == 16
    np.testing.assert_array_equal(read_image(path), arr.astype(np.float32))


def test_16bit_rgb_png_keeps_precision(write):
    # Pillow would cut 16-bit RGB to 8 bits; the reader must not.
    gray = np.array([[0, 1, 257, 65535], [1000, 2001, 30001, 65534]], np.uint16)
    path = write("rgb16.png", encode_png(np.repeat(gray[..., None], 3, axis=2)))
    np.testing.assert_array_equal(read_image(path), gray.astype(np.float32))
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 65535)])
    np.testing.assert_array_equal(read_image(write("rgba16.png", encode_png(rgba))), gray.astype(np.float32))
    cut = write("cut16.png", encode_png(rgba)[:-30])
    # the chunk walk names the fault (TF alone says only "Invalid PNG data")
    with pytest.raises(CXRImageError, match=r"cut16\.png: truncated or corrupt 16-bit PNG file \(chunk .IDAT. runs past the end"):
        read_image(cut)


def test_rgba_palette_and_1bit_png_read_to_gray(write):
    rgb = np.dstack([GRAY, 255 - GRAY, GRAY // 2]).astype(np.uint8)
    rgba = np.dstack([rgb, np.full(GRAY.shape, 128, np.uint8)])
    expected = np.asarray(Image.fromarray(rgb).convert("L"), np.float32)
    np.testing.assert_array_equal(read_image(write("rgba.png", encode_png(rgba))), expected)
    # Gray stored as RGB comes back exactly.
    np.testing.assert_array_equal(read_image(write("grgb.png", encode_png(np.dstack([GRAY] * 3)))), GRAY)
    pal = Image.fromarray(GRAY).convert("P")
    np.testing.assert_array_equal(
        read_image(write("p.png", pil_bytes(pal, "PNG"))), np.asarray(pal.convert("L"), np.float32)
    )
    bits = Image.fromarray(GRAY > 40).convert("1")
    img = read_image(write("b.png", pil_bytes(bits, "PNG")))
    assert set(np.unique(img)) <= {0.0, 255.0} and img.shape == GRAY.shape


def test_bmp_gif_tiff_npy(write, tmp_path):
    for fmt, name in (("BMP", "a.bmp"), ("GIF", "a.gif"), ("TIFF", "a.tif")):
        np.testing.assert_array_equal(read_image(write(name, pil_bytes(Image.fromarray(GRAY), fmt))), GRAY)
    t16 = (GRAY.astype(np.uint16) * 250)
    np.testing.assert_array_equal(read_image(write("a16.tif", pil_bytes(Image.fromarray(t16), "TIFF"))), t16)
    np.save(tmp_path / "f.npy", GRAY.astype(np.float64) / 7)
    np.testing.assert_allclose(read_image(tmp_path / "f.npy"), GRAY / 7, rtol=1e-6)


# ------------------------------------------------------------------ bad input


@pytest.fixture
def bad_files(data_dir, write, tmp_path):
    """name -> (path, expected words in the error) for every kind of bad input."""
    real_png = (data_dir / f"{TBX}/tb/tb0005.png").read_bytes()
    real_jpg = (data_dir / "misc_images/16747_3_1.jpg").read_bytes()
    return {
        "empty_png": (write("empty.png", b""), "file is empty (0 bytes)"),
        "empty_jpg": (write("empty.jpg", b""), "file is empty (0 bytes)"),
        "empty_dcm": (write("empty.dcm", b""), "file is empty (0 bytes)"),
        "truncated_png": (write("half.png", real_png[: len(real_png) // 2]), "truncated"),
        "truncated_jpg": (write("half.jpg", real_jpg[: len(real_jpg) // 2]), "truncated"),
        "text_png": (write("notes.png", b"Findings: no acute cardiopulmonary process.\n"), "unrecognised file format"),
        "huge_png": (write("huge.png", huge_png_header()), "claims 100000x100000 pixels, over the limit of"),
        "missing": (str(tmp_path / "nothere.png"), "file not found"),
        "directory": (str(tmp_path), "is a directory"),
    }


def test_each_bad_file_raises_named_error(bad_files):
    for name, (path, words) in bad_files.items():
        with pytest.raises(CXRImageError) as e:
            read_image(path)
        msg = str(e.value)
        assert path in msg and words in msg, f"{name}: {msg}"
        assert e.value.path == path


def test_huge_jpeg_bmp_gif_headers_refused(write):
    jpg = bytearray(pil_bytes(Image.fromarray(GRAY), "JPEG"))
    sof = jpg.index(b"\xff\xc0")
    jpg[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)
    bmp = bytearray(pil_bytes(Image.fromarray(GRAY), "BMP"))
    bmp[18:26] = struct.pack("<ii", 50000, -50000)
    gif = bytearray(pil_bytes(Image.fromarray(GRAY), "GIF"))
    gif[6:10] = struct.pack("<HH", 65535, 65535)
    cases = (("j.jpg", jpg, "60000x60000"), ("b.bmp", bmp, "50000x50000"), ("g.gif", gif, "65535x65535"))
    for name, data, dims in cases:
        with pytest.raises(CXRImageError, match=f"claims {dims} pixels, over the limit"):
            read_image(write(name, bytes(data)))


def test_max_pixels_is_configurable(write):
    path = write("g.png", pil_bytes(Image.fromarray(GRAY), "PNG"))
    with pytest.raises(CXRImageError, match="claims 32x24 pixels, over the limit of 500"):
        read_image(path, max_pixels=500)
    assert read_image(path, max_pixels=None).shape == (24, 32)


def test_validate_images_skip_and_raise(data_dir, bad_files, tmp_path):
    good = [str(data_dir / f"{TBX}/health/h0001.png"), str(data_dir / "misc_images/16747_3_1.jpg")]
    dicom = data_dir / "dicom" / "txv_Fake_MONOHR1.dcm"
    if dicom.exists():
        good.append(str(dicom))
    bad = [p for p, _ in bad_files.values()]
    paths = [good[0], *bad[:4], *good[1:], *bad[4:]]

    ok, skipped = validate_images(paths, on_error="skip", workers=2)
    assert ok == good
    assert [p for p, _ in skipped] == bad
    causes = dict(skipped)
    for path, words in bad_files.values():
        assert words in causes[path]

    with pytest.raises(CXRImageError) as e:
        validate_images(paths, on_error="raise")
    assert e.value.path == bad[0]  # first bad file in input order
    assert validate_images(good) == (good, [])

    out = write_skip_list(skipped, tmp_path / "reports" / "skipped.csv")
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["path"], r["cause"]) for r in rows] == skipped


def test_validate_images_rejects_bad_option():
    with pytest.raises(ValueError):
        validate_images([], on_error="ignore")


# ------------------------------------------------------------ property tests

_SMALL = np.add.outer(np.arange(12), np.arange(10)).astype(np.uint8) * 9
SEEDS = {
    ".png": pil_bytes(Image.fromarray(_SMALL), "PNG"),
    ".jpg": pil_bytes(Image.fromarray(_SMALL), "JPEG", quality=90),
    ".dcm": make_dicom_bytes(_SMALL),
    ".bmp": pil_bytes(Image.fromarray(_SMALL), "BMP"),
    ".tif": pil_bytes(Image.fromarray(_SMALL), "TIFF"),
    ".gif": pil_bytes(Image.fromarray(_SMALL), "GIF"),
}
_TMP = tempfile.TemporaryDirectory(prefix="cxr_io_fuzz_")  # one folder for all examples


def _read_never_crashes(data: bytes, suffix: str) -> None:
    path = f"{_TMP.name}/sample{suffix}"
    with open(path, "wb") as f:
        f.write(data)
    try:
        img = read_image(path, max_pixels=1 << 20)  # keep allocations small while fuzzing
    except CXRImageError as e:
        assert e.path == path and e.cause
    else:
        assert img.dtype == np.float32 and img.ndim == 2 and img.size > 0


FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.filterwarnings("ignore")  # corrupt inputs make Pillow/pydicom warn, by design
@FUZZ
@given(data=st.binary(max_size=600), suffix=st.sampled_from([".png", ".jpg", ".dcm", ".bin"]))
def test_random_bytes_only_raise_cxr_image_error(data, suffix):
    _read_never_crashes(data, suffix)


@st.composite
def mutated(draw):
    suffix = draw(st.sampled_from(sorted(SEEDS)))
    # Mutations cluster in the headers, where parsers are most fragile.
    return mutate(draw, SEEDS[suffix], 8, head=400), suffix


@pytest.mark.filterwarnings("ignore")
@FUZZ
@given(case=mutated())
def test_mutated_valid_files_only_raise_cxr_image_error(case):
    _read_never_crashes(*case)
