"""The kill switch flipped off and on again, twice (halted, then entries off), while alerts stream in: nothing the
kill switch forbade is placed, then or later, and everything else is placed once."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

import pytest

from tests.faults.books import OffWindow, assert_clean, read_books
from tests.faults.harness import (
    ORDER_PATH,
    AlertStream,
    close_books,
    inject,
    make_alerts,
    put_settings,
    readyz,
    start_stack,
)
from tests.support import wait_for

pytestmark = pytest.mark.e2e
# An order decided just before the executor learned the change is on its way: it may land just after (books.OffWindow).
IN_FLIGHT_S = 0.25


async def executor_obeys(stack, mode: str) -> datetime:
    """Returns when the executor says it obeys `mode`."""

    async def obeying() -> bool:
        ready = await readyz(stack, "executor")
        return bool(ready and ready.get("killswitch", {}).get("mode") == mode)

    await wait_for(obeying, timeout=5, interval=0.01, what=f"the executor to obey {mode}")
    return datetime.now(timezone.utc)


async def switch_off(stack, mode: str) -> datetime:
    """Turn trading off; returns when the executor says it obeys (from then on nothing it forbids may be placed)."""
    status, body = await put_settings(stack, mode=mode, reason=f"faults: {mode} during a burst")
    assert status == 200 and body["mode"] == mode, body
    return await executor_obeys(stack, mode)


async def switch_on(stack, timeout: float = 10) -> datetime:
    """Turn trading on again; the control service refuses while signals wait in the executor's queues (they
    would run at once): asked again until they are recorded skipped. Returns when the operator asked the time that
    was granted: an alert arriving from then on may trade, one arriving before must not."""

    async def turned_on() -> datetime | None:
        asked = datetime.now(timezone.utc)
        status, body = await put_settings(stack, autotrade=True, reason="faults: burst drill over")
        assert status in (200, 409), body
        return asked if status == 200 else None

    return await wait_for(turned_on, timeout=timeout, interval=0.05, what="trading to be turned on again")


async def test_kill_switch_flipped_off_and_on_during_a_burst(stack, mongo_db, amqp_url):
    await start_stack(stack)
    started = time.monotonic()
    alerts = make_alerts("killswitch", 80)
    stream = AlertStream(stack, alerts, interval=0.03)
    sending = asyncio.create_task(stream.run())
    windows = []
    for mode, (off_at, on_at) in (("halted", (12, 30)), ("entries_off", (45, 62))):
        await stream.reached(off_at)
        obeyed = await switch_off(stack, mode)
        await stream.reached(on_at)
        windows.append(OffWindow(mode, obeyed, await switch_on(stack), order_slack_s=IN_FLIGHT_S))
        running_again = await executor_obeys(stack, "running")
    await sending

    # Strict: nothing that arrived after the executor said it obeyed is placed, ever (DESIGN rule 4).
    books = await close_books(stack, mongo_db, amqp_url, alerts, "kill switch flipped during a burst", started,
                              windows=windows)
    assert_clean(books)
    signals, _, history = await read_books(mongo_db, stack.url("bingx_sim"))
    assert [d["mode"] for d in sorted(history, key=lambda d: d["version"])] == [
        "running", "halted", "running", "entries_off", "running"]

    assert books["accepted"] == books["sent"] == 80
    for window in windows:
        inside = [d for d in signals if window.covers(d["received_at"].astimezone(timezone.utc))]
        # The window held alerts, and each was recorded skipped under that mode, never executed later.
        assert len(inside) >= 5, (window, len(inside))
        assert {(d["status"], d.get("mode")) for d in inside} == {("skipped", window.mode)}
    after = [d for d in signals if d["received_at"].astimezone(timezone.utc) >= running_again]
    assert after and {d["status"] for d in after} == {"placed"}  # on again: trading resumed
    assert books["recorded_terminal"] >= 10 and books["at_exchange"] >= 30


async def test_kill_switch_halts_while_order_requests_are_held_up_at_the_exchange(stack, mongo_db, amqp_url):
    """Orders sent just before the halt, held up on their way longer than the executor waits: the executor must not
    record them skipped while BingX may still carry them out (it does, up to its recvWindow after they were sent).
    Before the fix they were recorded skipped and landed anyway: an order at BingX nobody was told about."""
    stack.service_env["executor"] = {"EXECUTOR_MAX_CONSECUTIVE_FAILURES": "1000", "EXCHANGE_TIMEOUT_S": "1.0"}
    await start_stack(stack)
    started = time.monotonic()
    alerts = make_alerts("heldhalt", 40)
    stream = AlertStream(stack, alerts, interval=0.04)
    sending = asyncio.create_task(stream.run())
    await stream.reached(10)
    injected = datetime.now(timezone.utc)
    await inject(stack, kind="latency", ms=3500, path=ORDER_PATH, method="POST", seconds=0.3)

    async def held_up() -> bool:  # an order request on its way across the halt, which is what this test is about
        return await mongo_db.signals.count_documents({"status": "submitting", "sent_at": {"$gt": injected}}) > 0

    await wait_for(held_up, timeout=5, interval=0.005, what="an order request to be held up at the exchange")
    obeyed = await switch_off(stack, "halted")
    await stream.reached(30)
    # Refused while the signals behind the held ones wait; they are recorded skipped once the venue has answered.
    window = OffWindow("halted", obeyed, await switch_on(stack, timeout=20), order_slack_s=IN_FLIGHT_S)
    await sending

    books = await close_books(stack, mongo_db, amqp_url, alerts, "kill switch halts while requests are held up",
                              started, windows=[window])
    assert_clean(books)  # before the fix: misrecorded (skipped, yet at BingX)
    assert books["accepted"] == books["sent"] == 40
    signals = await mongo_db.signals.find({}).to_list(None)
    held_back = [d for d in signals if d["received_at"] < obeyed and d["status"] == "placed" and d["updated_at"] > obeyed]
    assert held_back, "no order request was held up across the halt"
    inside = [d for d in signals if window.covers(d["received_at"])]
    assert len(inside) >= 5 and {(d["status"], d.get("mode")) for d in inside} == {("skipped", "halted")}
    assert stack.log("executor").count("EarlierRequestMayLand") >= 1
