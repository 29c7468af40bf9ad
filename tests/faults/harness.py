"""What the fault scenarios share: the stack, a paced stream of unique alerts, the simulator's fault API, and the
wait until nothing is in flight any more (after which the books cannot change)."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import datetime, timezone
from typing import Any

import aio_pika
import aiohttp
import orjson

from shared.messaging import EXECUTOR_SHARDS
from tests.e2e.stack import CONTROL_TOKEN, WEBHOOK_SECRET, Stack
from tests.faults.books import TERMINAL, Alert, Attempt, OffWindow, check_books, off_windows, read_books, report, summary
from tests.support import wait_for

ORDER_PATH = "/openApi/swap/v2/trade/order"  # POST places an order, GET looks one up by its client order id
AUTH = {"Authorization": f"Bearer {CONTROL_TOKEN}"}
# Symbols the stack prices (tests/e2e/stack.py) with a size above each market's minimum: spread over the shards.
SIZES = (("BTCUSDT.P", "0.001"), ("ETHUSDT.P", "0.01"), ("SOLUSDT.P", "0.1"), ("LTCUSDT.P", "0.1"),
         ("BNBUSDT.P", "0.01"), ("AVAXUSDT.P", "1"), ("LINKUSDT.P", "1"), ("DOTUSDT.P", "1"))
CORE = ("bingx_sim", "control", "executor", "ingress")  # the notifier plays no part in the books


async def start_stack(stack: Stack, names: tuple[str, ...] = CORE) -> Stack:
    for name in names:
        stack.start(name)
    for name in names:
        await stack.ready(name)
    return stack


def make_alerts(scenario: str, count: int, *, unkeyed_every: int = 3, **fields: Any) -> list[Alert]:
    """`count` unique alerts, buys and sells over the symbols. Every `unkeyed_every`-th one has no `id` (the ingress
    names it by a hash of its text), the others name themselves; each carries a unique `strategy` tag, and `fields`."""
    alerts = []
    for n, ((symbol, qty), side) in enumerate(zip(itertools.cycle(SIZES), itertools.cycle(("buy", "buy", "sell")))):
        if n == count:
            break
        key = f"{scenario}-{n:03d}"
        payload: dict[str, Any] = {"token": WEBHOOK_SECRET, "symbol": symbol, "action": side, "qty": qty, "strategy": key, **fields}
        if unkeyed_every == 0 or n % unkeyed_every:
            payload["id"] = key
        alerts.append(Alert(key=key, payload=payload))
    return alerts


class AlertStream:
    """Sends the alerts one every `interval` seconds (the load), each as TradingView would: a delivery that is not
    answered 200 within 3 s is sent again, byte-identical, up to `deliveries` times."""

    def __init__(self, stack: Stack, alerts: list[Alert], *, interval: float, deliveries: int = 3, resend_after: float = 0.3) -> None:
        self.stack, self.alerts, self.interval = stack, alerts, interval
        self.deliveries, self.resend_after = deliveries, resend_after
        self.started = 0
        self._progress = asyncio.Condition()
        self._session: aiohttp.ClientSession | None = None

    async def run(self) -> list[Alert]:
        timeout = aiohttp.ClientTimeout(total=3.0)
        async with aiohttp.ClientSession(timeout=timeout) as self._session:
            tasks = []
            next_at = time.monotonic()
            for alert in self.alerts:
                tasks.append(asyncio.create_task(self._deliver(alert)))
                async with self._progress:
                    self.started += 1
                    self._progress.notify_all()
                next_at += self.interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))  # pacing: this is the load
            await asyncio.gather(*tasks)
        return self.alerts

    async def reached(self, count: int) -> None:
        """Returns once `count` alerts have been sent (a scenario's cue for its fault)."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.started >= count)

    async def _deliver(self, alert: Alert) -> None:
        body = orjson.dumps(alert.payload)
        url = self.stack.url("ingress", "/webhook/tradingview")
        for attempt in range(self.deliveries):
            if attempt:
                await asyncio.sleep(self.resend_after)  # TradingView's resend of a failed delivery
            assert self._session is not None
            sent = time.time()
            try:
                async with self._session.post(url, data=body, headers={"Content-Type": "text/plain"}) as response:
                    answer = await response.json(content_type=None)
                    alert.attempts.append(Attempt(sent, time.time(), response.status, answer if isinstance(answer, dict) else None))
                    if response.status == 200:
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as error:
                alert.attempts.append(Attempt(sent, time.time(), None, error=f"{type(error).__name__}: {error}"[:200]))


async def inject(stack: Stack, **fault: Any) -> dict:
    """Adds a fault at the simulator (services/bingx_sim/faults.py). A `latency` fault holds requests up before the
    venue carries them out: the venue may act on them until its window ends plus `ms` (see held_until)."""
    assert fault.get("kind") != "latency" or "seconds" in fault, "a latency fault here has a window, so its end is known"
    added_at = time.time()
    async with aiohttp.ClientSession() as session:
        async with session.post(stack.url("bingx_sim", "/_sim/faults"), json=fault) as response:
            assert response.status == 200, await response.text()
            added = (await response.json())["fault"]
    if added["kind"] == "latency":
        # Requests it holds land from `ms` after now until `ms` after its window ends (a little either side).
        landing = (added_at + added["latency_ms"] / 1000 - 0.2, (added["until_ms"] + added["latency_ms"]) / 1000 + 0.5)
        _held.setdefault(id(stack), []).append(landing)
    return added


_held: dict[int, list[tuple[float, float]]] = {}


def held(stack: Stack) -> list[tuple[datetime, datetime]]:
    """When requests held up by this stack's latency faults land at the venue (books.check_books's `held`)."""
    return [(datetime.fromtimestamp(a, timezone.utc), datetime.fromtimestamp(b, timezone.utc)) for a, b in _held.get(id(stack), [])]


def forget(stack: Stack) -> None:
    _held.pop(id(stack), None)


def held_until(stack: Stack) -> float:
    """When the last request a latency fault holds up has reached the venue (time.time()); 0 without one."""
    return max((end for _, end in _held.get(id(stack), [])), default=0.0)


async def sim_admin(stack: Stack, method: str, path: str, body: Any = None) -> dict:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, stack.url("bingx_sim", path), json=body) as response:
            assert response.status == 200, await response.text()
            return await response.json()


async def put_settings(stack: Stack, **body: Any) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.put(stack.url("control", "/bot/settings"), json=body, headers=AUTH) as response:
            return response.status, await response.json()


async def readyz(stack: Stack, name: str) -> dict | None:
    try:
        async with aiohttp.ClientSession() as session, session.get(stack.url(name, "/readyz")) as response:
            return await response.json() if response.status == 200 else None
    except aiohttp.ClientError:
        return None


async def settle(stack: Stack, db, amqp_url: str, alerts: list[Alert], *, timeout: float = 45.0) -> bool:
    """Wait until nothing is in flight: every accepted alert has a finished record, no record is unfinished, the
    ingress's outbox is empty, no signal waits in the executor's shards, and no request held up on its way to the
    venue can still land. False when the deadline passed first (the books then say what is missing)."""
    accepted = [alert for alert in alerts if alert.accepted]
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()

        async def quiet() -> bool:
            if time.time() < held_until(stack):
                return False
            documents = await db.signals.find({}, {"status": 1, "signal.strategy": 1}).to_list(None)
            if any(d["status"] not in TERMINAL for d in documents):
                return False
            finished = {(d.get("signal") or {}).get("strategy") for d in documents} | {d["_id"] for d in documents}
            if any(alert.key not in finished and not (alert.answered_ids & finished) for alert in accepted):
                return False
            if await db.outbox.count_documents({}):
                return False
            for shard in EXECUTOR_SHARDS:
                declared = await channel.declare_queue(shard.name, passive=True)
                if declared.declaration_result.message_count:
                    return False
            return True

        try:
            await wait_for(quiet, timeout=timeout, interval=0.2, what="every accepted alert to settle")
            return True
        except AssertionError:
            return False
    finally:
        await connection.close()


async def close_books(stack: Stack, db, amqp_url: str, alerts: list[Alert], scenario: str, started: float, *,
                      windows: list[OffWindow] | None = None, grace_s: float = 1.0, settle_timeout: float = 45.0,
                      stale_tolerance_s: float = 1.0, **extra: Any) -> dict[str, Any]:
    """Settle, read the three ledgers, check them, append the scenario's line to FAULT_REPORT; returns the books.
    An `extra` given as a function is called once settled (a count from the logs, say)."""
    settled = await settle(stack, db, amqp_url, alerts, timeout=settle_timeout)
    signals, orders, history = await read_books(db, stack.url("bingx_sim"))
    books = check_books(alerts, signals, orders, off_windows(history, grace_s=grace_s) if windows is None else windows,
                        stale_tolerance_s=stale_tolerance_s, held=held(stack))
    books["settled"] = settled
    extra = {name: value() if callable(value) else value for name, value in extra.items()}
    firsts = [alert.attempts[0].sent for alert in alerts if alert.attempts]
    extra["stream_s"] = round(max(firsts) - min(firsts), 2) if firsts else None
    extra["slowest_answer_ms"] = round(max((a.at - a.sent for alert in alerts for a in alert.attempts), default=0) * 1000)
    books.update(extra)
    report(scenario, books, time.monotonic() - started, **extra)
    print(f"\n{scenario}: {summary(books)}")
    return books
