"""Rater app for the perceptual test set: 2AFC and JND judgments by doctors.

* :mod:`.testset`  read a BAPPS-layout test set (manifest + PNGs)
* :mod:`.db`       raters, items, judgments in SQLite or PostgreSQL (SQLAlchemy 2.x)
* :mod:`.service`  per-rater order, sides, progress and the answer rules
* :mod:`.app`      the Flask web app (token login, click/key answers) served by waitress
* :mod:`.export`   BAPPS ``judge/*.npy`` and ``same/*.npy`` + raw CSV
* :mod:`.cli`      ``cxr-tf judge serve | add-rater | rotate-token | raters | export``

Needs the ``judge`` extra: ``pip install 'cxr_tf[judge]'``.
"""
from .testset import TestSet, TestSetItem

__all__ = ["TestSet", "TestSetItem"]
