"""Print the latest full run of each benchmark CSV as a markdown table.

``python benchmarks/report.py [results_dir]``: used to write benchmarks/README.md.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


COLUMNS = {"timestamp_utc", "benchmark", "mode", "case", "metric", "value", "unit", "target", "meets"}


def latest_full(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not COLUMNS <= set(reader.fieldnames or ()):
            return []  # not a benchmarks CSV (e.g. a hand-made file): nothing to report
        rows = [r for r in reader if r["mode"] == "full"]
    if not rows:
        return []
    last = max(r["timestamp_utc"] for r in rows)
    # a run's rows share one timestamp
    return [r for r in rows if r["timestamp_utc"] == last]


def fmt(v: float) -> str:
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def main(argv=None) -> None:
    d = Path((argv or sys.argv[1:] or [RESULTS])[0])
    for path in sorted(d.glob("*.csv")):
        rows = latest_full(path)
        if not rows:
            continue
        r0 = rows[0]
        print(f"\n### {r0['benchmark']} ({path.name}; {r0['timestamp_utc']}, {r0['cores_used']} core, "
              f"commit {r0['git_commit']})\n")
        print("| figure | value | target | meets |\n|---|---|---|---|")
        for r in rows:
            print(f"| {r['case']} ({r['metric']}) | {fmt(float(r['value']))} {r['unit']} | {r['target']} | {r['meets']} |")


if __name__ == "__main__":
    main()
