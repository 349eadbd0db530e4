"""Peak memory (RSS) of a training run, and how it grows with the batch size.

Each measurement is a fresh Python process (so peaks do not carry over) that imports
TensorFlow, builds ``CXRClassifier`` (ResNet50, 224 px, full fine-tuning
``freeze_until=0`` unless told otherwise), compiles it as experiments do and trains
``--steps`` steps with ``model.fit`` on :func:`cxr_tf.data.build_pipeline` over real
``kermany224`` JPEGs (S2 augmentation, no cache). The parent reads the child's own
peak RSS from ``os.wait4`` (``ru_maxrss``), one child at a time. A child that builds
and compiles but does not train (``batch 0``) gives the fixed cost of TF + the model.

Run: ``python -m benchmarks.memory [--tiny]``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks._common import Row, kermany_folder, main

NAME = "memory"
ROOT = Path(__file__).resolve().parent.parent


def child(folder: str, backbone: str, size: int, batch: int, steps: int, freeze: int) -> None:
    """The measured process: build, compile, train ``steps`` steps (none when ``batch == 0``)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from benchmarks._common import build_classifier
    from cxr_tf.data import build_pipeline
    from cxr_tf.datasets import load_kermany

    ds = load_kermany(folder, classes="3class")
    model = build_classifier(backbone, size, freeze_until=freeze)
    if batch > 0:
        pipe = build_pipeline(ds, size, batch, training=True, policy="s2", cache=False)
        hist = model.fit(pipe.dataset, steps_per_epoch=steps, epochs=1, verbose=0)
        loss = float(hist.history["loss"][-1])
    else:
        loss = float("nan")
    print("RESULT " + json.dumps({"loss": loss}), flush=True)


def measure_child(folder, backbone, size, batch, steps, freeze) -> tuple[float, float]:
    """Run one child; returns ``(peak RSS in MiB, wall seconds)``."""
    import time

    cmd = [sys.executable, "-c",
           "import sys; from benchmarks.memory import child; "
           f"child({str(folder)!r}, {backbone!r}, {size}, {batch}, {steps}, {freeze})"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    with tempfile.TemporaryFile(mode="w+") as errf:
        # stderr goes to a file (a full pipe would block the child); stdout is read to the
        # end, then wait4 gives this child's own rusage (RUSAGE_CHILDREN would be the
        # maximum over every child so far).
        proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=subprocess.PIPE, stderr=errf, text=True)
        out = proc.stdout.read()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        errf.seek(0)
        err = errf.read()
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or "RESULT " not in out:
        raise RuntimeError(f"memory child (batch {batch}) failed ({proc.returncode}):\n{err[-3000:]}")
    return usage.ru_maxrss / 1024.0, wall  # Linux: KiB


def run(args) -> list[Row]:
    import numpy as np

    if args.tiny:
        backbone, size, batches, steps, freeze = "tiny_cnn", 32, (4, 8), 1, 0
    else:
        backbone, size, batches, steps, freeze = "resnet50", 224, tuple(args.batches), args.steps, args.freeze_until
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder, data = kermany_folder(tmp, max(2 * max(batches), 16))
        base = {"backbone": backbone, "image_size": size, "freeze_until": freeze, "steps": steps, "data": data}
        fixed, wall = measure_child(folder, backbone, size, 0, 0, freeze)
        rows.append(Row("TF + model built and compiled, no training", "peak_rss", fixed, "MiB", params=base))
        print(f"  no training: {fixed:,.0f} MiB ({wall:.0f} s)", flush=True)
        peaks = {}
        for b in batches:
            peak, wall = measure_child(folder, backbone, size, b, steps, freeze)
            peaks[b] = peak
            rows.append(Row(f"training, batch {b}", "peak_rss", peak, "MiB", params={**base, "batch": b}))
            rows.append(Row(f"training, batch {b}: over the no-training process", "rss_growth", peak - fixed, "MiB",
                            params={**base, "batch": b}))
            print(f"  batch {b}: {peak:,.0f} MiB ({wall:.0f} s)", flush=True)
    bs = np.array(sorted(peaks), float)
    slope = float(np.polyfit(bs, [peaks[b] for b in sorted(peaks)], 1)[0]) if len(bs) > 1 else float("nan")
    rows.append(Row("growth per image in the batch (least-squares slope)", "rss_per_image", slope, "MiB",
                    params={**base, "batches": "/".join(str(b) for b in batches)}))
    return rows


def _options(p):
    p.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--steps", type=int, default=1, help="training steps per child (one full step: forward, gradients, optimizer slots)")
    p.add_argument("--freeze-until", type=int, default=0, help="0: full fine-tuning (the largest footprint)")


if __name__ == "__main__":
    main(NAME, run, __doc__, configure=_options)
