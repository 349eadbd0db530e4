"""Prove every image of a dataset decodes before training starts.

A corrupt file found in epoch 7 wastes hours; decoding each file once up front
names it (and why) in seconds, and lets the caller skip it with a record.
"""
from __future__ import annotations

import csv
import os

from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

from cxr_tf.errors import CXRConfigError, CXRImageError

from ._common import DEFAULT_MAX_PIXELS, atomic_write
from .images import read_image


def validate_images(
    paths: Iterable[str | os.PathLike],
    *,
    on_error: str = "raise",
    workers: int = 2,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> tuple[list[str], list[tuple[str, str]]]:
    """Fully decode every file once to prove it is readable.

    Args:
        paths: image files.
        on_error: ``"raise"`` raises the error of the first bad file (in input
            order); ``"skip"`` leaves bad files out and reports them.
        workers: decoding threads (Pillow, zlib and NumPy release the GIL).
        max_pixels: passed to :func:`read_image`.

    Returns:
        ``(ok_paths, skipped)``: readable paths in input order, and
        ``(path, cause)`` for every unreadable one (empty with ``"raise"``).

    Raises:
        CXRImageError: first unreadable file, when ``on_error="raise"``.
    """
    if on_error not in ("raise", "skip"):
        raise CXRConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    paths = [os.fspath(p) for p in paths]

    def check(p: str) -> CXRImageError | None:
        try:
            read_image(p, max_pixels=max_pixels)  # result dropped at once: memory stays flat
        except CXRImageError as e:
            return e
        return None

    ok: list[str] = []
    skipped: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
        for p, err in zip(paths, pool.map(check, paths)):
            if err is None:
                ok.append(p)
            elif on_error == "raise":
                pool.shutdown(wait=True, cancel_futures=True)
                raise err
            else:
                skipped.append((p, err.cause))
    return ok, skipped


def write_skip_list(skipped: Iterable[tuple[str, str]], path_csv: str | os.PathLike) -> str:
    """Write ``(path, cause)`` rows to a CSV with header ``path,cause``.

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

    return atomic_write(path_csv, write, "w", newline="", encoding="utf-8")
