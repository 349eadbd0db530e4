"""Fixtures for cxr_tf.io tests: the real-data folder and tiny synthetic files."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Make the sibling helper module importable under any pytest --import-mode.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``$CXR_DATA_DIR``; tests needing real data skip when it is unset or missing."""
    root = os.environ.get("CXR_DATA_DIR")
    if not root or not os.path.isdir(root):
        pytest.skip("CXR_DATA_DIR is not set or missing: real-data test skipped")
    return Path(root)


@pytest.fixture(scope="session")
def dicom_dir(data_dir: Path) -> Path:
    d = data_dir / "dicom"
    if not d.is_dir():
        pytest.skip(f"{d} missing")
    return d


@pytest.fixture
def write(tmp_path: Path):
    """``write(name, data) -> str``: put bytes in a file under tmp_path."""

    def _write(name: str, data: bytes) -> str:
        p = tmp_path / name
        p.write_bytes(data)
        return str(p)

    return _write
