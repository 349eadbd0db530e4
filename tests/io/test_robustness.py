"""Issue 14, reader level: precision, DICOM presentation, NaN, memory, links, byte-safe names,
EXIF orientation and the graph-decoder contract."""
from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from _io_helpers import encode_png, make_dicom_bytes, mutate

from cxr_tf.errors import CXRDatasetError, CXRImageError
from cxr_tf.io import (graph_input, prepare_graph_inputs, read_image, read_skip_list, sniff_format,
                       validate_images, write_skip_list)
from cxr_tf.io.formats import jpeg_scan_problem


def tiff_rgb16(a: np.ndarray, byteorder: str = "<") -> bytes:
    """An uncompressed 16-bit RGB TIFF (Pillow writes no 16-bit colour TIFF)."""
    h, w, c = a.shape
    data = a.astype(byteorder + "u2").tobytes()
    n_tags, ifd_off = 10, 8
    bps_off = ifd_off + 2 + n_tags * 12 + 4
    data_off = bps_off + 2 * c
    short = lambda v: struct.pack(byteorder + "HH", v, 0)  # noqa: E731
    long_ = lambda v: struct.pack(byteorder + "I", v)  # noqa: E731
    tags = [(256, 3, 1, short(w)), (257, 3, 1, short(h)), (258, 3, c, long_(bps_off)), (259, 3, 1, short(1)),
            (262, 3, 1, short(2)), (273, 4, 1, long_(data_off)), (277, 3, 1, short(c)), (278, 3, 1, short(h)),
            (279, 4, 1, long_(len(data))), (284, 3, 1, short(1))]
    out = (b"II" if byteorder == "<" else b"MM") + struct.pack(byteorder + "HI", 42, ifd_off)
    out += struct.pack(byteorder + "H", n_tags)
    out += b"".join(struct.pack(byteorder + "HHI", t, ty, n) + v for t, ty, n, v in tags) + long_(0)
    return out + struct.pack(byteorder + f"{c}H", *([16] * c)) + data


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_16bit_rgb_tiff_keeps_its_precision(write, byteorder):
    ramp = np.linspace(0, 65535, 64 * 64).astype(np.uint16).reshape(64, 64)
    a = np.stack([ramp, ramp, ramp], -1)
    path = write("rgb16.tif", tiff_rgb16(a, byteorder))
    assert sniff_format(path) == "tiff"
    out = read_image(path)
    np.testing.assert_array_equal(out, ramp.astype(np.float32))  # equal channels: exact
    assert len(np.unique(out)) > 3000  # not the 256 (or 60) levels of an 8-bit cut


def test_dicom_presentation_lut_inverse_is_honoured(write):
    x = np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 10
    plain = read_image(write("plain.dcm", make_dicom_bytes(x, BitsStored=12)))
    inverse = read_image(write("inv.dcm", make_dicom_bytes(x, BitsStored=12, PresentationLUTShape="INVERSE")))
    np.testing.assert_allclose(inverse, 4095 - plain)  # flipped within the 12-bit range
    # MONOCHROME1 + INVERSE restates the same inversion: flipped once, not twice
    mono1 = read_image(write("m1.dcm", make_dicom_bytes(x, BitsStored=12, photometric="MONOCHROME1")))
    both = read_image(write("m1inv.dcm", make_dicom_bytes(x, BitsStored=12, photometric="MONOCHROME1",
                                                         PresentationLUTShape="INVERSE")))
    np.testing.assert_allclose(both, mono1)


def test_all_nan_float_image_is_refused_partial_nan_is_not(write):
    b = io.BytesIO()
    np.save(b, np.full((8, 8), np.nan, np.float32))
    with pytest.raises(CXRImageError, match="no finite pixel values"):
        read_image(write("nan.npy", b.getvalue()))
    x = np.ones((8, 8), np.float32)
    x[0, 0] = np.nan
    b = io.BytesIO()
    np.save(b, x)
    assert read_image(write("some_nan.npy", b.getvalue())).shape == (8, 8)


def test_corrupt_mid_jpeg_refused_and_real_jpegs_pass(kermany_dir, write):
    files = sorted((kermany_dir / "train").rglob("*.jpeg"))[:60]
    assert files and all(jpeg_scan_problem(p.read_bytes()) is None for p in files)
    data = bytearray(files[0].read_bytes())
    n = len(data)
    data[n // 2:n // 2 + 8] = b"\xff\xd5\xff\xd5\xff\xd5\xff\xd5"  # restart markers out of sequence
    path = write("mid.jpeg", bytes(data))
    with pytest.raises(CXRImageError, match=r"corrupt scan data"):
        read_image(path)  # Pillow alone would return garbage pixels
    with pytest.raises(CXRImageError, match=r"corrupt scan data"):
        graph_input(path)  # and so would TF


def test_huge_header_jpeg_refused_before_allocating(kermany_dir, write):
    data = bytearray(sorted((kermany_dir / "train").rglob("*.jpeg"))[0].read_bytes()[:1500])
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 9000, 9000)
    path = write("huge.jpeg", bytes(data) + b"\xff\xd9")
    t = time.perf_counter()
    with pytest.raises(CXRImageError, match=r"claims 9000x9000 pixels but holds only 1502 bytes"):
        graph_input(path)
    assert time.perf_counter() - t < 1.0


def test_16bit_rgba_png_budget_and_peak_memory(tmp_path):
    """Over the budget: refused from the header. At 16 MP: decoded in < 40 bytes/pixel of
    extra peak RSS (issue 14 measured 62 before luminance stopped copying to float64)."""
    from cxr_tf.io._common import budget_bytes

    w = h = 4000
    rows = (np.full((w, 4), 1000 + i, ">u2").tobytes() for i in range(h))
    import zlib

    comp = zlib.compressobj(1)
    idat = b"".join(comp.compress(b"\0" + r) for r in rows) + comp.flush()

    def chunk(k, d):
        return struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 6, 0, 0, 0))
           + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    path = tmp_path / "rgba16.png"
    path.write_bytes(png)
    assert w * h <= 20_000_000 and w * h * 8 > budget_bytes(20_000_000)
    with pytest.raises(CXRImageError, match=r"4000x4000 pixels x 4 channel\(s\) x 16 bits needs 128 MB decoded, "
                                            r"over the per-image budget of 40 MB"):
        read_image(path, max_pixels=20_000_000)
    # /proc VmHWM, not getrusage: a child started by vfork+exec inherits its parent's peak in
    # ru_maxrss (a multi-GB pytest process would hide the child's own). clear_refs "5" resets
    # the peak to the current RSS, so the difference is the decode's own peak.
    code = ("import sys\n"
            "import tensorflow\n"
            "from cxr_tf.io import read_image\n"
            "def kb(key):\n"
            "    return int(next(l for l in open('/proc/self/status') if l.startswith(key)).split()[1])\n"
            "open('/proc/self/clear_refs', 'w').write('5')\n"
            "r0 = kb('VmRSS')\n"
            "x = read_image(sys.argv[1])\n"
            "assert x.shape == (4000, 4000) and float(x.min()) == 1000.0\n"
            "print((kb('VmHWM') - r0) * 1024 / x.size)\n")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": os.getcwd()}
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    per_pixel = float(r.stdout.strip().splitlines()[-1])
    print(f"16-bit RGBA PNG: {per_pixel:.1f} bytes of peak RSS per pixel")
    assert per_pixel < 40, per_pixel


def test_validation_never_decodes_two_big_files_at_once(tmp_path, monkeypatch):
    from cxr_tf.io import validate

    small = [tmp_path / f"s{i}.png" for i in range(6)]
    big = [tmp_path / f"b{i}.png" for i in range(4)]
    for p in small:
        p.write_bytes(encode_png(np.zeros((10, 10), np.uint8)))
    for p in big:  # 120 x 100 x 3 bytes = 36,000 bytes: two exceed the 40,000-byte budget
        p.write_bytes(encode_png(np.zeros((100, 120, 3), np.uint8)))
    real = validate.graph_input
    active, peak = {"small": 0, "big": 0}, {"small": 0, "big": 0, "any": 0}
    lock = threading.Lock()

    def tracked(p, **kw):
        kind = "big" if os.path.basename(p).startswith("b") else "small"
        with lock:
            active[kind] += 1
            peak[kind] = max(peak[kind], active[kind])
            peak["any"] = max(peak["any"], active["small"] + active["big"])
        time.sleep(0.05)
        try:
            return real(p, **kw)
        finally:
            with lock:
                active[kind] -= 1

    monkeypatch.setattr(validate, "graph_input", tracked)
    ok, _ = validate_images([*map(str, small)], max_pixels=20_000, workers=2)
    assert len(ok) == 6 and peak["any"] == 2  # small files do run side by side
    peak.update(small=0, big=0, any=0)
    ok, _ = validate_images([*map(str, big)], max_pixels=20_000, workers=2)
    assert len(ok) == 4 and peak["big"] == 1


def test_exif_orientation_applied_on_every_path(tmp_path):
    import tensorflow as tf
    from PIL import Image

    from cxr_tf.data.preprocess import decode_image

    x = np.tile(np.arange(40, dtype=np.uint8) * 6, (24, 1))  # 24 rows x 40 columns
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rot.jpeg"
    Image.fromarray(x).save(path, exif=exif.tobytes(), quality=95)
    eager = read_image(path)
    assert eager.shape == (40, 24)  # upright, as a viewer shows it
    src = graph_input(str(path), cache_dir=tmp_path / "cache")
    assert src != str(path)  # the graph never sees the rotated JPEG itself (TF ignores EXIF)
    graph = decode_image(tf.io.read_file(src)).numpy()[..., 0]
    assert graph.shape == (40, 24)
    lo, hi = eager.min(), eager.max()
    np.testing.assert_allclose(graph / 65535.0, (eager - lo) / (hi - lo), atol=1e-4)


def test_graph_contract_by_format(tmp_path, kermany_dir):
    """PNG/JPEG the graph decodes stay as they are; BMP, GIF and CMYK JPEG go through the cache."""
    from PIL import Image

    jpeg = sorted((kermany_dir / "train").rglob("*.jpeg"))[0]
    im = Image.open(jpeg).convert("L")
    files = {"ok.jpeg": jpeg.read_bytes()}
    for name, mode, fmt in (("a.bmp", "RGB", "BMP"), ("a.gif", "L", "GIF"), ("c.jpeg", "CMYK", "JPEG"),
                            ("g.png", "L", "PNG")):
        b = io.BytesIO()
        im.convert(mode).save(b, fmt)
        files[name] = b.getvalue()
    paths = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    ok, graph, skipped = prepare_graph_inputs(paths, cache_dir=tmp_path / "cache")
    assert skipped == [] and ok == paths
    native = {os.path.basename(p): g == p for p, g in zip(ok, graph)}
    assert native == {"ok.jpeg": True, "a.bmp": False, "a.gif": False, "c.jpeg": False, "g.png": True}


def test_skip_list_and_splits_are_byte_safe(tmp_path):
    import pandas as pd

    from cxr_tf.datasets import load_splits
    from cxr_tf.datasets.contract import CXRDataset
    from cxr_tf.datasets.splits import save_splits

    odd = str(tmp_path) + "/" + os.fsdecode(b"caf\xe9_\xff.png")  # Latin-1 bytes, not UTF-8
    rows = [(odd, "truncated or corrupt PNG file"), (str(tmp_path / "ok, \"quoted\".png"), "x")]
    out = write_skip_list(rows, tmp_path / "skipped.csv")
    assert read_skip_list(out) == rows
    assert b"caf\xe9_\xff.png" in open(out, "rb").read()  # the file's own bytes, not mojibake

    items = [odd, str(tmp_path / "b.png")]
    meta = pd.DataFrame({"item": items, "patient_id": ["p1", "p2"]})
    ds = CXRDataset(items, np.eye(2, dtype=np.float32), ["a", "b"], meta, name="t")
    save_splits(tmp_path / "splits.csv", ds, ["train", "test"])
    assert list(load_splits(tmp_path / "splits.csv", ds)) == ["train", "test"]


def test_folder_lists_tif_npy_and_names_dirs_and_broken_links(tmp_path):
    from PIL import Image

    from cxr_tf.datasets import load_folder

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.fromarray(np.full((8, 8), 7, np.uint8)).save(tmp_path / c / "x.png")
    Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 100).save(tmp_path / "a" / "y.tif")
    np.save(tmp_path / "b" / "z.npy", np.eye(8, dtype=np.float32))
    (tmp_path / "a" / "folder.png").mkdir()
    os.symlink("missing.png", tmp_path / "b" / "broken.png")
    os.symlink("loop.png", tmp_path / "b" / "loop.png")
    ds = load_folder(tmp_path)
    names = sorted(os.path.basename(p) for p in ds.items)
    assert names == ["broken.png", "folder.png", "loop.png", "x.png", "x.png", "y.tif", "z.npy"]
    ok, skipped = validate_images(ds.items, on_error="skip")
    causes = {os.path.basename(p): c for p, c in skipped}
    assert causes.keys() == {"broken.png", "folder.png", "loop.png"}
    assert causes["folder.png"] == "is a directory, not an image file"
    assert causes["broken.png"].startswith("broken symbolic link")
    assert causes["loop.png"].startswith("symbolic link loop")


def test_csv_manifest_links_are_per_item_errors(tmp_path):
    import pandas as pd
    from PIL import Image

    from cxr_tf.datasets import load_csv_manifest

    (tmp_path / "img").mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8), i, np.uint8)).save(tmp_path / "img" / f"{i}.png")
    outside = tmp_path.parent / f"{tmp_path.name}_outside.png"
    outside.write_bytes((tmp_path / "img" / "0.png").read_bytes())
    os.symlink(outside, tmp_path / "img" / "out.png")
    os.symlink("loop.png", tmp_path / "img" / "loop.png")
    rows = [(f"img/{i}.png", "n" if i % 2 else "p", f"p{i}") for i in range(4)]
    rows += [("img/out.png", "n", "p8"), ("img/loop.png", "p", "p9")]
    pd.DataFrame(rows, columns=["path", "label", "patient_id"]).to_csv(tmp_path / "m.csv", index=False)
    ds = load_csv_manifest(tmp_path / "m.csv", on_error="skip")
    assert [(os.path.basename(p), c.split(",")[0]) for p, c in ds.skipped] == [("out.png", f"symbolic link to {str(outside)!r}")]
    assert len(ds) == 5  # the loop is left to validation, which names it
    _, skipped = validate_images(ds.items, on_error="skip")
    assert [(os.path.basename(p), c) for p, c in skipped] == [("loop.png", "symbolic link loop (the link resolves to itself)")]
    with pytest.raises(CXRImageError, match="outside the data root") as e:
        load_csv_manifest(tmp_path / "m.csv")
    assert e.value.path.endswith("img/out.png")
    with pytest.raises(CXRDatasetError, match="escapes the data root"):
        pd.DataFrame([("../x.png", "n", "p")], columns=["path", "label", "patient_id"]).to_csv(tmp_path / "e.csv",
                                                                                           index=False)
        load_csv_manifest(tmp_path / "e.csv")


# ------------------------------------------------------- fuzzing the graph-decoder path
def _graph_seeds() -> dict[str, bytes]:
    from PIL import Image

    x = (np.arange(24 * 20) % 251).astype(np.uint8).reshape(24, 20)
    out = {}
    for name, mode, fmt in (("g.png", "L", "PNG"), ("c.jpg", "RGB", "JPEG"), ("k.jpg", "CMYK", "JPEG"),
                            ("b.bmp", "RGB", "BMP"), ("a.gif", "L", "GIF"), ("t.tif", "L", "TIFF")):
        b = io.BytesIO()
        Image.fromarray(x).convert(mode).save(b, fmt)
        out[name] = b.getvalue()
    out["w.png"] = encode_png(np.stack([x.astype(np.uint16) * 257] * 3, -1))  # 16-bit colour
    out["d.dcm"] = make_dicom_bytes(x.astype(np.uint16))
    return out


GRAPH_SEEDS = _graph_seeds()
_COUNTER = iter(range(10**9))


def _graph_path_holds(data: bytes, name: str, folder) -> None:
    """Either refused with a project error, or what the graph is handed decodes there."""
    import tensorflow as tf

    from cxr_tf.data.preprocess import decode_image

    path = os.path.join(folder, f"{next(_COUNTER)}_{name}")  # fresh name: no cache entry reused
    with open(path, "wb") as f:
        f.write(data)
    try:
        src = graph_input(path, max_pixels=1 << 20, cache_dir=os.path.join(folder, "cache"))
    except CXRImageError as e:
        assert e.path == path and e.cause
        return
    img = decode_image(tf.io.read_file(src))  # must not raise: validation proved it
    assert img.shape[-1] == 1 and img.shape[0] > 0 and img.shape[1] > 0


def test_graph_seeds_are_accepted(tmp_path):
    for name, data in GRAPH_SEEDS.items():
        _graph_path_holds(data, name, str(tmp_path))
        assert len(os.listdir(tmp_path)) >= 1


try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    given = None

if given is not None:
    _FOLDER = None

    @st.composite
    def _mutated(draw):
        name = draw(st.sampled_from(sorted(GRAPH_SEEDS)))
        return mutate(draw, GRAPH_SEEDS[name], 6), name

    @pytest.mark.filterwarnings("ignore")
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=_mutated())
    def test_mutated_files_never_reach_the_graph_unproved(case, tmp_path_factory):
        folder = tmp_path_factory.getbasetemp() / "graph_fuzz"
        folder.mkdir(exist_ok=True)
        _graph_path_holds(*case, str(folder))


def test_broken_16bit_colour_png_is_named_on_both_paths(tmp_path):
    """16-bit colour PNGs go through read_image (and the cache): a bad CRC is still named."""
    import zlib

    def chunk(k, d):
        return struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d))

    raw = b"".join(b"\0" + np.full((16, 3), i * 100, ">u2").tobytes() for i in range(16))
    idat = bytearray(chunk(b"IDAT", zlib.compress(raw)))
    idat[-1] ^= 1
    path = tmp_path / "c16.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 16, 2, 0, 0, 0))
                     + bytes(idat) + chunk(b"IEND", b""))
    for fn in (read_image, lambda p: graph_input(p, cache_dir=tmp_path / "c")):
        with pytest.raises(CXRImageError, match=r"16-bit PNG file \(bad CRC in the 'IDAT' chunk\)"):
            fn(str(path))
    assert not (tmp_path / "c").exists() or os.listdir(tmp_path / "c") == []
