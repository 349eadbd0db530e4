"""Reliability tests: crash-resume, determinism, multi-worker, hostile inputs, patient data,
serving robustness. Subprocess runs use the tiny CNN at 32 px on the synthetic CXRs."""
from __future__ import annotations

import os
import sys

# Make the sibling helper module importable under any pytest --import-mode.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
