"""Prove every image of a dataset decodes before training starts, the way the graph will.

A corrupt file found in epoch 7 wastes hours; decoding each file once up front
names it (and why) in seconds, and lets the caller skip it with a record.

The decoding contract (:mod:`cxr_tf.io.graph`): PNG and JPEG files the graph decodes
as they are are checked with the graph's own op; every other file is decoded by
:func:`cxr_tf.io.read_image` and, given a cache folder, written once as a 16-bit gray
PNG that the graph reads instead. So the graph never sees a file that was not proved.
"""
from __future__ import annotations

import csv
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

from cxr_tf.errors import CXRConfigError, CXRImageError

from ._common import DEFAULT_MAX_PIXELS, budget_bytes, decoded_bytes
from .atomic import atomic_write
from .cache import cache_path, write_cache
from .formats import declared_header, jpeg_scan_problem, png_problem, sniff_format
from .graph import GRAPH_FORMATS, clean_tf_message, tf_decode
from .images import check_header, exif_orientation, read_image

#: Encoding of every CSV that names files (skipped.csv, splits.csv, explanations.csv):
#: UTF-8, with a file name that is not valid UTF-8 written as its own bytes
#: (``surrogateescape``) and read back the same way, so such a name neither crashes
#: the writer nor comes back as a different path.
CSV_ENCODING = dict(encoding="utf-8", errors="surrogateescape")


def graph_input(path: str, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                cache_dir: str | os.PathLike | None = None) -> str | None:
    """Prove ``path`` decodes and return what the graph should read for it.

    Returns:
        ``path`` itself (a PNG/JPEG the graph decoder just decoded), the cached
        16-bit PNG of a file the graph cannot decode the same way, or ``None`` for
        such a file when no ``cache_dir`` is given (it was still fully decoded).

    Raises:
        CXRImageError: the file is unreadable, over budget or refused by a decoder.
    """
    path = os.fspath(path)
    fmt = sniff_format(path)
    if fmt in GRAPH_FORMATS:
        head = check_header(path, fmt, max_pixels)
        # A PNG whose header we cannot parse (e.g. a chunk before IHDR) still goes to
        # the graph decoder: libpng is the judge of what the graph can read.
        native = head.graph_native if head is not None else fmt == "png"
        if native and fmt == "jpeg":
            native = _jpeg_orientation(path) == 1
        if native:
            _graph_decodes(path, fmt)
            return path
    if cache_dir is not None:
        out = cache_path(path, cache_dir)
        if os.path.isfile(out):
            return out
    pixels = read_image(path, max_pixels=max_pixels)
    if cache_dir is None:
        return None
    return write_cache(pixels, out)


def _jpeg_orientation(path: str) -> int:
    from PIL import Image

    try:
        with Image.open(path, formats=["JPEG"]) as im:  # header only: no pixels decoded
            return exif_orientation(im)
    except Exception:  # noqa: BLE001 - the decoders below name a broken file
        return 1


def _graph_decodes(path: str, fmt: str) -> None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CXRImageError(path, f"cannot read file: {e.strerror or e}") from None
    if fmt == "jpeg":
        problem = jpeg_scan_problem(data)
        if problem:
            raise CXRImageError(path, f"truncated or corrupt JPEG file ({problem})")
    try:
        tf_decode(data)  # the tensor is dropped at once
    except Exception as e:  # noqa: BLE001 - tf.errors.InvalidArgumentError and friends
        why = png_problem(data, max_raw=budget_bytes(DEFAULT_MAX_PIXELS)) if fmt == "png" else None
        why = why or f"the training decoder refused it: {clean_tf_message(e)}"
        raise CXRImageError(path, f"truncated or corrupt {fmt.upper()} file ({why})") from None


class _ByteBudget:
    """Lets decodes run together only while their estimated sizes fit in one budget.

    A file that alone needs the whole budget waits until it can run by itself, so two
    big images are never decoded at once (peak memory is one image at the limit).
    """

    def __init__(self, total: int):
        self.total, self.used = total, 0
        self.cond = threading.Condition()

    def acquire(self, n: int) -> int:
        n = min(n, self.total)
        with self.cond:
            while self.used and self.used + n > self.total:
                self.cond.wait()
            self.used += n
        return n

    def release(self, n: int) -> None:
        with self.cond:
            self.used -= n
            self.cond.notify_all()


def _estimate(path: str, total: int) -> int:
    """Decoded bytes a file will take: from its header, else a bound from its size."""
    try:
        fmt = sniff_format(path)
        head = declared_header(path, fmt) if fmt in ("png", "jpeg", "bmp", "gif") else None
        if head is not None:
            return decoded_bytes(head.width, head.height, head.channels, head.bits)
        size = os.path.getsize(path)
    except (CXRImageError, OSError):
        return 0  # refused at once by the check itself
    # DICOM/TIFF/NPY: compressed data may expand ~10x; a big one runs alone.
    return total if size * 16 > total else size * 16


def prepare_graph_inputs(
    paths: Iterable[str | os.PathLike],
    *,
    cache_dir: str | os.PathLike | None = None,
    on_error: str = "raise",
    workers: int = 2,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> tuple[list[str], list[str | None], list[tuple[str, str]]]:
    """:func:`graph_input` for many files: ``(ok_paths, graph_paths, skipped)``.

    Args:
        paths: image files.
        cache_dir: where files the graph cannot decode are cached as 16-bit PNG
            (``None``: decode them to prove them, cache nothing; their graph path is ``None``).
        on_error: ``"raise"`` raises the error of the first bad file (in input
            order); ``"skip"`` leaves bad files out and reports them.
        workers: decoding threads (Pillow, zlib, TF and NumPy release the GIL); their
            decodes together stay within one per-image budget.
        max_pixels: per-image limit (see :func:`cxr_tf.io.read_image`).

    Returns:
        readable paths in input order, the path the graph reads for each, and
        ``(path, cause)`` for every unreadable one (empty with ``"raise"``).
    """
    if on_error not in ("raise", "skip"):
        raise CXRConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    paths = [os.fspath(p) for p in paths]
    total = budget_bytes(max_pixels) or budget_bytes(DEFAULT_MAX_PIXELS)
    budget = _ByteBudget(total)

    def check(p: str):
        n = budget.acquire(_estimate(p, total))
        try:
            return graph_input(p, max_pixels=max_pixels, cache_dir=cache_dir), None
        except CXRImageError as e:
            return None, e
        finally:
            budget.release(n)

    ok: list[str] = []
    graph: list[str | None] = []
    skipped: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
        for p, (g, err) in zip(paths, pool.map(check, paths)):
            if err is None:
                ok.append(p)
                graph.append(g)
            elif on_error == "raise":
                pool.shutdown(wait=True, cancel_futures=True)
                raise err
            else:
                skipped.append((p, err.cause))
    return ok, graph, skipped


def validate_images(
    paths: Iterable[str | os.PathLike],
    *,
    on_error: str = "raise",
    workers: int = 2,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> tuple[list[str], list[tuple[str, str]]]:
    """Fully decode every file once, as the graph will, to prove it is readable.

    Returns:
        ``(ok_paths, skipped)``: readable paths in input order, and
        ``(path, cause)`` for every unreadable one (empty with ``"raise"``).

    Raises:
        CXRImageError: first unreadable file, when ``on_error="raise"``.
    """
    ok, _, skipped = prepare_graph_inputs(paths, on_error=on_error, workers=workers, max_pixels=max_pixels)
    return ok, skipped


def write_skip_list(skipped: Iterable[tuple[str, str]], path_csv: str | os.PathLike) -> str:
    """Write ``(path, cause)`` rows to a CSV with header ``path,cause``.

    Names that are not valid UTF-8 are written as their own bytes (see
    :data:`CSV_ENCODING`); :func:`read_skip_list` reads them back unchanged.

    Args:
        skipped: the ``skipped`` list from :func:`validate_images`.
        path_csv: output file (parent folders are created; written atomically).

    Returns:
        ``path_csv`` as a string.
    """
    path_csv = os.fspath(path_csv)

    def write(f):
        writer = csv.writer(f)
        writer.writerow(["path", "cause"])
        writer.writerows((os.fspath(p), cause) for p, cause in skipped)

    return atomic_write(path_csv, write, "w", newline="", **CSV_ENCODING)


def read_skip_list(path_csv: str | os.PathLike) -> list[tuple[str, str]]:
    """The ``(path, cause)`` rows of a skip list written by :func:`write_skip_list`."""
    with open(path_csv, newline="", **CSV_ENCODING) as f:
        return [(r["path"], r["cause"]) for r in csv.DictReader(f)]
