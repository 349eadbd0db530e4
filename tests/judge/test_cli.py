"""``cxr-tf judge`` commands: add-rater prints a token that logs in, raters, export, errors."""
from __future__ import annotations

import numpy as np
import pytest

from cxr_tf.cli import main
from cxr_tf.judge.db import JudgmentStore
from cxr_tf.judge.service import RatingService


def test_cli_add_rater_rotate_raters_and_export(testset, tmp_path, capsys):
    db = str(tmp_path / "j.sqlite")
    assert main(["judge", "add-rater", "dr_a", "--db", db, "--seed", "3"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    store = JudgmentStore(db)
    rater = store.rater_for_token(token)
    assert rater.name == "dr_a" and rater.order_seed == 3
    assert main(["judge", "add-rater", "dr_a", "--db", db]) == 2          # duplicate: one-line error
    assert "already exists" in capsys.readouterr().err

    svc = RatingService(str(testset), store)
    for item_id in svc.order(rater):
        svc.answer(rater, item_id, "right" if svc.item_by_id[item_id].kind == "2afc" else "different")
    assert main(["judge", "raters", "--testset", str(testset), "--db", db]) == 0
    assert "dr_a" in (out := capsys.readouterr().out) and "5 / 5" in out

    assert main(["judge", "export", "--testset", str(testset), "--db", db]) == 0
    assert "5 judgments -> 5 judgment files" in capsys.readouterr().out
    for i in range(3):
        shown = svc.shown(rater, next(k for k, it in svc.item_by_id.items() if it.kind == "2afc" and it.id == f"{i:06d}"))
        want = 1.0 if shown.answer_for("right") == "p1" else 0.0
        assert np.load(testset / f"2afc/traditional/judge/{i:06d}.npy")[0] == want
    assert np.load(testset / "jnd/traditional/same/000000.npy")[0] == 0.0
    assert (testset / "judgments.csv").read_text().count("dr_a") == 5

    assert main(["judge", "rotate-token", "dr_a", "--db", db]) == 0
    new = capsys.readouterr().out.strip().splitlines()[-1]
    assert store.rater_for_token(token) is None and store.rater_for_token(new).name == "dr_a"
    assert main(["judge", "deactivate", "dr_a", "--db", db]) == 0
    assert store.rater_for_token(new) is None
    store.close()


def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CXR_JUDGE_DB", raising=False)
    assert main(["judge", "add-rater", "x"]) == 2
    assert "no database" in capsys.readouterr().err
    assert main(["judge", "export", "--testset", str(tmp_path / "nope"), "--db", str(tmp_path / "j.sqlite")]) == 2
    assert "test set folder does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_serve_answers_on_127_0_0_1(testset, tmp_path):
    """``cxr-tf judge serve`` as its own process: a valid token is served, a forged one refused."""
    import json
    import os
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    from _judge_helpers import free_port, wait_until

    db = str(tmp_path / "j.sqlite")
    token = JudgmentStore(db).add_rater("dr_b")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-m", "cxr_tf.cli", "judge", "serve", "--testset", str(testset),
                             "--db", db, "--port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)

    def get(tok):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/next", headers={"Authorization": f"Bearer {tok}"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, None
        except OSError:
            return None

    try:
        status, body = wait_until(lambda: get(token), timeout=60, step=0.3)
        assert status == 200 and body["progress"] == {"answered": 0, "total": 5}
        assert get("forged")[0] == 401
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0]
    assert f"rater app on http://127.0.0.1:{port}/ (5 items)" in out
