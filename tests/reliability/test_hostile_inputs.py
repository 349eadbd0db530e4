"""A hostile input corpus through the real entry points.

Reader-level cases (every decoder, random and mutated bytes) are in tests/io; this file
checks what a user sees: ``pneumonia_freeze.main`` and ``cxr_tf.cli.evaluate.main`` return 2
and print ``cxr_tf: error: <path>: <cause>`` (no traceback), and ``--on-error skip``
finishes with every bad file listed in ``skipped.csv``.

Wrong extensions: the content decides, never the extension. A PNG named ``.jpeg``, a
JPEG named ``.png`` and a DICOM named ``.png`` are read as what they are and used for
training (before the fix in ``cxr_tf.data.pipeline.prepare_items`` a DICOM named
``.png`` reached ``tf.io.decode_image`` mid-training and stopped the run with a raw
TensorFlow error).
"""
from __future__ import annotations

import csv
import io
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _rel_helpers import dicom_bytes

RUN = ["--format", "folder", "--classes", "pneumonia", "--smoke", "--backbone", "tiny_cnn", "--freeze-until", "0",
       "--image-size", "32", "--epochs", "1", "--export", "false"]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _corpus(good_png: bytes) -> dict[str, tuple[bytes, str]]:
    """name -> (content, expected cause) of files that must be refused."""
    import pydicom
    from PIL import Image
    from pydicom.encaps import encapsulate

    buf = io.BytesIO()
    Image.open(io.BytesIO(good_png)).convert("L").save(buf, "JPEG")
    jpeg = buf.getvalue()
    dcm = dicom_bytes(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32))
    ds = pydicom.dcmread(io.BytesIO(dcm))
    del ds.PixelData
    b = io.BytesIO()
    ds.save_as(b)
    no_pixels = b.getvalue()
    ds = pydicom.dcmread(io.BytesIO(dcm))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no pixel decoder
    ds.PixelData = encapsulate([ds.PixelData])
    b = io.BytesIO()
    ds.save_as(b, implicit_vr=False, little_endian=True)
    mpeg2 = b.getvalue()
    huge = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + _png_chunk(b"IEND", b""))
    return {
        "trunc.png": (good_png[: len(good_png) // 2], "truncated or corrupt PNG"),
        "trunc.jpeg": (jpeg[: len(jpeg) // 2], "truncated or corrupt JPEG"),
        "trunc.dcm": (dcm[: len(dcm) - 600], "cannot decode the .* pixel data"),
        "zero.png": (b"", r"file is empty \(0 bytes\)"),
        "zero.jpeg": (b"", r"file is empty \(0 bytes\)"),
        "zero.dcm": (b"", r"file is empty \(0 bytes\)"),
        "report.jpeg": (b"a radiology report, not an image\n" * 4, "unrecognised file format"),
        "nopixels.dcm": (no_pixels, "no pixel data"),
        "mpeg2.dcm": (mpeg2, "transfer syntax MPEG2 .* is not supported"),
        "huge.png": (huge, "claims 100000x100000 pixels, over the limit"),
    }


def _renamed(good_png: bytes) -> dict[str, bytes]:
    """Good files under a misleading extension: read by content."""
    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(good_png)).convert("L").save(buf, "JPEG")
    dcm = dicom_bytes(np.asarray(Image.open(io.BytesIO(good_png))).astype(np.uint16) * 16)
    return {"png_named.jpeg": good_png, "jpeg_named.png": buf.getvalue(), "dicom_named.png": dcm}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from cxr_tf.datasets.synthetic import write_synthetic_folder

    root = tmp_path_factory.mktemp("hostile") / "data"
    write_synthetic_folder(root, n=40, image_size=32, seed=0, class_names=("normal", "pneumonia"))
    good = sorted((root / "normal").glob("*.png"))[0].read_bytes()
    return root, _corpus(good), _renamed(good)


def _expect_error(main, argv, capsys, path, cause):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = [l for l in err.splitlines() if l.startswith("cxr_tf: error:")]
    assert line, err[-2000:]
    assert re.search(rf"cxr_tf: error: {re.escape(str(path))}: .*{cause}", line[-1]), line[-1]
    return line[-1]


@pytest.mark.parametrize("name", ["trunc.png", "trunc.jpeg", "trunc.dcm", "zero.png", "zero.jpeg", "zero.dcm",
                                  "report.jpeg", "nopixels.dcm", "mpeg2.dcm", "huge.png"])
def test_training_entry_point_names_each_bad_file(folder, name, tmp_path, capsys):
    from cxr_tf.experiments import pneumonia_freeze

    root, corpus, _ = folder
    bad = root / "pneumonia" / name
    bad.write_bytes(corpus[name][0])
    try:
        _expect_error(pneumonia_freeze.main, ["--data-dir", str(root), *RUN, "--runs-dir", str(tmp_path / "runs"),
                                              "--cache-dir", str(tmp_path / "cache")], capsys, bad, corpus[name][1])
    finally:
        bad.unlink()


def test_on_error_skip_finishes_and_lists_every_bad_file(folder, tmp_path, capsys):
    from cxr_tf.experiments import pneumonia_freeze

    root, corpus, renamed = folder
    written = []
    for name, (content, _) in corpus.items():
        written.append(root / "pneumonia" / name)
        written[-1].write_bytes(content)
    for name, content in renamed.items():
        written.append(root / "normal" / name)
        written[-1].write_bytes(content)
    try:
        assert pneumonia_freeze.main(["--data-dir", str(root), *RUN, "--on-error", "skip", "--runs-dir",
                                      str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]) == 0
    finally:
        for p in written:
            p.unlink()
    [run] = list((tmp_path / "runs" / "pneumonia_freeze").iterdir())
    with open(run / "skipped.csv", newline="") as f:
        skipped = {r["path"].rsplit("/", 1)[-1]: r["cause"] for r in csv.DictReader(f)}
    assert set(skipped) == set(corpus)
    for name, (_, cause) in corpus.items():
        assert re.search(cause, skipped[name]), (name, skipped[name])
    used = pd.read_csv(run / "splits.csv")["item"].map(lambda p: p.rsplit("/", 1)[-1])
    assert set(renamed) <= set(used)  # wrong extensions: read by content and trained on
    assert len(used) == 40 + len(renamed)
    assert f"skipped {len(corpus)} unreadable files" in capsys.readouterr().out


def _csv_dataset(tmp_path, rows):
    from PIL import Image

    (tmp_path / "img").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")
    base = [(f"img/{i}.png", ["normal", "pneumonia"][i % 2], f"p{i // 2}") for i in range(12)]
    path = tmp_path / "manifest.csv"
    pd.DataFrame(base + rows, columns=["path", "label", "patient_id"]).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("row, cause, where", [
    (("img/0.png", "pnuemonia", "p99"), r"unknown labels \['pnuemonia'\] in rows \[14\]", "csv"),
    (("img/missing.png", "normal", "p99"), "file not found", "img/missing.png"),
    (("../outside.png", "normal", "p99"), r"row 14: path '../outside.png' escapes the data root", "csv"),
    (("img/0.png", "", "p99"), r"rows \[14\] have no label", "csv"),
    (("img/0.png", "normal", ""), r"rows \[14\] have no patient id", "csv"),
])
def test_manifest_problems_are_named(tmp_path, capsys, row, cause, where):
    from cxr_tf.experiments import pneumonia_freeze

    manifest = _csv_dataset(tmp_path, [row])
    path = manifest if where == "csv" else (tmp_path / where).resolve()
    _expect_error(pneumonia_freeze.main, ["--data-dir", str(manifest), *RUN, "--format", "csv", "--runs-dir",
                                          str(tmp_path / "runs")], capsys, path, cause)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_npz_with_nan_or_inf_is_named(tmp_path, capsys, bad):
    from cxr_tf.experiments import pneumonia_freeze

    x = np.random.default_rng(0).random((20, 16, 16)).astype(np.float32)
    x[3, 4, 5] = bad
    path = tmp_path / "pneumoniamnist.npz"
    np.savez(path, train_images=x, train_labels=np.arange(20) % 2, val_images=x[:4], val_labels=np.arange(4) % 2)
    argv = ["--data-dir", str(path), *RUN, "--format", "npz", "--runs-dir", str(tmp_path / "runs")]
    _expect_error(pneumonia_freeze.main, argv, capsys, path, "'train_images' contains NaN or inf")


def test_evaluate_entry_point(tiny_export, folder, tmp_path, capsys, monkeypatch):
    from cxr_tf.cli import evaluate

    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the DICOM decode cache (~/.cache) stays in tmp

    model_path, _ = tiny_export
    root, corpus, renamed = folder
    bad = root / "pneumonia" / "trunc.dcm"
    bad.write_bytes(corpus["trunc.dcm"][0])
    good = root / "normal" / "dicom_named.png"
    good.write_bytes(renamed["dicom_named.png"])
    try:
        argv = ["--model", str(model_path), "--data-dir", str(root), "--format", "folder"]
        _expect_error(evaluate.main, [*argv, "--out", str(tmp_path / "e1")], capsys, bad, corpus["trunc.dcm"][1])
        assert evaluate.main([*argv, "--out", str(tmp_path / "e2"), "--on-error", "skip"]) == 0
        skipped = (tmp_path / "e2" / "skipped.csv").read_text()
        assert "trunc.dcm" in skipped and "dicom_named.png" not in skipped
    finally:
        bad.unlink()
        good.unlink()
    manifest = _csv_dataset(tmp_path, [("img/0.png", "covid", "p99")])
    _expect_error(evaluate.main, ["--model", str(model_path), "--data-dir", str(manifest), "--format", "csv",
                                  "--out", str(tmp_path / "e3")], capsys, manifest,
                  r"dataset classes \['covid'\] are not among the model's classes")
    _expect_error(evaluate.main, ["--model", str(tmp_path), "--data-dir", str(manifest), "--out",
                                  str(tmp_path / "e4")], capsys, tmp_path, "not a SavedModel directory")


# ----------------------------------------------------------------- fuzzing the manifest reader
_CELLS = st.one_of(
    st.sampled_from(["img/a.png", "img/../img/a.png", "../x.png", "/etc/passwd", "", " ", "nan", "NA", "normal",
                     "pneumonia", "a,b", 'q"q', "\x00", "é", "img/a.png\n", "img\\a.png"]),
    st.text(max_size=12),
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(header=st.sampled_from(["path,label,patient_id", "path,label", "label,path,patient", "path", "",
                               "path,label,patient_id,extra", " path , label ", "path,path,label"]),
       rows=st.lists(st.lists(_CELLS, max_size=5), max_size=6), quoted=st.booleans(),
       names=st.one_of(st.none(), st.just(["normal", "pneumonia"])))
def test_manifest_reader_fuzz(tmp_path_factory, header, rows, quoted, names):
    """Any manifest text: a CXRDataset obeying the contract, or CXRDatasetError; nothing else."""
    from cxr_tf.datasets import load_csv_manifest
    from cxr_tf.errors import CXRDatasetError

    root = tmp_path_factory.getbasetemp() / "fuzz_manifest"
    (root / "img").mkdir(parents=True, exist_ok=True)
    if quoted:
        buf = io.StringIO()
        buf.write(header + "\n")
        csv.writer(buf).writerows(rows)
        text = buf.getvalue()
    else:
        text = header + "\n" + "\n".join(",".join(r) for r in rows)
    path = root / "m.csv"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = load_csv_manifest(path, class_names=names)
        except CXRDatasetError as e:
            assert e.path == str(path)
            return
    assert len(ds) >= 1 and ds.labels.shape == (len(ds), len(ds.class_names))
    assert np.all(ds.labels.sum(1) == 1)
    assert all(c.strip() and c.lower() not in ("nan", "na") for c in ds.class_names)
    assert all(p.strip() and p != "nan" for p in ds.patient_ids)
    resolved_root = root.resolve()
    assert all(resolved_root in Path(p).parents for p in ds.items)
