"""Benchmarks for cxr_tf: speed and memory measured side by side on this machine.

Each module is runnable as ``python -m benchmarks.<name> [--tiny]`` (or
``python benchmarks/run.py <name>``); it prints a table and appends its rows to
``benchmarks/results/<name>-<cpu model>-tf<version>.csv``. Every timing is the median
of repeated runs after warm-up, and every ratio compares two figures measured in the
same process. ``--tiny`` shrinks a benchmark to seconds: CI runs it to prove the code
works, never to judge speed.
"""

#: Benchmarks runnable by name (``benchmarks/run.py <name>``).
BENCHMARKS = ("input_pipeline", "train_step", "cached_features", "serving", "memory", "score_cam", "mg_transforms",
              "export_formats")
