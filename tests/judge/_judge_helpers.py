"""Helpers for the rater-app tests: tiny BAPPS-layout test sets, a throwaway PostgreSQL
cluster and a live server. A uniquely named module so tests can import it directly."""
from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

MANIFEST_COLUMNS = ("kind", "subset", "id", "source_image", "distortion_p0", "severity_p0", "params_p0",
                    "distortion_p1", "severity_p1", "params_p1", "seed")


def make_testset(root: Path, n_2afc: int = 3, n_jnd: int = 2, size: int = 16, subset: str = "traditional") -> Path:
    """A test set as the builder writes it: 8-bit gray PNGs per role and a manifest.

    Each image's pixel value encodes (item, role), so a test can tell which file was served.
    """
    root = Path(root)
    rows = []
    for kind, n, roles in (("2afc", n_2afc, ("ref", "p0", "p1")), ("jnd", n_jnd, ("p0", "p1"))):
        for i in range(n):
            id_ = f"{i:06d}"
            for role in roles:
                d = root / kind / subset / role
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((size, size), pixel_code(kind, i, role), np.uint8), mode="L").save(d / f"{id_}.png")
            rows.append({"kind": kind, "subset": subset, "id": id_, "source_image": f"src_{i}.png",
                         "distortion_p0": "gaussian_blur", "severity_p0": 1,
                         "params_p0": json.dumps({"sigma": 1.0}), "distortion_p1": "jpeg", "severity_p1": 2,
                         "params_p1": json.dumps({"quality": 30}), "seed": 0})
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return root


def pixel_code(kind: str, i: int, role: str) -> int:
    return (0 if kind == "2afc" else 100) + 10 * i + {"ref": 0, "p0": 1, "p1": 2}[role]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """The app under waitress in a background thread on 127.0.0.1 (as ``cxr-tf judge serve``)."""

    def __init__(self, app, threads: int = 8):
        from waitress.server import create_server

        self.server = create_server(app, host="127.0.0.1", port=0, threads=threads)
        self.port = self.server.effective_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        from waitress import wasyncore

        srv = self.server

        def stop():  # runs in the server's own loop thread, so select never sees a closed socket
            srv.task_dispatcher.shutdown()
            wasyncore.close_all(srv._map)

        srv.trigger.pull_trigger(stop)
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "live server did not stop"


class PostgresCluster:
    """A throwaway PostgreSQL cluster in ``root`` (initdb + pg_ctl, trust auth on 127.0.0.1)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.initdb = shutil.which("initdb") or "/usr/lib/postgresql/15/bin/initdb"
        self.pg_ctl = shutil.which("pg_ctl") or "/usr/lib/postgresql/15/bin/pg_ctl"
        self.port = free_port()
        self.user_prefix: list[str] = []
        self._n = 0

    @staticmethod
    def unavailable_reason() -> str | None:
        for tool in ("initdb", "pg_ctl"):
            if not (shutil.which(tool) or os.path.exists(f"/usr/lib/postgresql/15/bin/{tool}")):
                return f"PostgreSQL tool {tool} not found (apt-get install postgresql)"
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return "psycopg not installed (pip install 'cxr_tf[judge]')"
        if os.geteuid() == 0:
            try:
                import pwd

                pwd.getpwnam("postgres")
            except KeyError:
                return "running as root and no 'postgres' user to run initdb as"
            if not shutil.which("runuser"):
                return "running as root and no runuser to drop privileges for initdb"
        return None

    def start(self) -> None:
        data, sock = self.root / "data", self.root / "sock"
        self.root.mkdir(parents=True, exist_ok=True)
        sock.mkdir()
        if os.geteuid() == 0:  # initdb refuses root: run the cluster as the postgres user
            import pwd

            pw = pwd.getpwnam("postgres")
            for p in (self.root, sock):
                os.chown(p, pw.pw_uid, pw.pw_gid)
            self.user_prefix = ["runuser", "-u", "postgres", "--"]
        self._run([self.initdb, "-D", str(data), "-U", "judge", "--auth=trust", "--no-sync", "-E", "UTF8"])
        opts = f"-p {self.port} -k {sock} -c listen_addresses=127.0.0.1 -F -c max_connections=100"
        self._run([self.pg_ctl, "-D", str(data), "-o", opts, "-l", str(self.root / "log"), "-w", "-t", "30", "start"])

    def _run(self, cmd) -> None:
        r = subprocess.run(self.user_prefix + cmd, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {r.stdout}\n{r.stderr}")

    def new_database(self) -> str:
        """A fresh empty database; returns its SQLAlchemy URL."""
        import psycopg

        self._n += 1
        name = f"judge_test_{self._n}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=judge dbname=postgres", autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://judge@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        subprocess.run(self.user_prefix + [self.pg_ctl, "-D", str(self.root / "data"), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)


def wait_until(cond, timeout: float = 60.0, step: float = 0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(step)
    raise TimeoutError("condition not met")
