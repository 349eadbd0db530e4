"""Run one benchmark by name: ``python benchmarks/run.py <name> [--tiny] [...]``.

Same as ``python -m benchmarks.<name>``; works from any directory.
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    sys.path.insert(0, str(ROOT))
    from benchmarks import BENCHMARKS

    if not argv or argv[0] not in BENCHMARKS:
        print(f"usage: python benchmarks/run.py {{{','.join(BENCHMARKS)}}} [--tiny] [options]", file=sys.stderr)
        raise SystemExit(2)
    name, rest = argv[0], argv[1:]
    sys.argv = [f"benchmarks.{name}", *rest]
    runpy.run_module(f"benchmarks.{name}", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
