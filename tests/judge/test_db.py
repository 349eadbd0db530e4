"""The judgment database on SQLite and PostgreSQL: tokens, constraints, the change rule, export."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import sqlalchemy as sa

from cxr_tf.errors import CXRConfigError
from cxr_tf.judge.db import AnswerConflict, Judgment, JudgeDBError, JudgmentStore, hash_token
from cxr_tf.judge.export import export_judgments
from cxr_tf.judge.testset import TestSet


@pytest.fixture
def store(db_url):
    s = JudgmentStore(db_url)
    yield s
    s.close()


@pytest.fixture
def item_ids(store, testset):
    return store.sync_items(TestSet(testset).items)


def test_tokens_are_stored_only_as_hashes(store):
    token = store.add_rater("alice")
    assert len(token) >= 40
    with store.engine.connect() as c:
        rows = [tuple(map(str, r)) for r in c.execute(sa.text("SELECT * FROM raters"))]
    assert not any(token in v for r in rows for v in r)
    assert any(hash_token(token) in r for r in rows)
    assert store.rater_for_token(token).name == "alice"
    assert store.rater_for_token(token + "x") is None
    assert store.rater_for_token("") is None


def test_rater_names_unique_rotation_and_deactivation(store):
    old = store.add_rater("bob")
    with pytest.raises(JudgeDBError, match="already exists"):
        store.add_rater("bob")
    new = store.rotate_token("bob")
    assert store.rater_for_token(old) is None and store.rater_for_token(new).name == "bob"
    store.set_active("bob", False)
    assert store.rater_for_token(new) is None
    store.set_active("bob", True)
    assert store.rater_for_token(new).name == "bob"
    with pytest.raises(JudgeDBError, match="no rater"):
        store.rotate_token("nobody")


def test_sync_items_is_idempotent(store, testset, item_ids):
    again = store.sync_items(TestSet(testset).items)
    assert again == item_ids and len(set(item_ids.values())) == 5


def test_schema_constraints_hold_in_the_database(store, item_ids):
    """Bypass the Python rules: the database itself refuses duplicates and bad values."""
    store.add_rater("alice")
    rid = store.raters()[0].id
    iid = item_ids["2afc/traditional/000000"]
    with store.Session.begin() as s:
        s.add(Judgment(rater_id=rid, item_id=iid, answer="p0"))
    for bad in ({"item_id": iid, "answer": "p1"},            # duplicate (rater, item)
                {"item_id": item_ids["2afc/traditional/000001"], "answer": "maybe"},  # answer check
                {"item_id": 99999, "answer": "p0"},            # foreign key
                {"item_id": item_ids["2afc/traditional/000002"], "answer": "p0", "revisions": -1}):
        with pytest.raises(sa.exc.IntegrityError):
            with store.Session.begin() as s:
                s.add(Judgment(rater_id=rid, **bad))
    with store.Session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Judgment)) == 1


def test_record_change_rule(store, item_ids):
    store.add_rater("alice")
    rid = store.raters()[0].id
    a, b = item_ids["2afc/traditional/000000"], item_ids["jnd/traditional/000000"]
    assert store.record(rid, a, "2afc", "p0").status == "created"
    assert store.record(rid, a, "2afc", "p0").status == "unchanged"      # re-send: idempotent
    with pytest.raises(AnswerConflict):
        store.record(rid, a, "2afc", "p1")                                 # change without revise
    assert store.record(rid, a, "2afc", "p1", revise=True).status == "revised"  # latest: allowed
    assert store.record(rid, b, "jnd", "same").status == "created"
    with pytest.raises(AnswerConflict, match="only your latest"):
        store.record(rid, a, "2afc", "p0", revise=True)                    # no longer the latest
    with pytest.raises(JudgeDBError, match="not valid for a jnd"):
        store.record(rid, b, "jnd", "p0")
    assert store.answers(rid) == {a: "p1", b: "same"}
    rows = store.all_judgments()
    assert [(r["id"], r["answer"], r["revisions"]) for r in rows] == [("000000", "p1", 1), ("000000", "same", 0)]


def test_raters_see_only_their_answers(store, item_ids):
    store.add_rater("alice"), store.add_rater("bob")
    alice, bob = (r.id for r in store.raters())
    a = item_ids["2afc/traditional/000000"]
    store.record(alice, a, "2afc", "p0")
    assert store.answers(bob) == {} and store.latest(bob) is None
    assert store.record(bob, a, "2afc", "p1").status == "created"  # bob's own row, alice's untouched
    assert store.answers(alice) == {a: "p0"} and store.answers(bob) == {a: "p1"}


def test_export_writes_bapps_fractions(store, testset, item_ids):
    ts = TestSet(testset)
    tokens = [store.add_rater(n) for n in ("r1", "r2", "r3", "r4")]
    ids = [r.id for r in store.raters()]
    k0, k1, j0 = item_ids["2afc/traditional/000000"], item_ids["2afc/traditional/000001"], item_ids["jnd/traditional/000000"]
    for rid, ans in zip(ids, ("p1", "p1", "p0", "p1")):
        store.record(rid, k0, "2afc", ans)
    store.record(ids[0], k1, "2afc", "p0")
    for rid, ans in zip(ids[:3], ("same", "different", "same")):
        store.record(rid, j0, "jnd", ans)
    summary = export_judgments(ts, store)
    assert (summary.written, summary.unjudged, summary.judgments) == (3, 2, 8)
    v = np.load(testset / "2afc/traditional/judge/000000.npy")
    assert v.shape == (1,) and v.dtype == np.float32 and v[0] == pytest.approx(0.75)
    assert np.load(testset / "2afc/traditional/judge/000001.npy")[0] == 0.0
    assert np.load(testset / "jnd/traditional/same/000000.npy")[0] == pytest.approx(2 / 3)
    assert not (testset / "2afc/traditional/judge/000002.npy").exists()  # unjudged: no file
    with open(summary.csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and {r["rater"] for r in rows} == {"r1", "r2", "r3", "r4"}
    text = open(summary.csv_path).read()
    assert not any(t in text or hash_token(t) in text for t in tokens)
    with pytest.raises(Exception, match="2 item"):
        export_judgments(ts, store, require_complete=True)


def test_bad_url_is_a_clear_error(tmp_path):
    with pytest.raises(CXRConfigError, match="invalid database URL|needs the driver"):
        JudgmentStore("nosuchdialect://x/y")
    with pytest.raises(CXRConfigError, match="cannot open"):
        JudgmentStore(str(tmp_path / "missing_dir" / "x.sqlite"))
