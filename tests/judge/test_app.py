"""The web API through Flask's test client: login, CSRF, isolation, refusals, images."""
from __future__ import annotations

import io
import re

import numpy as np
import pytest
from _judge_helpers import pixel_code
from PIL import Image

from cxr_tf.judge.app import create_app


@pytest.fixture
def app(testset, tmp_path):
    app = create_app(str(testset), str(tmp_path / "j.sqlite"), secret_key=b"k" * 32)
    yield app
    app.extensions["cxr_judge"].store.close()


@pytest.fixture
def tokens(app):
    store = app.extensions["cxr_judge"].store
    return {name: store.add_rater(name, order_seed=seed) for name, seed in (("alice", 1), ("bob", 2))}


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def login(client, token):
    page = client.get("/login")
    csrf = re.search(rb'name="csrf" value="([^"]+)"', page.data).group(1).decode()
    return client.post("/login", data={"token": token, "csrf": csrf})


def page_csrf(client):
    return re.search(rb'name="csrf-token" content="([^"]+)"', client.get("/").data).group(1).decode()


def test_unauthenticated_and_invalid_tokens_get_401(app, tokens):
    c = app.test_client()
    assert c.get("/").status_code == 302 and c.get("/").headers["Location"].endswith("/login")
    for headers in ({}, bearer("not-a-token"), bearer(""), {"Authorization": "Basic abc"},
                    bearer(tokens["alice"] + "x")):
        assert c.get("/api/next", headers=headers).status_code == 401
        assert c.post("/api/answer", headers=headers, json={"item": 1, "choice": "left"}).status_code == 401
        assert c.get("/api/items/1/ref.png", headers=headers).status_code == 401
    assert login(c, "wrong").status_code == 401


def test_login_sets_a_strict_httponly_cookie_and_needs_csrf(app, tokens):
    c = app.test_client()
    r = c.post("/login", data={"token": tokens["alice"]})  # no CSRF field: refused
    assert r.status_code == 403
    r = login(c, tokens["alice"])
    assert r.status_code == 303
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert tokens["alice"] not in cookie
    nxt = c.get("/api/next").get_json()
    assert nxt["progress"] == {"answered": 0, "total": 5}
    item = nxt["item"]["id"]
    # cookie-authenticated POST without / with a wrong CSRF header is refused, with it accepted
    assert c.post("/api/answer", json={"item": item, "choice": "left"}).status_code == 403
    assert c.post("/api/answer", json={"item": item, "choice": "left"},
                  headers={"X-CSRF-Token": "forged"}).status_code == 403
    assert c.post("/api/answer", json={"item": item, "choice": "left"},
                  headers={"X-CSRF-Token": page_csrf(c)}).status_code == 201
    # rotating the token ends the session
    app.extensions["cxr_judge"].store.rotate_token("alice")
    assert c.get("/api/next").status_code == 401


def test_forged_or_malformed_answers_are_refused(app, tokens):
    c = app.test_client()
    h = bearer(tokens["alice"])
    item = c.get("/api/next", headers=h).get_json()["item"]
    assert item["kind"] == "2afc"
    cases = [
        ({"item": 999999, "choice": "left"}, 404),        # forged id
        ({"item": -1, "choice": "left"}, 404),
        ({"item": "1", "choice": "left"}, 400),           # wrong types
        ({"item": True, "choice": "left"}, 400),
        ({"item": item["id"], "choice": 1}, 400),
        ({"item": item["id"], "choice": "same"}, 400),    # JND answer to a 2AFC item
        ({"item": item["id"], "choice": "p1"}, 400),      # raw roles are not choices
        ({"item": item["id"], "choice": "left", "ms": -5}, 400),
        ({"item": item["id"], "choice": "left", "revise": "yes"}, 400),
        ([1, 2], 400),
    ]
    for body, status in cases:
        assert c.post("/api/answer", headers=h, json=body).status_code == status, body
    assert c.post("/api/answer", headers=h, data="not json", content_type="application/json").status_code == 400
    assert c.post("/api/answer", headers=h, data=b"x" * 20000, content_type="application/json").status_code == 413
    others = [i for i in app.extensions["cxr_judge"].item_by_id if i != item["id"]]
    assert c.post("/api/answer", headers=h, json={"item": others[0], "choice": "left"}).status_code == 409
    assert c.get("/api/next", headers=h).get_json()["progress"]["answered"] == 0


def test_rater_isolation(app, tokens):
    c = app.test_client()
    ha, hb = bearer(tokens["alice"]), bearer(tokens["bob"])
    svc = app.extensions["cxr_judge"]
    a_item = c.get("/api/next", headers=ha).get_json()["item"]["id"]
    assert c.post("/api/answer", headers=ha, json={"item": a_item, "choice": "left"}).status_code == 201
    assert c.get("/api/answers", headers=hb).get_json() == {"rater": "bob", "answers": []}
    assert c.get("/api/last", headers=hb).get_json()["item"] is None
    alice = next(x for x in svc.store.raters() if x.name == "alice")
    bob = next(x for x in svc.store.raters() if x.name == "bob")
    # seeds 1 and 2 shuffle the 3 2AFC items alike, so alice's first item is bob's current one too
    assert svc.order(bob)[0] == svc.order(alice)[0] == a_item
    # bob cannot touch alice's answer: his "revise" on her item is his own first answer to it
    # (revise has nothing to change yet) -> 201 created, in his rows only
    r = c.post("/api/answer", headers=hb, json={"item": a_item, "choice": "right", "revise": True})
    assert r.status_code == 201 and r.get_json()["status"] == "created"
    assert svc.store.answers(alice.id) == {a_item: svc.shown(alice, a_item).answer_for("left")}
    assert svc.store.answers(bob.id) == {a_item: svc.shown(bob, a_item).answer_for("right")}
    # his revise changes his latest answer, never hers
    r = c.post("/api/answer", headers=hb, json={"item": a_item, "choice": "left", "revise": True})
    assert r.status_code == 200 and r.get_json()["status"] == "revised"
    assert c.get("/api/answers", headers=hb).get_json()["answers"] == [{"item": a_item, "choice": "left"}]
    assert svc.store.answers(alice.id) == {a_item: svc.shown(alice, a_item).answer_for("left")}
    # an item that is not bob's current one is refused with 409 and records nothing
    r = c.post("/api/answer", headers=hb, json={"item": svc.order(bob)[2], "choice": "left"})
    assert r.status_code == 409 and set(svc.store.answers(bob.id)) == {a_item}
    assert c.get("/api/answers", headers=ha).get_json()["answers"] == [{"item": a_item, "choice": "left"}]


def test_answer_flow_resend_revise_and_done(app, tokens):
    c = app.test_client()
    h = bearer(tokens["alice"])
    first = c.get("/api/next", headers=h).get_json()["item"]
    assert c.post("/api/answer", headers=h, json={"item": first["id"], "choice": "left", "ms": 800}).status_code == 201
    assert c.post("/api/answer", headers=h, json={"item": first["id"], "choice": "left"}).get_json()["status"] == "unchanged"
    assert c.post("/api/answer", headers=h, json={"item": first["id"], "choice": "right"}).status_code == 409
    assert c.get("/api/last", headers=h).get_json()["choice"] == "left"
    r = c.post("/api/answer", headers=h, json={"item": first["id"], "choice": "right", "revise": True})
    assert r.status_code == 200 and r.get_json()["status"] == "revised"
    kinds = []
    while (nxt := c.get("/api/next", headers=h).get_json())["item"]:
        it = nxt["item"]
        kinds.append(it["kind"])
        choice = "left" if it["kind"] == "2afc" else "same"
        assert c.post("/api/answer", headers=h, json={"item": it["id"], "choice": choice}).status_code == 201
    assert kinds == ["2afc", "2afc", "jnd", "jnd"]
    assert nxt["progress"] == {"answered": 5, "total": 5}
    # the earlier answer is final now
    assert c.post("/api/answer", headers=h, json={"item": first["id"], "choice": "left", "revise": True}).status_code == 409


def test_images_follow_the_per_rater_side_mapping(app, tokens):
    c = app.test_client()
    svc = app.extensions["cxr_judge"]
    for name in ("alice", "bob"):
        rater = next(x for x in svc.store.raters() if x.name == name)
        for item_id, it in svc.item_by_id.items():
            shown = svc.shown(rater, item_id)
            slots = ("ref", "left", "right") if it.kind == "2afc" else ("left", "right")
            for slot in slots:
                r = c.get(f"/api/items/{item_id}/{slot}.png", headers=bearer(tokens[name]))
                assert r.status_code == 200 and r.mimetype == "image/png"
                px = np.asarray(Image.open(io.BytesIO(r.data)))
                assert px[0, 0] == pixel_code(it.kind, int(it.id), shown.role(slot))


@pytest.mark.parametrize("path", [
    "/api/items/1/../../../../etc/passwd", "/api/items/1/..%2f..%2fmanifest.csv.png", "/api/items/1/p0.png",
    "/api/items/1/%2e%2e.png", "/api/items/999/ref.png", "/api/items/-1/ref.png", "/api/items/4/ref.png",
    "/static/../manifest.csv", "/static/..%2f..%2fdb.py", "/manifest.csv", "/2afc/traditional/ref/000000.png",
])
def test_no_path_traversal(app, tokens, path):
    r = app.test_client().get(path, headers=bearer(tokens["alice"]))
    assert r.status_code == 404, (path, r.status_code)


def test_security_headers_and_no_cors(app, tokens):
    r = app.test_client().get("/api/next", headers={**bearer(tokens["alice"]), "Origin": "http://evil.example"})
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    assert r.headers["X-Content-Type-Options"] == "nosniff" and r.headers["Cache-Control"] == "no-store"
    assert "Access-Control-Allow-Origin" not in r.headers
