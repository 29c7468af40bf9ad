"""An executor SIGKILLed while alerts stream in, with orders at the venue it has not recorded yet: restarted (one
executor), or taken over by the other replica (two). The stream-with-books versions of tests/e2e/test_executor_crash.py
and tests/e2e/test_executor_replicas.py, through the ingress."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.executor.domain import client_order_id
from shared.messaging import SIGNAL_SHARDS
from tests.faults.books import assert_clean, venue_orders
from tests.faults.harness import ORDER_PATH, AlertStream, close_books, inject, make_alerts, readyz, start_stack
from tests.support import wait_for

pytestmark = pytest.mark.e2e
FOUND = "order found at the venue after an interrupted attempt"


async def in_flight(stack, mongo_db) -> list[dict]:
    """Signals whose order the venue has carried out while the executor still waits for the answer."""

    async def found() -> list[dict]:
        at_venue = {o["clientOrderId"] for o in await venue_orders(stack.url("bingx_sim"))}
        waiting = await mongo_db.signals.find({"status": "submitting"}).to_list(None)
        return [d for d in waiting if client_order_id(d["_id"]) in at_venue]

    return await wait_for(found, timeout=10, what="an order at the venue and not yet recorded")


async def test_executor_killed_mid_stream_and_restarted(stack, mongo_db, amqp_url):
    await start_stack(stack)
    started = time.monotonic()
    alerts = make_alerts("crash", 60)
    stream = AlertStream(stack, alerts, interval=0.04)
    sending = asyncio.create_task(stream.run())
    await stream.reached(15)
    # The venue carries the next orders out at once and answers late: the executor dies waiting.
    await inject(stack, kind="late_answer", ms=5000, path=ORDER_PATH, method="POST", count=2)
    interrupted = await in_flight(stack, mongo_db)
    stack.kill("executor")
    killed_at = stream.started
    stack.start("executor")
    await stack.ready("executor")
    await sending

    books = await close_books(stack, mongo_db, amqp_url, alerts, "executor SIGKILLed and restarted", started,
                              killed_after_alert=killed_at)
    assert_clean(books)
    assert books["accepted"] == books["sent"] == 60
    assert books["at_exchange"] == 60
    assert killed_at < 60  # it died mid-stream
    # What it was sending when it died was found at the venue by its client order id, not sent again.
    assert stack.log("executor").count(FOUND) >= 1
    for document in interrupted:
        assert (await mongo_db.signals.find_one({"_id": document["_id"]}))["status"] == "placed"


async def test_two_executors_one_killed_mid_stream(stack, mongo_db, amqp_url):
    for name in ("bingx_sim", "control", "ingress"):
        stack.start(name)
    stack.start("executor")
    stack.start("executor-2", module="executor")
    for name in ("bingx_sim", "control", "ingress", "executor", "executor-2"):
        await stack.ready(name)

    async def shards(name: str) -> list[int]:
        return (await readyz(stack, name) or {}).get("shards") or []

    async def split() -> bool:
        one, two = await shards("executor"), await shards("executor-2")
        return bool(one and two and sorted(one + two) == list(range(SIGNAL_SHARDS)))

    await wait_for(split, timeout=20, what="the two executors to split the shards")
    replicas = {(await readyz(stack, name))["replica"]: name for name in ("executor", "executor-2")}

    started = time.monotonic()
    alerts = make_alerts("replicas", 60)
    stream = AlertStream(stack, alerts, interval=0.04)
    sending = asyncio.create_task(stream.run())
    await stream.reached(15)
    await inject(stack, kind="late_answer", ms=5000, path=ORDER_PATH, method="POST", count=2)
    interrupted = await in_flight(stack, mongo_db)
    victim = replicas[interrupted[0]["claimed_by"]]
    survivor = ({"executor", "executor-2"} - {victim}).pop()
    stack.kill(victim)  # not restarted: the other one takes its shards over
    killed_at = stream.started
    await sending

    books = await close_books(stack, mongo_db, amqp_url, alerts, "two executors, one SIGKILLed", started,
                              killed_after_alert=killed_at)
    assert_clean(books)
    assert books["accepted"] == books["sent"] == 60
    assert books["at_exchange"] == 60
    assert killed_at < 60
    assert stack.log(survivor).count(FOUND) >= 1  # the survivor found the victim's unanswered order
    assert (await mongo_db.signals.find_one({"_id": interrupted[0]["_id"]}))["status"] == "placed"
    assert sorted(await shards(survivor)) == list(range(SIGNAL_SHARDS))
    claimed = {d["claimed_by"] for d in await mongo_db.signals.find({}).to_list(None)}
    assert claimed == set(replicas)  # both did work
