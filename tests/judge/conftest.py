"""Fixtures for the rater-app tests: test sets, databases (SQLite, PostgreSQL), live server."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

pytest.importorskip("sqlalchemy", reason="rater app needs the judge extra: pip install 'cxr_tf[judge]'")
pytest.importorskip("flask", reason="rater app needs the judge extra: pip install 'cxr_tf[judge]'")

from _judge_helpers import PostgresCluster, make_testset  # noqa: E402


@pytest.fixture
def testset(tmp_path):
    return make_testset(tmp_path / "testset", n_2afc=3, n_jnd=2)


@pytest.fixture(scope="session")
def postgres():
    reason = PostgresCluster.unavailable_reason()
    if reason:
        pytest.skip(f"PostgreSQL tests skipped: {reason}")
    # not under pytest's tmp dir: that one is private to the test user, and as root the
    # cluster runs as the postgres user, which must reach its data folder
    root = tempfile.mkdtemp(prefix="cxr_judge_pg_")
    os.chmod(root, 0o755)
    cluster = PostgresCluster(os.path.join(root, "cluster"))
    try:
        try:
            cluster.start()
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:  # environment, not our code
            pytest.skip(f"PostgreSQL tests skipped: could not start a throwaway cluster: {e}")
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def db_url(request, tmp_path):
    """The same tests on a SQLite file and on a throwaway PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'judgments.sqlite'}"
    return request.getfixturevalue("postgres").new_database()
