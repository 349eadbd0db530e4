"""Per-rater order, randomised sides, progress, resumption and the current-item rule."""
from __future__ import annotations

import pytest

from cxr_tf.judge.db import JudgmentStore
from cxr_tf.judge.service import ItemNotFound, NotCurrentItem, RatingService


@pytest.fixture
def service(testset, tmp_path):
    from _judge_helpers import make_testset

    big = make_testset(tmp_path / "big", n_2afc=12, n_jnd=6)
    svc = RatingService(str(big), JudgmentStore(str(tmp_path / "j.sqlite")))
    yield svc
    svc.store.close()


def _rater(svc, name, seed):
    svc.store.add_rater(name, order_seed=seed)
    return next(r for r in svc.store.raters() if r.name == name)


def test_order_is_seeded_per_rater_with_2afc_block_first(service):
    a, b, a2 = _rater(service, "a", 1), _rater(service, "b", 2), _rater(service, "a2", 1)
    oa, ob = service.order(a), service.order(b)
    assert sorted(oa) == sorted(ob) == sorted(service.item_by_id)            # every item once
    assert oa != ob and service.order(a2) == oa                               # seeded by the rater's seed
    kinds = [service.item_by_id[i].kind for i in oa]
    assert kinds == ["2afc"] * 12 + ["jnd"] * 6
    assert [i for i in oa if service.item_by_id[i].kind == "2afc"] != sorted(i for i in oa[:12])  # shuffled


def test_sides_are_randomised_and_mapped_back(service):
    a = _rater(service, "a", 5)
    shown = [service.shown(a, i) for i in service.order(a) if service.item_by_id[i].kind == "2afc"]
    swaps = [s.swapped for s in shown]
    assert 0 < sum(swaps) < len(swaps)
    for s in shown:
        assert {s.role("left"), s.role("right")} == {"p0", "p1"}
        assert s.role("left") == ("p1" if s.swapped else "p0")
        assert s.answer_for("left") == s.role("left") and s.choice_for(s.answer_for("right")) == "right"
    jnd = service.shown(a, service.order(a)[-1])
    assert not jnd.swapped and jnd.answer_for("same") == "same"


def test_progress_resume_and_current_item_rule(service):
    a = _rater(service, "a", 3)
    order = service.order(a)
    assert service.next_item(a).item_id == order[0]
    with pytest.raises(NotCurrentItem):
        service.answer(a, order[1], "left")                   # skipping ahead is refused
    with pytest.raises(ItemNotFound):
        service.answer(a, 10**6, "left")
    for i in order[:5]:
        assert service.answer(a, i, "right").status == "created"
    assert service.progress(a) == (5, 18)
    # a new service on the same database (server restart) continues where the rater stopped
    again = RatingService(service.testset, service.store)
    assert again.next_item(a).item_id == order[5]
    shown, choice = again.last_answered(a)
    assert shown.item_id == order[4] and choice == "right"
    assert again.answer(a, order[4], "left", revise=True).status == "revised"
    for i in order[5:]:
        again.answer(a, i, "same" if again.item_by_id[i].kind == "jnd" else "left")
    assert again.next_item(a) is None and again.progress(a) == (18, 18)
