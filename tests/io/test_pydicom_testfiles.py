"""Every file pydicom ships for its own tests (193 entries in the wheel, so offline) through
the readers and through the graph path training uses (issue 14).

Each entry either reads or raises a project error whose cause fits the file, judged
independently of cxr_tf: a directory is "a directory", a file pydicom cannot make an
image dataset of is unrecognised / has no pixel data, a DICOM whose first frame pydicom
itself decodes must be accepted (this is what caught CT_small, MR_small and
examples_rgb_color: TIFF magic in the 128-byte preamble used to win over ``DICM``).
For every accepted file, the pixels training sees (decode cache + ``tf.io.decode_image``
+ the shared per-image scaling and resize) equal :func:`read_image`'s after the same
scaling and resize within ``ATOL`` (16-bit quantisation of the cache: 0.5 / 65535, plus
float32 resize rounding).
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_files  # noqa: E402

from cxr_tf.errors import CXRDicomError, CXRImageError  # noqa: E402
from cxr_tf.io import graph_input, read_image, sniff_format  # noqa: E402

ATOL = 1e-4
SIZE = 48
FILES = sorted(get_testdata_files())


def _pydicom_verdict(path: str):
    """What pydicom alone makes of a file: ``None`` (not a dataset), ``"header"`` (no
    pixels), ``"pixels"`` (it decodes frame 0) or ``"undecodable"``."""
    from pydicom.pixels import pixel_array

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True)
    except Exception:  # noqa: BLE001 - any failure means pydicom has no dataset
        return None, None
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        return "header", ds
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixel_array(ds, index=0)
    except Exception:  # noqa: BLE001
        return "undecodable", ds
    return "pixels", ds


def test_the_wheel_ships_the_files():
    assert len(FILES) >= 190  # 193 in pydicom 3.0: the loop below must not pass on nothing


def test_every_pydicom_test_file_reads_or_is_refused_for_its_own_cause(tmp_path):
    import tensorflow as tf

    from cxr_tf.data.preprocess import prepare_float_batch, prepare_image

    # Traced once, as tf.data traces the training map (and far faster than eager ops).
    graph_fn = tf.function(lambda b: prepare_image(b, SIZE), input_signature=[tf.TensorSpec([], tf.string)])
    ref_fn = tf.function(lambda x: prepare_float_batch(x, SIZE),
                         input_signature=[tf.TensorSpec([1, None, None, 1], tf.float32)])
    accepted, refused, tiff_preamble = [], [], []
    for path in FILES:
        is_dicm = False
        if os.path.isfile(path):
            with open(path, "rb") as f:
                head = f.read(132)
            is_dicm = head[128:132] == b"DICM"
            if is_dicm and head.startswith((b"II*\x00", b"MM\x00*")):
                tiff_preamble.append(os.path.basename(path))
        verdict, _ = _pydicom_verdict(path) if os.path.isfile(path) else (None, None)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arr = read_image(path)
        except CXRImageError as e:  # anything else is a foreign exception: the test fails
            refused.append(os.path.basename(path))
            cause = e.cause
            assert e.path == path
            if os.path.isdir(path):
                assert cause == "is a directory, not an image file", (path, cause)
                continue
            assert "TIFF file" not in cause, (path, cause)  # no DICOM mistaken for a TIFF
            assert verdict != "pixels", f"{path}: pydicom decodes it, cxr_tf refused it: {cause}"
            if is_dicm:
                assert isinstance(e, CXRDicomError), (path, cause)
                assert sniff_format(path) == "dicom"
            if verdict == "header":
                # a forced parse also makes a "dataset" of any text file: then unrecognised
                allowed = ["no pixel data", "Rows/Columns"] + ([] if is_dicm else ["unrecognised file format"])
                assert any(a in cause for a in allowed), (path, cause)
            elif verdict == "undecodable":
                # pixel data pydicom cannot decode either (no Rows, bad VR, broken J2K ...)
                assert any(a in cause for a in ("pixel data", "transfer syntax", "Rows/Columns")), (path, cause)
            elif not is_dicm:
                # text, JSON, gzip, ICC profile, a dump, or bytes pydicom finds no image in
                assert "unrecognised file format" in cause or "no pixel data" in cause or "Rows/Columns" in cause, \
                    (path, cause)
            continue

        accepted.append(os.path.basename(path))
        assert arr.ndim == 2 and arr.dtype == np.float32 and arr.size > 0
        # The graph path of training: decode cache (DICOM -> 16-bit PNG), then the graph's
        # own decoder and the shared scaling + resize.
        src = graph_input(path, cache_dir=tmp_path / "cache")
        assert src != path  # DICOM never reaches the graph decoder as it is
        graph = graph_fn(tf.io.read_file(src)).numpy()[..., 0]
        finite = np.where(np.isfinite(arr), arr, np.nanmin(arr))  # the cache maps NaN to the minimum
        ref = ref_fn(finite[None, ..., None]).numpy()[0, ..., 0]
        np.testing.assert_allclose(graph, ref, atol=ATOL, err_msg=path)

    # What the corpus holds (pydicom 3.0.x): dual TIFF/DICOM files are all accepted.
    assert {"CT_small.dcm", "MR_small.dcm"} <= set(tiff_preamble)
    assert not set(tiff_preamble) & set(refused) - {"MR_truncated.dcm"}, set(tiff_preamble) & set(refused)
    assert len(accepted) >= 80, len(accepted)
