"""Patient data: nothing identifying a patient leaves the input files.

The rule
--------
* cxr_tf never copies DICOM header values into anything it writes (run folder,
  TensorBoard, reports, split files, caches, exported models, logs). Pixels are
  decoded to arrays (:func:`cxr_tf.io.read_dicom`), the decode cache holds bare 16-bit
  PNGs without text chunks (:func:`cxr_tf.io.to_png_cache`), and the only header
  fields ever read out are the non-identifying :data:`cxr_tf.io.SAFE_DICOM_TAGS`.
* The one exception is grouping: splits must be by patient, and for DICOM files the
  patient is the ``PatientID`` tag. Such an id enters the dataset contract
  (``meta['patient_id']``, hence ``splits.csv``) ONLY as a salted hash:
  ``"dcm-" + HMAC-SHA256(salt, PatientID)[:20 hex]`` (:func:`pseudonymize`). The raw
  value is never stored, printed or returned.
* The salt is a per-site secret: ``$CXR_TF_PATIENT_SALT`` if set, else a random
  256-bit value created once in ``$XDG_CONFIG_HOME/cxr_tf/patient_salt`` (default
  ``~/.config``; mode 0600). It is never written into a run. Without it a pseudonym
  cannot be linked back to a PatientID (ids are short and guessable, so an unsalted
  hash would be reversible by trying them all). Set the same ``CXR_TF_PATIENT_SALT``
  on every host of a multi-worker job, and wherever a saved ``splits.csv`` is reused.
* Ids that come from the user (a CSV manifest's patient column, a Kermany or
  ``--patient-regex`` file name) are the user's own pseudonyms and are kept as given:
  file and column contents are the user's choice.

:func:`find_identifiers` scans files (UTF-8, UTF-16 and raw bytes) for given values;
the reliability tests run a whole experiment on DICOMs carrying planted identifiers
and assert it finds nothing.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Iterable, Sequence

SALT_ENV = "CXR_TF_PATIENT_SALT"
PSEUDONYM_PREFIX = "dcm-"

#: DICOM keywords that identify a patient, a study or the people and places involved.
#: None of them is ever read out except ``PatientID`` (only into :func:`pseudonymize`).
IDENTIFYING_DICOM_TAGS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "OtherPatientIDs",
    "OtherPatientNames", "PatientAddress", "PatientTelephoneNumbers", "PatientMotherBirthName",
    "MedicalRecordLocator", "AccessionNumber", "InstitutionName", "InstitutionAddress",
    "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "StudyID",
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "StudyDate", "StudyTime",
    "AcquisitionDateTime", "DeviceSerialNumber", "StationName",
)


def _salt_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "cxr_tf" / "patient_salt"


def patient_salt() -> bytes:
    """The site's secret salt (see the module docstring); created on first use."""
    env = os.environ.get(SALT_ENV)
    if env:
        return env.encode("utf-8")
    path = _salt_file()
    try:
        value = path.read_text().strip()
        if value:
            return value.encode("utf-8")
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32)
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, value.encode())
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return path.read_text().strip().encode("utf-8")  # whoever created it first wins


def pseudonymize(raw_id: str, salt: bytes | None = None) -> str:
    """``"dcm-" + HMAC-SHA256(salt, raw_id)`` truncated to 20 hex digits (80 bits)."""
    salt = patient_salt() if salt is None else salt
    digest = hmac.new(salt, str(raw_id).strip().encode("utf-8"), hashlib.sha256).hexdigest()
    return PSEUDONYM_PREFIX + digest[:20]


def dicom_patient_pseudonym(path: str | os.PathLike, salt: bytes | None = None) -> str | None:
    """The pseudonym of a DICOM file's ``PatientID`` (``None`` when absent or empty).

    Only the ``PatientID`` element is parsed; its raw value never leaves this function.

    Raises:
        CXRDicomError: the file cannot be parsed as DICOM.
    """
    from cxr_tf.errors import CXRDicomError

    try:
        import pydicom
    except ImportError:
        raise CXRDicomError(path, "reading DICOM needs pydicom>=3: pip install 'pydicom>=3'") from None
    try:
        ds = pydicom.dcmread(os.fspath(path), stop_before_pixels=True, specific_tags=["PatientID"], force=True)
        raw = ds.get("PatientID")
    except Exception as e:  # noqa: BLE001 - pydicom raises many types on bad input
        # the message of a parse error never includes element values
        raise CXRDicomError(path, f"cannot read the DICOM header ({type(e).__name__})") from None
    raw = "" if raw is None else str(raw).strip()
    return pseudonymize(raw, salt) if raw else None


def pseudonymize_dicom_patients(ds, salt: bytes | None = None):
    """Patient ids of the DICOM items of ``ds`` from their ``PatientID`` tag, pseudonymized.

    For datasets whose patient ids are not given by the user (a folder per class):
    each DICOM file with a ``PatientID`` gets ``pseudonymize(PatientID)`` so that a
    patient's images share one id and never straddle splits. Other items (PNG/JPEG,
    DICOMs without the tag, unreadable files: validation reports those) keep theirs.

    Returns:
        ``(dataset, n)``: the dataset (a copy when changed) and how many ids were set.
    """
    if ds.in_memory or not len(ds):
        return ds, 0
    from cxr_tf.datasets.contract import CXRDataset
    from cxr_tf.errors import CXRImageError
    from cxr_tf.io import sniff_format

    pids = ds.meta["patient_id"].astype(str).tolist()
    n = 0
    for i, p in enumerate(ds.items):
        try:
            if sniff_format(str(p)) != "dicom":
                continue
            if salt is None:
                salt = patient_salt()  # only read (or created) when there is a DICOM
            pseudo = dicom_patient_pseudonym(p, salt)
        except CXRImageError:
            continue  # unreadable: prepare_items names it (or skips it) later
        if pseudo:
            pids[i], n = pseudo, n + 1
    if not n:
        return ds, 0
    meta = ds.meta.copy()
    meta["patient_id"] = pids
    return CXRDataset(ds.items, ds.labels, ds.class_names, meta, ds.name, ds.multilabel), n


def _encodings(value: str) -> list[tuple[str, bytes]]:
    out = [("utf-8", value.encode("utf-8"))]
    for enc in ("utf-16-le", "utf-16-be"):
        out.append((enc, value.encode(enc)))
    return out


def find_identifiers(roots: Iterable[str | os.PathLike], values: Sequence[str],
                     chunk: int = 1 << 20) -> list[tuple[str, str, str]]:
    """Every file under ``roots`` that contains one of ``values`` (as UTF-8, UTF-16-LE/BE bytes).

    Returns:
        ``(file, value, encoding)`` for each hit; empty when clean.
    """
    needles = [(v, enc, b) for v in values if v for enc, b in _encodings(v)]
    longest = max((len(b) for _, _, b in needles), default=1)
    hits = []
    for root in roots:
        root = Path(root)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            found = set()
            with open(f, "rb") as fh:
                tail = b""
                while True:
                    block = fh.read(chunk)
                    if not block:
                        break
                    data = tail + block
                    for v, enc, b in needles:
                        if (v, enc) not in found and b in data:
                            found.add((v, enc))
                    tail = data[-(longest - 1):] if longest > 1 else b""
            hits += [(str(f), v, enc) for v, enc in sorted(found)]
    return hits
