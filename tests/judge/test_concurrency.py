"""Concurrent raters against a live server on 127.0.0.1 (waitress, as ``judge serve``).

Every rater's thread answers all items, each answer posted twice at the same moment
(a double click / retry); meanwhile an attacker thread posts forged items and tokens.
Afterwards the database must hold exactly one judgment per (rater, item), each equal to
what that rater sent.
"""
from __future__ import annotations

import hashlib
import json
import threading
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from _judge_helpers import LiveServer, make_testset

from cxr_tf.judge.app import create_app

N_RATERS = 6


def http(url, token, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def choose(name, item):
    bit = hashlib.sha256(f"{name}:{item['id']}".encode()).digest()[0] & 1
    return item["choices"][bit]


def test_concurrent_raters_lose_and_duplicate_nothing(db_url, tmp_path):
    ts = make_testset(tmp_path / "ts", n_2afc=5, n_jnd=3)
    app = create_app(str(ts), db_url)
    svc = app.extensions["cxr_judge"]
    tokens = {f"r{i}": svc.store.add_rater(f"r{i}", order_seed=i) for i in range(N_RATERS)}
    server = LiveServer(app, threads=8)
    start = threading.Barrier(N_RATERS + 2, timeout=30)  # raters, attacker, main
    statuses, sent = Counter(), {}
    lock = threading.Lock()

    def rater(name):
        token, mine = tokens[name], {}
        start.wait()
        with ThreadPoolExecutor(2) as dup:
            while True:
                st, nxt = http(server.url + "/api/next", token)
                assert st == 200
                if nxt["item"] is None:
                    break
                item = nxt["item"]
                choice = choose(name, item)
                body = {"item": item["id"], "choice": choice, "ms": 100}
                results = list(dup.map(lambda _: http(server.url + "/api/answer", token, body), range(2)))
                with lock:
                    statuses.update(st for st, _ in results)
                assert sorted(st for st, _ in results) == [200, 201], results
                mine[item["id"]] = choice
        sent[name] = mine

    def attacker():
        start.wait()
        out = []
        for i in range(20):
            out.append(http(server.url + "/api/answer", tokens["r0"], {"item": 10**6 + i, "choice": "left"})[0])
            out.append(http(server.url + "/api/answer", "forged-token", {"item": 1, "choice": "left"})[0])
        return out

    try:
        with ThreadPoolExecutor(N_RATERS + 1) as pool:
            futs = [pool.submit(rater, n) for n in tokens]
            atk = pool.submit(attacker)
            start.wait()
            for f in futs:
                f.result()
            assert set(atk.result()) == {401, 404}
    finally:
        server.close()
    n_items = len(svc.item_by_id)
    assert statuses == Counter({201: N_RATERS * n_items, 200: N_RATERS * n_items})
    rows = svc.store.all_judgments()
    assert len(rows) == N_RATERS * n_items                       # nothing lost, nothing duplicated
    assert len({(r["rater"], r["kind"], r["id"]) for r in rows}) == len(rows)
    for name, mine in sent.items():
        rater = next(r for r in svc.store.raters() if r.name == name)
        assert len(mine) == n_items
        stored = svc.store.answers(rater.id)
        assert {i: svc.shown(rater, i).choice_for(a) for i, a in stored.items()} == mine
    svc.store.close()
