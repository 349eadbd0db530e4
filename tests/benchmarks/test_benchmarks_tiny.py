"""Every benchmark runs in its tiny mode and writes what it promises (no timing is judged).

The tiny mode is the CI check that the benchmark code works: it runs each benchmark
once in-process (``--tiny --results-dir tmp``), then checks the printed table's
columns, the CSV's columns and rows, and that every figure is finite and, where it
is a rate, time, size or ratio, positive. Real ``kermany224`` / ``covid19_radiography``
files are used when ``CXR_DATA_DIR`` is set, synthetic JPEGs otherwise.
"""
from __future__ import annotations

import csv
import importlib
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import BENCHMARKS
from benchmarks._common import CSV_COLUMNS, TABLE_COLUMNS, Row, format_table, main, measure, slug

ROOT = Path(__file__).resolve().parents[2]
POSITIVE = {"images_per_s", "latency", "peak_rss", "wall_time", "size", "ratio", "seconds_per_image"}
# figures each benchmark must report (case substrings)
EXPECTED = {
    "input_pipeline": ["cxr_tf build_pipeline s2", "(a) image_dataset_from_directory", "(b) albumentations",
                       "decode+resize only", "training consumes", "cxr_tf / (b)", "cxr_tf / (a)"],
    "train_step": ["frozen trunk", "full fine-tuning", "frozen / full"],
    "cached_features": ["live: epoch", "one-time feature extraction", "true run", "live / cached"],
    "serving": ["keras model(x), batch 1", "SavedModel predict_images (float), batch 1",
                "SavedModel serving_default (bytes), batch 1", "variables/ / raw weights"],
    "memory": ["no training", "training, batch 4", "growth per image"],
    "score_cam": ["scorecam full", "scorecam max_N=8", "gradcam", "gradcam++", "vs scorecam full"],
    "export_formats": ["savedmodel none, batch 1", "onnx none, batch 1", "onnx int8 file", "tflite int8, batch 1",
                       "tflite float16 / savedmodel: size", "held-out"],
    "mg_transforms": ["Models Genesis corruption", "restorer training", "corruption / restorer training"],
}


def test_row_targets_and_table():
    assert Row("a", "ratio", 1.3, "x", target=">=1.2").meets == "yes"
    assert Row("a", "ratio", 1.3, "x", target="<=1.2").meets == "no"
    assert Row("a", "images_per_s", 5.0, "img/s").meets == ""
    with pytest.raises(ValueError):
        Row("a", "ratio", 1.0, "x", target="about 2").meets
    table = format_table([Row("case one", "images_per_s", 1234.5, "img/s"), Row("r", "ratio", 0.5, "x", ">=1")])
    lines = table.splitlines()
    assert lines[0].split() == list(TABLE_COLUMNS) and "1,234" in lines[2] and lines[3].split()[-1] == "no"
    assert slug("AMD EPYC 7B13 (R)") == "amd-epyc-7b13"


def test_measure_takes_the_median_after_warmup():
    calls = []
    t = measure(lambda: calls.append(1), repeats=5, warmup=2)
    assert len(calls) == 7 and t.repeats == 5 and min(t.times) <= t.median <= max(t.times)


def test_run_py_rejects_unknown_names():
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "nope"], capture_output=True, text=True)
    assert p.returncode == 2 and "usage" in p.stderr and "input_pipeline" in p.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_tiny_mode(name, tmp_path, capsys):
    mod = importlib.import_module(f"benchmarks.{name}")
    rows = main(mod.NAME, mod.run, mod.__doc__, argv=["--tiny", "--results-dir", str(tmp_path)],
                configure=getattr(mod, "_options", None))
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("case "))
    assert header.split() == list(TABLE_COLUMNS)

    files = list(tmp_path.glob(f"{name}-*-tf*.csv"))
    assert len(files) == 1
    with open(files[0], newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        written = list(reader)
    assert len(written) == len(rows) > 1
    for r in written:
        assert r["mode"] == "tiny" and r["benchmark"] == name and int(r["cores_used"]) >= 1
        v = float(r["value"])
        assert math.isfinite(v), r
        if r["metric"] in POSITIVE:
            assert v > 0, r
        assert r["meets"] in ("", "yes", "no") and (r["meets"] == "") == (r["target"] == "")
    cases = " | ".join(r["case"] for r in written)
    for want in EXPECTED[name]:
        assert want in cases, (want, cases)


def test_report_prints_the_latest_full_run_and_skips_other_csvs(tmp_path, capsys):
    from benchmarks import report
    from benchmarks._common import append_csv

    append_csv("demo", [Row("old", "ratio", 1.0, "x", target=">=2")], mode="full", results_dir=tmp_path)
    append_csv("demo", [Row("tiny only", "ratio", 9.0, "x")], mode="tiny", results_dir=tmp_path)
    (tmp_path / "handmade.csv").write_text("timestamp,cpu,ratio\n2026-01-01,x,3\n")
    path = next(tmp_path.glob("demo-*.csv"))
    rows = list(csv.DictReader(open(path, newline="")))
    # a second full run, later: only its rows are reported
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writerow({**rows[0], "timestamp_utc": "2099-01-01T00:00:00+00:00", "case": "new", "value": "2.5",
                    "meets": "yes"})
    report.main([str(tmp_path)])
    out = capsys.readouterr().out
    assert "| new (ratio) | 2.50 x | >=2 | yes |" in out
    assert "old" not in out and "tiny only" not in out and "handmade" not in out
