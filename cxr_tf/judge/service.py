"""What a rater is shown and may answer: per-rater order, sides, progress, the answer rules.

Kept apart from the web layer so it is tested without HTTP.

* Order: each rater sees every 2AFC item, then every JND item, each block shuffled by
  ``random.Random(order_seed)`` (the seed is stored with the rater, so the order is
  reproducible and a returning rater continues where they stopped).
* Sides: for 2AFC, whether p1 is shown on the left is a per-(rater, item) coin from a hash
  of the rater's seed and the item key, so position bias averages out over raters. The
  browser only ever sees "left"/"right"; the answer is stored as p0/p1.
* A rater may answer only their current item (the first unanswered one in their order),
  or re-send / revise (latest only, see :mod:`cxr_tf.judge.db`) an item they answered.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import lru_cache

from .db import AnswerConflict, JudgeDBError, JudgmentStore, Outcome, RaterInfo
from .testset import KINDS, TestSet, TestSetItem

CHOICES = {"2afc": ("left", "right"), "jnd": ("same", "different")}


class ItemNotFound(JudgeDBError):
    """The item id is not part of the served test set."""


class NotCurrentItem(JudgeDBError):
    """The rater tried to answer an item that is not their current one."""


@dataclass(frozen=True)
class Shown:
    """An item as one rater sees it."""

    item_id: int
    item: TestSetItem
    swapped: bool  # 2AFC: p1 on the left

    def role(self, slot: str) -> str:
        """Image role behind a display slot (ref, left, right)."""
        if slot == "ref":
            return "ref"
        if slot not in ("left", "right"):
            raise KeyError(slot)
        left_is_p1 = self.swapped
        return ("p1" if left_is_p1 else "p0") if slot == "left" else ("p0" if left_is_p1 else "p1")

    def answer_for(self, choice: str) -> str:
        """Stored answer (p0/p1/same/different) for a displayed choice."""
        if choice not in CHOICES[self.item.kind]:
            raise JudgeDBError(f"choice {choice!r} is not valid for a {self.item.kind} item; use one of "
                               f"{CHOICES[self.item.kind]}")
        return self.role(choice) if self.item.kind == "2afc" else choice

    def choice_for(self, answer: str) -> str:
        if self.item.kind == "jnd":
            return answer
        return "left" if self.role("left") == answer else "right"


def side_swapped(order_seed: int, item: TestSetItem) -> bool:
    if item.kind != "2afc":
        return False
    return hashlib.sha256(f"{order_seed}:{item.key}".encode()).digest()[0] & 1 == 1


@lru_cache(maxsize=1024)
def _order(order_seed: int, blocks: tuple[tuple[int, ...], ...]) -> tuple[int, ...]:
    rng = random.Random(order_seed)
    out: list[int] = []
    for block in blocks:
        b = list(block)
        rng.shuffle(b)
        out.extend(b)
    return tuple(out)


class RatingService:
    """Serve one test set's items to raters and record their answers.

    Args:
        testset: the test set folder or a loaded :class:`TestSet`.
        store: the judgment database.
    """

    def __init__(self, testset: TestSet | str, store: JudgmentStore):
        self.testset = testset if isinstance(testset, TestSet) else TestSet(testset)
        self.store = store
        ids = store.sync_items(self.testset.items)
        self.item_by_id = {ids[it.key]: it for it in self.testset.items}
        self._blocks = tuple(tuple(sorted(i for i, it in self.item_by_id.items() if it.kind == k)) for k in KINDS)

    @property
    def total(self) -> int:
        return len(self.item_by_id)

    def order(self, rater: RaterInfo) -> tuple[int, ...]:
        """Item ids in the order this rater sees them."""
        return _order(rater.order_seed, self._blocks)

    def shown(self, rater: RaterInfo, item_id: int) -> Shown:
        item = self.item_by_id.get(item_id)
        if item is None:
            raise ItemNotFound(f"no item {item_id} in this test set")
        return Shown(item_id, item, side_swapped(rater.order_seed, item))

    def progress(self, rater: RaterInfo) -> tuple[int, int]:
        answered = self.store.answered_item_ids(rater.id) & self.item_by_id.keys()
        return len(answered), self.total

    def next_item(self, rater: RaterInfo) -> Shown | None:
        """The rater's current item (first unanswered in their order), ``None`` when done."""
        return self._first_unanswered(rater, self.store.answered_item_ids(rater.id))

    def _first_unanswered(self, rater: RaterInfo, answered: set[int]) -> Shown | None:
        for item_id in self.order(rater):
            if item_id not in answered:
                return self.shown(rater, item_id)
        return None

    def last_answered(self, rater: RaterInfo) -> tuple[Shown, str] | None:
        """The rater's latest judgment (the only one they may change) and its displayed choice."""
        latest = self.store.latest(rater.id)
        if latest is None or latest[0] not in self.item_by_id:
            return None
        shown = self.shown(rater, latest[0])
        return shown, shown.choice_for(latest[1])

    def answer(self, rater: RaterInfo, item_id: int, choice: str, *, revise: bool = False,
               response_ms: int | None = None) -> Outcome:
        """Record ``choice`` (left/right or same/different) for ``item_id``.

        Raises:
            ItemNotFound: unknown item id.
            JudgeDBError: a choice that does not fit the item's kind.
            NotCurrentItem: an unanswered item other than the rater's current one.
            AnswerConflict: changing an answer the change rule keeps final.
        """
        shown = self.shown(rater, item_id)
        answer = shown.answer_for(choice)
        answered = self.store.answered_item_ids(rater.id)
        if item_id not in answered:
            # judged against this one snapshot: a duplicate request racing the first one sees
            # the item as current and ends as "unchanged" through the unique constraint
            current = self._first_unanswered(rater, answered)
            if current is None or current.item_id != item_id:
                raise NotCurrentItem("this is not your current item; reload the page")
        return self.store.record(rater.id, item_id, shown.item.kind, answer, revise=revise,
                                 shown_swapped=shown.swapped, response_ms=response_ms)


__all__ = ["AnswerConflict", "CHOICES", "ItemNotFound", "NotCurrentItem", "RatingService", "Shown", "side_swapped"]
