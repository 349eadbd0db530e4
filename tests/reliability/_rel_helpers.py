"""Helpers of the reliability tests: run the real entry point in a subprocess, kill it,
read what a run wrote. A uniquely named module (not conftest) so tests import it
without clashing with other test folders."""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: A tiny, fast run of the main job: tiny CNN, 32 px, 64 synthetic images (8 steps of 8).
TINY = ["--smoke", "--backbone", "tiny_cnn", "--freeze-until", "0", "--image-size", "32",
        "--synthetic-n", "64", "--lr", "3e-3", "--seed", "3"]

#: metrics.json fields that are measurements of time or place, not results.
VOLATILE = {"fit_seconds", "wall_seconds", "export"}


def env(**extra) -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(REPO), *([e["PYTHONPATH"]] if e.get("PYTHONPATH") else [])])
    e.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    e["CUDA_VISIBLE_DEVICES"] = ""
    e["PYTHONUNBUFFERED"] = "1"
    e.update({k: str(v) for k, v in extra.items()})
    return e


def experiment_cmd(*args, module: str = "pneumonia_freeze") -> list[str]:
    """``python -m cxr_tf.experiments.<module> ARGS`` (the main job unless ``module`` is given)."""
    return [sys.executable, "-m", f"cxr_tf.experiments.{module}", *map(str, args)]


def run_experiment(args, cwd, timeout: float = 150, check: bool = True, module: str = "pneumonia_freeze",
                   **env_extra) -> subprocess.CompletedProcess:
    """Run an experiment (the main job by default) to completion in a subprocess (output captured)."""
    p = subprocess.run(experiment_cmd(*args, module=module), cwd=cwd, env=env(**env_extra), capture_output=True, text=True,
                       timeout=timeout)
    if check:
        assert p.returncode == 0, f"rc={p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def start_experiment(args, cwd, log: Path, module: str = "pneumonia_freeze", **env_extra) -> subprocess.Popen:
    return subprocess.Popen(experiment_cmd(*args, module=module), cwd=cwd, env=env(**env_extra), stdout=open(log, "w"),
                            stderr=subprocess.STDOUT)


def kill_when(procs, ready, timeout: float = 120, poll: float = 0.05) -> float:
    """SIGKILL every process of ``procs`` (by pid) as soon as ``ready()`` is true.

    Returns the seconds waited. Fails if a process ends by itself first.
    """
    procs = procs if isinstance(procs, (list, tuple)) else [procs]
    t0 = time.time()
    while not ready():
        for p in procs:
            assert p.poll() is None, f"process {p.pid} ended (rc={p.returncode}) before the kill point"
        assert time.time() - t0 < timeout, "kill point not reached in time"
        time.sleep(poll)
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
    for p in procs:
        p.wait(timeout=30)
    return time.time() - t0


def history_rows(run: Path) -> list[dict]:
    path = Path(run) / "history.csv"
    if not path.is_file():
        return []
    try:
        with open(path, newline="") as f:
            return [r for r in csv.DictReader(f) if r.get("epoch") not in (None, "")]
    except OSError:
        return []


def history_matrix(run: Path) -> tuple[list[int], dict[str, list[float]]]:
    rows = history_rows(run)
    epochs = [int(r["epoch"]) for r in rows]
    keys = [k for k in rows[0] if k != "epoch"] if rows else []
    return epochs, {k: [float(r[k]) for r in rows] for k in keys}


def metric_values(run: Path) -> dict:
    m = json.loads((Path(run) / "metrics.json").read_text())
    return {k: v for k, v in m.items() if k not in VOLATILE}


def h5_arrays(path: Path) -> dict:
    import h5py
    import numpy as np

    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, np.asarray(obj)) if isinstance(obj, h5py.Dataset) else None)
    return out


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def dicom_bytes(pixels, **elements) -> bytes:
    """A small valid uncompressed (Explicit VR LE) MONOCHROME2 DICOM of ``pixels`` (uint8/uint16 2-D);
    keyword arguments become header elements (``PatientName="Doe^Jane"``)."""
    import io

    import numpy as np
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    pixels = np.asarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = elements.pop("SOPInstanceUID", None) or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("mem.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def run_two_workers(module: str, args, cwd: Path, run: Path, timeout: float = 300) -> list[str]:
    """``module`` on two worker processes on 127.0.0.1 (``--strategy multi_worker``, TF_CONFIG,
    the same ``--run-dir``), to the end; asserts both exit 0 and returns their logs."""
    ports = free_ports(2)
    procs, logs = [], []
    for i in range(2):
        logs.append(Path(cwd) / f"worker{i}.log")
        procs.append(subprocess.Popen(experiment_cmd(*args, "--strategy", "multi_worker", "--run-dir", run,
                                                     module=module),
                                      cwd=cwd, stdout=open(logs[-1], "w"), stderr=subprocess.STDOUT,
                                      env=env(TF_CONFIG=tf_config(ports, i))))
    rcs = [p.wait(timeout=timeout) for p in procs]
    texts = [log.read_text() for log in logs]
    assert rcs == [0, 0], "\n\n".join(t[-3000:] for t in texts)
    return texts
