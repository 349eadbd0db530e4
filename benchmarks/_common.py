"""Shared benchmark machinery: timing, hardware and version strings, CSV and table output.

A benchmark module defines ``run(args) -> list[Row]`` and calls :func:`main` with it.
A :class:`Row` is one measured figure (or one ratio of two figures measured in the
same run, with its target).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as _dt
import math
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: CSV columns, in order. ``params`` is ``key=value;...`` (image size, batch, ...).
CSV_COLUMNS = (
    "timestamp_utc", "benchmark", "mode", "case", "metric", "value", "unit", "target", "meets",
    "repeats", "params", "cpu_model", "cores_used", "tf_version", "keras_version", "python", "git_commit",
)
#: Columns of the printed table.
TABLE_COLUMNS = ("case", "metric", "value", "unit", "target", "meets")


@dataclasses.dataclass
class Row:
    """One figure.

    Args:
        case: what was measured (``cxr_tf build_pipeline s2``).
        metric: the quantity (``images_per_s``, ``ratio``, ``peak_rss``).
        value: the number (a median when timed).
        unit: its unit (``img/s``, ``s``, ``MiB``, ``x``).
        target: for ratios, the target it is judged against (``>=1.2``), else empty.
        repeats: timed repetitions behind a median (0 for one-off figures).
        params: the settings (image size, batch, ...).
    """

    case: str
    metric: str
    value: float
    unit: str
    target: str = ""
    repeats: int = 0
    params: dict = dataclasses.field(default_factory=dict)

    @property
    def meets(self) -> str:
        """``yes`` / ``no`` against ``target`` (``>=x`` or ``<=x``), empty without one."""
        if not self.target:
            return ""
        m = re.fullmatch(r"(>=|<=)\s*([0-9.eE+-]+)", self.target.strip())
        if not m:
            raise ValueError(f"target must look like '>=1.2' or '<=1.1'; got {self.target!r}")
        bound = float(m.group(2))
        ok = self.value >= bound if m.group(1) == ">=" else self.value <= bound
        return "yes" if ok else "no"


# --------------------------------------------------------------------------- timing
@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of repeated calls: ``median`` and every run in ``times``."""

    median: float
    times: tuple[float, ...]

    @property
    def repeats(self) -> int:
        return len(self.times)


def measure(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> Timing:
    """Call ``fn`` ``warmup`` times untimed (tracing, caches), then ``repeats`` times timed.

    Returns:
        The median and the individual wall times, in seconds.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1; got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Timing(statistics.median(times), tuple(times))


# --------------------------------------------------------------------------- machine
def cpu_model() -> str:
    """The CPU model string from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def device_model() -> str:
    """The first GPU's name when TensorFlow sees one, else the CPU model."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        name = tf.config.experimental.get_device_details(gpus[0]).get("device_name")
        if name:
            return name
    return cpu_model()


def slug(text: str) -> str:
    """``AMD EPYC 7B13`` -> ``amd-epyc-7b13`` (file-name safe)."""
    s = re.sub(r"\((r|tm|c)\)", "", text.lower())
    s = re.sub(r"[^a-z0-9.]+", "-", s).strip("-.")
    return s or "unknown"


def cores_used() -> int:
    """CPUs this process may run on (``taskset -c 0`` gives 1)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {"tf_version": tf.__version__, "keras_version": keras.__version__,
            "python": platform.python_version()}


def git_commit() -> str:
    """Short hash of the checkout the benchmark ran from (``+dirty`` with local edits)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        h = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                           timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (h or "unknown") + ("+dirty" if dirty else "")


def results_path(name: str, results_dir: str | os.PathLike | None = None) -> Path:
    """``<results_dir>/<name>-<device model slug>-tf<version>.csv``."""
    import tensorflow as tf

    d = Path(results_dir) if results_dir else RESULTS_DIR
    return d / f"{name}-{slug(device_model())}-tf{tf.__version__}.csv"


# --------------------------------------------------------------------------- output
def _fmt(v) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v == 0:
            return "0"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.4g}"
    return str(v)


def format_table(rows: Sequence[Row], columns: Sequence[str] = TABLE_COLUMNS) -> str:
    """A fixed-width text table of ``rows``."""
    cells = [[_fmt(getattr(r, c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    out = [line(columns), line(["-" * w for w in widths])]
    out += [line(row) for row in cells]
    return "\n".join(out)


def append_csv(name: str, rows: Sequence[Row], mode: str, results_dir: str | os.PathLike | None = None) -> Path:
    """Append ``rows`` to the benchmark's results CSV (header written once). Returns its path."""
    path = results_path(name, results_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    common = {
        "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "benchmark": name, "mode": mode, "cpu_model": cpu_model(), "cores_used": cores_used(),
        "git_commit": git_commit(), **versions(),
    }
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({**common, "case": r.case, "metric": r.metric, "value": repr(float(r.value)),
                        "unit": r.unit, "target": r.target, "meets": r.meets, "repeats": r.repeats,
                        "params": ";".join(f"{k}={v}" for k, v in r.params.items())})
    return path


# --------------------------------------------------------------------------- entry point
def parser(name: str, doc: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=(doc or "").split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="seconds-long run proving the code works (CI); not a measurement")
    p.add_argument("--results-dir", default=None, help=f"where the CSV goes (default {RESULTS_DIR})")
    return p


def main(name: str, run: Callable[[argparse.Namespace], list[Row]], doc: str | None = None,
         argv: Sequence[str] | None = None, configure: Callable[[argparse.ArgumentParser], None] | None = None) -> list[Row]:
    """Parse ``--tiny``/``--results-dir``, run, print the table, append the CSV."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    p = parser(name, doc)
    if configure:
        configure(p)
    args = p.parse_args(argv)
    mode = "tiny" if args.tiny else "full"
    t0 = time.perf_counter()
    rows = run(args)
    wall = time.perf_counter() - t0
    rows.append(Row("benchmark run", "wall_time", wall, "s", params={"mode": mode}))
    path = append_csv(name, rows, mode, args.results_dir)
    print(f"\n{name} ({mode}) on {device_model()}, {cores_used()} core(s), TF {versions()['tf_version']}")
    print(format_table(rows))
    print(f"\nappended {len(rows)} rows to {path}")
    sys.stdout.flush()
    return rows


# --------------------------------------------------------------------------- data and models
def kermany_folder(dest: str | os.PathLike, n: int, seed: int = 0) -> tuple[Path, str]:
    """A Kermany-layout folder (``train/NORMAL``, ``train/PNEUMONIA``) of ``n`` images.

    Symlinks to real ``$CXR_DATA_DIR/kermany224`` JPEGs when present (a random,
    class-proportional pick); otherwise ``n`` synthetic 224 px radiographs written as
    JPEG (so CI without the data still exercises the code).

    Returns:
        ``(folder, description of the data)``.
    """
    import numpy as np

    dest = Path(dest)
    src = Path(os.environ.get("CXR_DATA_DIR", "")) / "kermany224" / "train"
    rng = np.random.default_rng(seed)
    if os.environ.get("CXR_DATA_DIR") and src.is_dir():
        files = sorted((src / "NORMAL").iterdir()) + sorted((src / "PNEUMONIA").iterdir())
        pick = rng.choice(len(files), size=min(n, len(files)), replace=False)
        for i in sorted(pick):
            f = files[i]
            (dest / "train" / f.parent.name).mkdir(parents=True, exist_ok=True)
            (dest / "train" / f.parent.name / f.name).symlink_to(f)
        return dest, f"kermany224 ({len(pick)} real JPEGs, 224 px)"
    import tensorflow as tf

    from cxr_tf.datasets.synthetic import make_synthetic_cxr

    ds = make_synthetic_cxr(n=n, image_size=224, seed=seed)
    for i, (img, cls) in enumerate(zip(np.asarray(ds.items), ds.class_index())):
        kind = ds.class_names[cls]
        folder = "NORMAL" if kind == "normal" else "PNEUMONIA"
        word = "bacteria" if kind.startswith("bact") else "virus"
        name = f"IM-{i:04d}-0001.jpeg" if kind == "normal" else f"person{i}_{word}_{i}.jpeg"
        (dest / "train" / folder).mkdir(parents=True, exist_ok=True)
        u8 = np.clip(np.asarray(img, np.float32).reshape(224, 224, 1) * 255, 0, 255).astype(np.uint8)
        tf.io.write_file(str(dest / "train" / folder / name), tf.io.encode_jpeg(u8, quality=95))
    return dest, f"synthetic ({n} JPEGs, 224 px; CXR_DATA_DIR not set)"


def build_classifier(backbone: str, image_size: int, freeze_until: int, num_classes: int = 3, head: str = "fc256-128"):
    """A compiled :class:`~cxr_tf.models.CXRClassifier` as experiments compile it (Adam 1e-4)."""
    from cxr_tf.models import CXRClassifier
    from cxr_tf.training.config import OptimizerConfig
    from cxr_tf.training.loop import compile_classifier

    model = CXRClassifier(backbone=backbone, num_classes=num_classes, image_size=image_size,
                          freeze_until=freeze_until, head=head)
    compile_classifier(model, OptimizerConfig(), steps_per_epoch=10, epochs=1)
    return model


def random_batch(batch: int, image_size: int, num_classes: int = 3, seed: int = 0):
    """A fixed ``(images in [0, 1], one-hot labels)`` batch."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.random((batch, image_size, image_size, 1), dtype=np.float32)
    y = np.eye(num_classes, dtype=np.float32)[rng.integers(0, num_classes, batch)]
    return x, y


def train_images_per_s(model, batch: int, image_size: int, steps: int, repeats: int) -> tuple[float, Timing]:
    """Training throughput of ``model.train_on_batch`` on a fixed in-memory batch.

    The first call (tracing) is the untimed warm-up; each timed repetition runs
    ``steps`` optimizer steps. Returns ``(images per second, timing)``.
    """
    import tensorflow as tf

    x, y = random_batch(batch, image_size, model.output_shape[-1])
    x, y = tf.constant(x), tf.constant(y)

    def steps_fn():
        for _ in range(steps):
            model.train_on_batch(x, y)

    t = measure(steps_fn, repeats=repeats, warmup=1)
    return batch * steps / t.median, t
