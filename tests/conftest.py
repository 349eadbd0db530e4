"""Shared fixtures: the real data folder (``CXR_DATA_DIR``) and tiny datasets."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = os.environ.get("CXR_DATA_DIR")
    if not d or not Path(d).is_dir():
        pytest.skip("CXR_DATA_DIR not set: real-data tests skipped")
    return Path(d)


@pytest.fixture(scope="session")
def kermany_dir(data_dir) -> Path:
    d = data_dir / "kermany224"
    if not d.is_dir():
        pytest.skip("kermany224 not present")
    return d


@pytest.fixture
def kermany_subset(kermany_dir, tmp_path):
    """Factory: ``kermany_subset(n_normal, n_bacteria, n_virus)`` -> a Kermany-layout folder."""

    def make(n_normal, n_bacteria, n_virus, seed=0, name="subset"):
        return make_kermany_subset(kermany_dir, tmp_path / name, n_normal, n_bacteria, n_virus, seed)

    return make


def make_kermany_subset(kermany_dir: Path, dest: Path, n_normal: int, n_bacteria: int, n_virus: int, seed: int = 0) -> Path:
    """A Kermany-layout folder of symlinks to a random subset of real images."""
    rng = np.random.default_rng(seed)
    train = kermany_dir / "train"
    normal = sorted((train / "NORMAL").iterdir())
    pneu = sorted((train / "PNEUMONIA").iterdir())
    bact = [p for p in pneu if "bacteria" in p.name]
    vir = [p for p in pneu if "virus" in p.name]
    picks = {
        "NORMAL": rng.choice(normal, n_normal, replace=False),
        "PNEUMONIA": list(rng.choice(bact, n_bacteria, replace=False)) + list(rng.choice(vir, n_virus, replace=False)),
    }
    for cls, files in picks.items():
        (dest / "train" / cls).mkdir(parents=True, exist_ok=True)
        for f in files:
            (dest / "train" / cls / f.name).symlink_to(f)
    return dest


@pytest.fixture
def write_dicom():
    """``write_dicom(path, pixels)``: writes a small real DICOM the tests can read."""
    import numpy as np

    def write(path, pixels: np.ndarray) -> None:
        """A minimal valid uncompressed MONOCHROME2 CR DICOM (Explicit VR LE) holding uint16 ``pixels``."""
        from pydicom.dataset import FileDataset, FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

        pixels = np.ascontiguousarray(pixels, np.uint16)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID = "CR", "EXPLAIN-TEST"
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = pixels.tobytes()
        ds.save_as(str(path), enforce_file_format=True)

    return write


@pytest.fixture(autouse=True)
def _float32_policy_after_each_test():
    """A test that sets Keras' global dtype policy (``--precision mixed_*``) leaves float32 behind."""
    yield
    import sys

    keras = sys.modules.get("keras")
    if keras is not None and keras.config.dtype_policy().name != "float32":
        keras.config.set_dtype_policy("float32")
