"""The order-rate limit's slots (services.executor.risk.take_order_slot) on a real MongoDB-compatible server, with
the clock given: a rolling minute holds at most the limit's opening orders, however many plans ask at once."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from services.executor.domain import CannotPlace
from services.executor.risk import ORDER_SLOTS, RiskLimits, release_order_slot, take_order_slot

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def limit(n: int) -> RiskLimits:
    return RiskLimits(max_orders_per_minute=n)


async def taken(db, holder: str, n: int, seconds: float) -> bool:
    try:
        await take_order_slot(limit(n), db, holder, at(seconds))
        return True
    except CannotPlace as refusal:
        assert f"the limit is {n} (RISK_MAX_ORDERS_PER_MINUTE)" in str(refusal)
        return False


async def test_plans_asking_at_once_get_no_more_slots_than_the_limit(mongo_db):
    results = await asyncio.gather(*(taken(mongo_db, f"sig-{n}", 5, 0) for n in range(20)))
    assert results.count(True) == 5
    assert sorted(d["_id"] for d in await mongo_db[ORDER_SLOTS].find({}).to_list(None)) == [0, 1, 2, 3, 4]
    assert await taken(mongo_db, "sig-late", 5, 59.9) is False
    assert await taken(mongo_db, "sig-late", 5, 60) is True  # a minute after, a slot is free again


async def test_a_signal_planned_again_keeps_its_slot_for_a_minute_from_then(mongo_db):
    assert await taken(mongo_db, "a", 1, 0)
    assert await taken(mongo_db, "a", 1, 55)  # retried while BingX was away: it may be sent only now
    assert await taken(mongo_db, "b", 1, 61) is False  # a's order may have gone out at 55
    assert await taken(mongo_db, "b", 1, 115.5)


async def test_slots_taken_under_a_higher_limit_count_after_it_is_lowered(mongo_db):
    for n in range(5):
        assert await taken(mongo_db, f"s{n}", 5, 0 if n < 3 else 50)
    assert await taken(mongo_db, "x", 2, 61) is False  # two of the old slots are still busy
    assert await taken(mongo_db, "x", 2, 110.5)
    assert await taken(mongo_db, "y", 2, 110.5)
    assert await taken(mongo_db, "z", 2, 110.5) is False


async def test_a_missing_slot_number_is_filled_rather_than_refusing_for_good(mongo_db):
    for n in range(3):
        assert await taken(mongo_db, f"s{n}", 3, 0)
    await mongo_db[ORDER_SLOTS].delete_one({"_id": 0})  # someone cleaned up by hand
    assert await taken(mongo_db, "again", 3, 1)
    assert await taken(mongo_db, "more", 3, 1) is False


@pytest.mark.parametrize("since, frees", [(0, True), (5, False)])
async def test_a_plan_that_sends_nothing_gives_back_only_the_slot_it_took(mongo_db, since, frees):
    assert await taken(mongo_db, "a", 1, 0)
    await release_order_slot(mongo_db, "a", at(since))  # a slot taken before `since` was for an order sent
    assert await taken(mongo_db, "b", 1, 10) is frees
