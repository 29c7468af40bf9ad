"""The executor on real RabbitMQ and MongoDB, trading at the BingX simulator through ccxt's real code path."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from datetime import timedelta
from decimal import Decimal

import aio_pika
import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.executor import domain
from services.executor.app import create_app
from services.executor.bootstrap import build
from services.executor.consumers import consuming
from services.executor.settings import ExecutorSettings
from shared import messaging
from shared.contracts import (
    KillSwitchChangedV1,
    KillSwitchMode,
    Message,
    SignalBatchV1,
    SignalReceivedV1,
    decode,
    utcnow,
)
from tests.integration.conftest import KEY, SECRET
from tests.support import wait_for

BTC = "BTC/USDT:USDT"


class Harness:
    """Publishes signals and kill-switch states as the ingress and control would, and reads the events."""

    def __init__(self, connection, publisher, db, base_url, ccxt_client) -> None:
        self.connection, self.publisher, self.db = connection, publisher, db
        self.base_url, self.ccxt = base_url, ccxt_client
        self.version = 0
        self.events: list[Message] = []

    async def set_mode(self, mode: KillSwitchMode, *, forced: bool = False) -> None:
        self.version += 1
        state = KillSwitchChangedV1(version=self.version, mode=mode, actor="test", reason="test", changed_at=utcnow(), forced=forced)
        await self.db.control_history.insert_one(state.model_dump(mode="python"))  # recorded first, as control does
        await self.publisher.publish(state, exchange="", routing_key=messaging.CONTROL_STREAM)

    async def send(self, **fields) -> SignalReceivedV1:
        signal = SignalReceivedV1(**{"signal_id": f"sig-{uuid.uuid4().hex[:10]}", "token_name": "main", "symbol": BTC,
                                     "action": "buy", "received_at": utcnow(), **fields})
        await self.publisher.publish(signal, exchange=messaging.SIGNALS_EXCHANGE, message_id=signal.signal_id)
        return signal

    async def signal_status(self, signal_id: str, *statuses: str) -> dict | None:
        document = await self.db.signals.find_one({"_id": signal_id})
        return document if document and document["status"] in statuses else None

    async def settled(self, signal: SignalReceivedV1) -> dict:
        terminal = ("placed", "failed", "skipped", "expired")
        return await wait_for(lambda: self.signal_status(signal.signal_id, *terminal), what=f"{signal.signal_id} to settle")

    async def venue_orders(self) -> list[dict]:
        return await self.ccxt.fetch_closed_orders(BTC)

    async def position(self) -> dict | None:
        for position in await self.ccxt.fetch_positions([BTC]):
            if position["contracts"]:
                return position
        return None


@contextlib.asynccontextmanager
async def harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue, *, start_executor: bool = True, **settings_extra):
    base_url, ccxt_client = venue
    connection = await messaging.connect(amqp_url, "test-harness")
    try:
        channel = await connection.channel()
        await messaging.declare_topology(channel)
        publisher = await messaging.Publisher.open(connection)
        h = Harness(connection, publisher, mongo_db, base_url, ccxt_client)
        events_channel = await connection.channel()
        events_queue = await events_channel.declare_queue(exclusive=True)
        await events_queue.bind(messaging.EVENTS_EXCHANGE, routing_key="#")

        async def collect(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            h.events.append(decode(message.type, message.body))
            await message.ack()

        await events_queue.consume(collect)
        settings = ExecutorSettings(
            amqp_url=amqp_url, mongo_uri=mongo_uri, mongo_db=mongo_db_name, bingx_api_key=KEY, bingx_api_secret=SECRET,
            bingx_base_url=base_url, **settings_extra,
        )
        if not start_executor:
            yield h, settings
            return
        async with build(settings) as executor, consuming(executor) as consumer:
            h.executor, h.consumer = executor, consumer
            yield h, settings
    finally:
        await connection.close()


async def events_of(h: Harness, type_name: str, signal_id: str) -> list[Message]:
    return [e for e in h.events if e.TYPE == type_name and getattr(e, "signal_id", None) == signal_id]


async def test_a_signal_becomes_one_order_and_a_long_position(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        signal = await h.send(qty=Decimal("0.01"))
        document = await h.settled(signal)
        assert document["status"] == "placed", document
        [order] = await mongo_db.orders.find({"signal_id": signal.signal_id}).to_list(None)
        assert order["client_order_id"] == domain.client_order_id(signal.signal_id)
        assert order["side"] == "buy" and order["amount"] == Decimal("0.01")
        position = await h.position()
        assert position["side"] == "long" and position["contracts"] == 0.01
        [venue_order] = await h.venue_orders()
        assert venue_order["id"] == order["order_id"] and venue_order["clientOrderId"] == order["client_order_id"]
        placed = await wait_for(lambda: events_of(h, "OrderPlacedV1", signal.signal_id), what="OrderPlacedV1")
        assert placed[0].order_id == order["order_id"]


async def writes_to(stream, signal_id: str, until: str) -> list[tuple[str, str | None]]:
    """(operation, status written) of each write to the signal's document, up to the one that records `until`."""
    seen: list[tuple[str, str | None]] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        change = await stream.try_next()  # waits up to the stream's max_await_time_ms
        if change is None or change["documentKey"]["_id"] != signal_id:
            continue
        written = change.get("fullDocument") or change.get("updateDescription", {}).get("updatedFields", {})
        seen.append((change["operationType"], written.get("status")))
        if written.get("status") == until:
            return seen
    raise AssertionError(f"{signal_id} was not recorded {until}: {seen}")


async def test_a_plain_entry_is_claimed_ready_to_send_in_one_write(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    """The common case writes its signal twice (claimed with its order planned; placed), not three times; an entry
    that changes the venue's leverage takes the usual way, claimed (`received`) before it is planned."""
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        async with await mongo_db.signals.watch(max_await_time_ms=200) as stream:
            plain = await h.send(qty=Decimal("0.01"))
            assert await writes_to(stream, plain.signal_id, "placed") == [("insert", "submitting"), ("update", "placed")]
            document = await h.settled(plain)
            assert document["legs"][0]["client_order_id"] == domain.client_order_id(plain.signal_id)
            assert document["attempts"] == 1 and document["sent_at"] == document["claimed_at"]

            levered = await h.send(qty=Decimal("0.01"), leverage=7)
            assert await writes_to(stream, levered.signal_id, "placed") == [
                ("insert", "received"), ("update", "submitting"), ("update", "placed")]
            assert (await h.ccxt.fetch_leverage(BTC))["longLeverage"] == 7
        assert len(await h.venue_orders()) == 2


async def test_a_signal_that_waited_through_entries_off_is_not_run_when_trading_is_turned_on_unless_forced(
        amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    """Signals in an executor's hands are not in the backlog the broker counts when trading is turned back on: one
    that arrived before or while entries were off is skipped once reached, as if the turn-on had seen it waiting;
    after a forced turn-on it runs, as the person forcing it asked."""
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue) as (h, _):
        async def learned() -> bool:
            return h.executor.deps.view.state is not None and h.executor.deps.view.state.version == h.version

        await h.set_mode(KillSwitchMode.RUNNING)
        await wait_for(learned, what="the executor to learn the kill switch")
        waited_since = utcnow()
        await h.set_mode(KillSwitchMode.ENTRIES_OFF)
        await h.set_mode(KillSwitchMode.RUNNING)
        await wait_for(learned, what="the executor to learn the kill switch")
        waited = await h.settled(await h.send(qty=Decimal("0.01"), received_at=waited_since))
        assert (waited["status"], waited["mode"]) == ("skipped", "entries_off"), waited
        assert "while it waited" in waited["reason"]
        fresh = await h.settled(await h.send(qty=Decimal("0.01")))
        assert fresh["status"] == "placed"

        await h.set_mode(KillSwitchMode.ENTRIES_OFF)
        await wait_for(learned, what="the executor to learn the kill switch")
        waited_since = utcnow()
        await h.set_mode(KillSwitchMode.RUNNING, forced=True)
        await wait_for(learned, what="the executor to learn the kill switch")
        forced = await h.settled(await h.send(qty=Decimal("0.01"), received_at=waited_since))
        assert forced["status"] == "placed", forced
        assert len(await h.venue_orders()) == 2


async def test_an_executor_started_after_trading_was_turned_back_on_still_skips_what_waited_through_the_halt(
        amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    """A replica that starts (or takes a shard over) after the turn-on reads only the latest version from the stream:
    what waited through the halt is judged by the recorded history."""
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue, start_executor=False) as (h, settings):
        await h.set_mode(KillSwitchMode.RUNNING)
        waited = SignalReceivedV1(signal_id="waited-1", token_name="main", symbol=BTC, action="buy", qty=Decimal("0.01"),
                                  received_at=utcnow())
        await h.set_mode(KillSwitchMode.HALTED)
        await h.set_mode(KillSwitchMode.RUNNING)
        await h.publisher.publish(waited, exchange=messaging.SIGNALS_EXCHANGE, message_id=waited.signal_id)
        async with build(settings) as executor, consuming(executor):
            document = await h.settled(waited)
        assert (document["status"], document["mode"]) == ("skipped", "halted"), document
        assert await h.venue_orders() == []


async def test_a_redelivered_signal_is_not_placed_twice(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        signal = await h.send(qty=Decimal("0.01"))
        await h.publisher.publish(signal, exchange=messaging.SIGNALS_EXCHANGE, message_id=signal.signal_id)
        marker = await h.send(qty=Decimal("0.02"))  # handled after both copies, in order
        await h.settled(marker)
        assert len(await h.venue_orders()) == 2
        assert await mongo_db.orders.count_documents({"signal_id": signal.signal_id}) == 1
        assert (await h.position())["contracts"] == pytest.approx(0.03)


async def test_while_halted_signals_are_skipped_and_never_executed_later(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue) as (h, _):
        await h.set_mode(KillSwitchMode.HALTED)
        skipped = await h.send(qty=Decimal("0.01"))
        document = await h.settled(skipped)
        assert document["status"] == "skipped" and document["mode"] == "halted"
        await h.set_mode(KillSwitchMode.RUNNING)
        await wait_for(lambda: _mode_is(h, KillSwitchMode.RUNNING), what="running")
        placed = await h.send(qty=Decimal("0.02"))
        assert (await h.settled(placed))["status"] == "placed"
        orders = await h.venue_orders()
        assert [o["amount"] for o in orders] == [0.02]
        assert (await h.signal_status(skipped.signal_id, "skipped")) is not None
        assert await events_of(h, "SignalSkippedV1", skipped.signal_id)
        # A redelivery of the skipped signal while running must not execute it either.
        await h.publisher.publish(skipped, exchange=messaging.SIGNALS_EXCHANGE, message_id=skipped.signal_id)
        marker = await h.send(qty=Decimal("0.03"))  # handled after the redelivery, in order
        assert (await h.settled(marker))["status"] == "placed"
        assert (await h.signal_status(skipped.signal_id, "skipped")) is not None
        assert sorted(o["amount"] for o in await h.venue_orders()) == [0.02, 0.03]
        assert await mongo_db.orders.count_documents({"signal_id": skipped.signal_id}) == 0


async def _mode_is(h: Harness, mode: KillSwitchMode) -> bool:
    return h.executor.deps.view.mode is mode


async def test_entries_off_lets_closes_through_and_refuses_opens(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        await h.settled(await h.send(qty=Decimal("0.05")))
        await h.set_mode(KillSwitchMode.ENTRIES_OFF)
        await wait_for(lambda: _mode_is(h, KillSwitchMode.ENTRIES_OFF), what="entries_off")
        refused = await h.send(qty=Decimal("0.01"))
        assert (await h.settled(refused))["status"] == "skipped"
        partial = await h.send(action="close_long", qty=Decimal("0.02"))
        assert (await h.settled(partial))["status"] == "placed"
        assert (await h.position())["contracts"] == pytest.approx(0.03)


async def test_no_signal_is_consumed_before_the_kill_switch_state_is_known(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue) as (h, _):
        waiting = await h.send(qty=Decimal("0.01"))
        await wait_for(lambda: _exchange_ready(h), what="the executor to reach the venue")
        async with TestClient(TestServer(create_app(h.executor, h.consumer))) as client:
            response = await client.get("/readyz")
            body = await response.json()
            assert response.status == 503 and body["killswitch"] == {"known": False} and body["consuming"] is False
            assert not h.consumer.consuming
            assert await mongo_db.signals.find_one({"_id": waiting.signal_id}) is None
            await h.set_mode(KillSwitchMode.RUNNING)
            assert (await h.settled(waiting))["status"] == "placed"
            response = await client.get("/readyz")
            assert response.status == 200 and (await response.json())["killswitch"]["mode"] == "running"


async def _exchange_ready(h: Harness) -> bool:
    return h.executor.exchange_ready.is_set()


async def test_a_stale_signal_is_expired_not_executed(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        stale = await h.send(qty=Decimal("0.01"), alert_time=utcnow() - timedelta(seconds=90), max_lag_s=60)
        document = await h.settled(stale)
        assert document["status"] == "expired"
        assert await h.venue_orders() == []
        [expired] = await wait_for(lambda: events_of(h, "SignalExpiredV1", stale.signal_id), what="SignalExpiredV1")
        assert expired.age_s >= 90


async def test_an_expired_signal_replayed_by_an_operator_is_placed_once(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    from services.control.handlers import ControlDeps, replay_signal

    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        stale = await h.send(qty=Decimal("0.01"), alert_time=utcnow() - timedelta(seconds=90), max_lag_s=60)
        assert (await h.settled(stale))["status"] == "expired"
        control = ControlDeps(db=mongo_db, publisher=h.publisher)
        # The control service's record of the switch (the harness publishes its states to the stream directly).
        await mongo_db.control_history.insert_one(h.executor.deps.view.state.model_dump(mode="python"))
        replay = await replay_signal(control, stale.signal_id, actor="test", reason="BingX was down")
        document = await h.settled(replay)
        assert document["status"] == "placed" and document["signal"]["replay_of"] == stale.signal_id
        # The answer was lost, say, and the marker undone: a second replay is the same signal, not a second order.
        await mongo_db.signals.update_one({"_id": stale.signal_id}, {"$unset": {"replayed_as": ""}})
        await replay_signal(control, stale.signal_id, actor="test", reason="again")
        # A delivery of a signal already done tells its outcome again (same message id, which the notifier drops).
        async def told_twice() -> bool:
            return len(await events_of(h, "OrderPlacedV1", replay.signal_id)) >= 2

        await wait_for(told_twice, what="the second replay to be handled")
        assert len(await h.venue_orders()) == 1
        assert await mongo_db.orders.count_documents({"signal_id": replay.signal_id}) == 1


async def test_after_a_crash_mid_order_the_venue_is_asked_before_sending_again(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue, start_executor=False) as (h, settings):
        signal = SignalReceivedV1(signal_id="crashed-1", token_name="main", symbol=BTC, action="buy", qty=Decimal("0.01"), received_at=utcnow())
        client_id = domain.client_order_id(signal.signal_id)
        # What a crash right after sending leaves behind: the order at the venue, `submitting` in Mongo.
        await h.ccxt.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": client_id})
        await mongo_db.signals.insert_one({"_id": signal.signal_id, "status": "submitting", "client_order_id": client_id,
                                           "signal": signal.model_dump(mode="python"), "received_at": signal.received_at, "attempts": 1})
        await h.set_mode(KillSwitchMode.RUNNING)
        await h.publisher.publish(signal, exchange=messaging.SIGNALS_EXCHANGE, message_id=signal.signal_id)
        async with build(settings) as executor, consuming(executor):
            document = await h.settled(signal)
        assert document["status"] == "placed"
        assert len(await h.venue_orders()) == 1
        assert (await h.position())["contracts"] == 0.01
        assert await mongo_db.orders.count_documents({"signal_id": "crashed-1"}) == 1


async def test_closing_never_opens_the_other_side(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        nothing = await h.send(action="close_long")
        document = await h.settled(nothing)
        assert document["status"] == "skipped" and document["reason"] == "no long position to close"
        await h.settled(await h.send(qty=Decimal("0.01")))
        close = await h.send(action="close", qty=Decimal("5"))
        assert (await h.settled(close))["status"] == "placed"
        assert await h.position() is None


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"qty": Decimal("100")}, "Insufficient margin"),
        ({"qty": Decimal("0.00001")}, "rounds to zero"),
        ({"symbol": "NOPE/USDT:USDT", "qty": Decimal("1")}, "not a perpetual market"),
        ({"qty": Decimal("0.01"), "sl": Decimal("61000")}, "the stop-loss 61000 must be below the price 60000 for a long"),
        ({"action": "sell", "qty": Decimal("0.01"), "tp_pct": Decimal("2"), "sl": Decimal("59000")}, "must be above the price"),
        ({"qty": Decimal("0.01"), "tp": Decimal("59000")}, "the take-profit 59000 must be above the price 60000"),
        ({"qty": Decimal("0.01"), "leverage": 500}, "BingX code"),  # over the market's maximum: BingX's own words
        ({"qty": Decimal("0.01"), "order_type": "limit"}, "a limit order needs a positive price"),
    ],
)
async def test_an_order_that_cannot_be_placed_fails_with_the_reason(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue, fields, reason):
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        signal = await h.send(**fields)
        document = await h.settled(signal)
        assert document["status"] == "failed" and reason in document["reason"], document
        [failed] = await wait_for(lambda: events_of(h, "OrderFailedV1", signal.signal_id), what="OrderFailedV1")
        assert reason in failed.reason
        assert await h.position() is None


async def test_an_id_reused_by_a_different_alert_is_reported_not_silently_dropped(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        first = await h.send(signal_id="Long", qty=Decimal("0.01"))
        await h.settled(first)
        await h.send(signal_id="Long", qty=Decimal("0.02"))  # e.g. {{strategy.order.id}} repeating

        async def conflict() -> list:
            return [e for e in await events_of(h, "OrderFailedV1", "Long") if e.error_type == "DuplicateSignalId"]

        [reported] = await wait_for(conflict, what="the conflict to be reported")
        assert "already used by a different alert" in reported.reason
        assert await mongo_db.signal_conflicts.count_documents({"signal_id": "Long"}) == 1
        assert [o["amount"] for o in await h.venue_orders()] == [0.01]


async def test_a_batch_executes_in_order_and_once_even_when_redelivered(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    """The ingress commits alerts that arrive together as one SignalBatchV1 (services/ingress/durable.py)."""
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)

        def signal(n: int, **fields) -> SignalReceivedV1:
            return SignalReceivedV1(**{"signal_id": f"batch-{uuid.uuid4().hex[:6]}-{n}", "token_name": "main", "symbol": BTC,
                                       "action": "buy", "received_at": utcnow(), **fields})

        # An open, a close and an open again: only in this order does the account end long 0.03.
        signals = (signal(0, qty=Decimal("0.01")), signal(1, action="close_long"), signal(2, qty=Decimal("0.03")))
        batch = SignalBatchV1(signals=signals)
        await h.publisher.publish(batch, exchange=messaging.SIGNALS_EXCHANGE, message_id="batch-1")
        for s in signals:
            assert (await h.settled(s))["status"] == "placed"
        assert [(o["side"], o["amount"]) for o in await h.venue_orders()] == [("buy", 0.01), ("sell", 0.01), ("buy", 0.03)]
        assert (await h.position())["contracts"] == pytest.approx(0.03)

        await h.publisher.publish(batch, exchange=messaging.SIGNALS_EXCHANGE, message_id="batch-1")  # redelivered
        marker = await h.send(qty=Decimal("0.02"))
        await h.settled(marker)
        assert len(await h.venue_orders()) == 4
        assert (await h.position())["contracts"] == pytest.approx(0.05)


async def test_a_resend_named_differently_by_another_ingress_is_executed_once(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    """An alert without an id, answered 503 by one ingress replica and resent to another, arrives under two ids."""
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        first_seen = utcnow()
        resend = {"resend_key": "f" * 32, "resend_window_s": 120.0, "qty": Decimal("0.01")}
        first = await h.send(signal_id="h-fff-1", received_at=first_seen, **resend)
        again = await h.send(signal_id="h-fff-2", received_at=first_seen + timedelta(seconds=5), **resend)
        assert (await h.settled(first))["status"] == "placed"
        skipped = await h.settled(again)
        assert skipped["status"] == "skipped" and skipped["resend_of"] == "h-fff-1", skipped
        assert "a resend of alert h-fff-1" in skipped["reason"]
        [event] = await wait_for(lambda: events_of(h, "SignalSkippedV1", "h-fff-2"), what="SignalSkippedV1")
        assert "not executed twice" in event.reason

        # The same text firing again after the window is a new alert, and so is another alert in the window.
        later = await h.send(signal_id="h-fff-3", received_at=first_seen + timedelta(seconds=121), **resend)
        other = await h.send(signal_id="h-eee-1", received_at=first_seen + timedelta(seconds=5),
                             **{**resend, "resend_key": "e" * 32})
        assert (await h.settled(later))["status"] == "placed"
        assert (await h.settled(other))["status"] == "placed"
        assert [o["amount"] for o in await h.venue_orders()] == [0.01, 0.01, 0.01]


async def open_orders(h: Harness) -> dict[str, dict]:
    """The venue's open orders by BingX's own type (LIMIT, STOP_MARKET, TAKE_PROFIT_MARKET)."""
    return {o["info"]["type"]: o for o in await h.ccxt.fetch_open_orders(BTC)}


async def test_leverage_and_margin_mode_are_set_before_the_entry(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        signal = await h.send(qty=Decimal("0.01"), leverage=20, margin_mode="isolated")
        assert (await h.settled(signal))["status"] == "placed"
        leverage = await h.ccxt.fetch_leverage(BTC)
        assert (leverage["longLeverage"], leverage["shortLeverage"]) == (20, 20)  # one-way mode: BOTH
        assert (await h.ccxt.fetch_margin_mode(BTC))["marginMode"] == "isolated"
        position = await h.position()
        assert position["leverage"] == 20 and position["marginMode"] == "isolated"

        # Sized by percent without a leverage in the alert: the venue's leverage (20x) applies.
        free = Decimal(str((await h.ccxt.fetch_balance())["USDT"]["free"]))
        more = await h.send(percent=Decimal("10"))
        assert (await h.settled(more))["status"] == "placed"
        [order] = await mongo_db.orders.find({"signal_id": more.signal_id}).to_list(None)
        expected = (free * Decimal("0.10") * 20 / Decimal("60000")).quantize(Decimal("0.0001"), rounding="ROUND_DOWN")
        assert order["amount"] == expected


async def test_an_entry_carries_its_stop_loss_and_take_profit_and_the_stop_fires(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    from tests.integration.test_bingx_sim import admin

    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        signal = await h.send(qty=Decimal("0.01"), sl=Decimal("58000"), tp=Decimal("63000"))
        assert (await h.settled(signal))["status"] == "placed"
        orders = await open_orders(h)
        assert orders["STOP_MARKET"]["stopLossPrice"] == 58000 and orders["TAKE_PROFIT_MARKET"]["takeProfitPrice"] == 63000
        [record] = await mongo_db.orders.find({"signal_id": signal.signal_id}).to_list(None)
        assert (record["stop_loss"], record["take_profit"]) == (Decimal("58000"), Decimal("63000"))
        [placed] = await wait_for(lambda: events_of(h, "OrderPlacedV1", signal.signal_id), what="OrderPlacedV1")
        assert (placed.stop_loss, placed.take_profit) == (Decimal("58000"), Decimal("63000"))

        await admin(h.base_url, "POST", "/_sim/prices", {"BTC-USDT": "57900"})
        assert await h.position() is None  # the stop fired at the venue, without us


async def test_percent_protection_is_measured_from_the_price_of_the_entry(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        signal = await h.send(action="short", qty=Decimal("0.01"), sl_pct=Decimal("2"), tp_pct=Decimal("5"))
        assert (await h.settled(signal))["status"] == "placed"
        orders = await open_orders(h)
        assert orders["STOP_MARKET"]["stopLossPrice"] == 61200 and orders["TAKE_PROFIT_MARKET"]["takeProfitPrice"] == 57000
        assert (await h.position())["side"] == "short"


async def test_a_limit_entry_rests_until_the_price_comes_to_it(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    from tests.integration.test_bingx_sim import admin

    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        signal = await h.send(order_type="limit", price=Decimal("59000.04"), usdt=Decimal("590"), sl_pct=Decimal("1"))
        assert (await h.settled(signal))["status"] == "placed"
        [record] = await mongo_db.orders.find({"signal_id": signal.signal_id}).to_list(None)
        assert record["type"] == "limit" and record["price"] == Decimal("59000") and record["amount"] == Decimal("0.01")
        assert record["stop_loss"] == Decimal("58410")  # 1 % under the limit price, where it fills
        assert record["status"] == "open" and await h.position() is None
        assert (await open_orders(h))["LIMIT"]["price"] == 59000

        await admin(h.base_url, "POST", "/_sim/prices", {"BTC-USDT": "58990"})
        position = await wait_for(h.position, what="the limit order to fill")
        assert position["side"] == "long" and position["contracts"] == 0.01
        assert (await open_orders(h))["STOP_MARKET"]["stopLossPrice"] == 58410


async def test_in_hedge_mode_each_side_has_its_own_leverage_and_closes_touch_only_their_side(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    await venue[1].set_position_mode(True, BTC)  # before the executor starts: it learns the mode at start
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue) as (h, _):
        await asyncio.wait_for(h.executor.exchange_ready.wait(), timeout=10)
        assert h.executor.deps.exchange.hedged
        await h.set_mode(KillSwitchMode.RUNNING)
        long_ = await h.send(qty=Decimal("0.02"), leverage=10, sl_pct=Decimal("10"))
        short = await h.send(action="short", qty=Decimal("0.01"), leverage=3)
        assert (await h.settled(long_))["status"] == (await h.settled(short))["status"] == "placed"
        leverage = await h.ccxt.fetch_leverage(BTC)
        assert (leverage["longLeverage"], leverage["shortLeverage"]) == (10, 3)
        sides = {p["side"]: p["contracts"] for p in await h.ccxt.fetch_positions([BTC]) if p["contracts"]}
        assert sides == {"long": 0.02, "short": 0.01}

        close = await h.send(action="close_long", qty=Decimal("5"))  # more than held: closes the long, opens nothing
        assert (await h.settled(close))["status"] == "placed"
        sides = {p["side"]: p["contracts"] for p in await h.ccxt.fetch_positions([BTC]) if p["contracts"]}
        assert sides == {"short": 0.01}


async def trips(h: Harness) -> list[Message]:
    return [e for e in h.events if e.TYPE == "KillSwitchTripV1"]


async def inject(h: Harness, **fault) -> None:
    from tests.integration.test_bingx_sim import admin

    status, body = await admin(h.base_url, "POST", "/_sim/faults", fault)
    assert status == 200, body


async def test_a_refused_api_key_halts_trading_at_once_and_asks_the_control_service_to_halt(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        await inject(h, kind="error", code=100413, msg="Incorrect apiKey", path="/openApi/swap/v2/trade/order", method="POST", count=1)
        revoked = await h.send(qty=Decimal("0.01"))
        document = await h.settled(revoked)
        assert document["status"] == "failed" and document["error_type"] == "AuthenticationError", document
        [trip] = await wait_for(lambda: trips(h), what="the trip")
        assert (trip.mode, trip.severity, trip.actor, trip.signal_id) == (KillSwitchMode.HALTED, "SEV1", "executor", revoked.signal_id)
        assert "may be revoked or leaked" in trip.reason
        metrics = h.executor.registry.get_sample_value("tvtb_alerts_total", {"severity": "SEV1", "kind": "kill_switch_tripped"})
        assert metrics == 1

        # The control service has not answered (there is none here): this executor stops all the same.
        after = await h.send(qty=Decimal("0.01"))
        skipped = await h.settled(after)
        assert skipped["status"] == "skipped" and "tripped by the executor" in skipped["reason"], skipped
        assert await h.position() is None

        await h.set_mode(KillSwitchMode.RUNNING)  # someone looked and decided after the trip
        resumed = await h.send(qty=Decimal("0.01"))
        assert (await h.settled(resumed))["status"] == "placed"


async def test_the_venue_failing_again_and_again_turns_entries_off(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue, executor_max_consecutive_failures=2) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        await inject(h, kind="http", status=503, body="busy", path="/openApi/swap/v2/quote/ticker", count=2)
        signal = await h.send(qty=Decimal("0.01"))
        # Two failures trip the breaker; the redelivered signal opens a position, so it is skipped, not placed.
        document = await h.settled(signal)
        assert document["status"] == "skipped" and "entries are off" in document["reason"], document
        [trip] = await wait_for(lambda: trips(h), what="the trip")
        assert (trip.mode, trip.severity) == (KillSwitchMode.ENTRIES_OFF, "SEV2") and "2 times in a row" in trip.reason
        assert await h.position() is None


async def test_flat_cancels_the_symbols_orders_and_closes_every_side(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        resting = await h.send(order_type="limit", price=Decimal("50000"), qty=Decimal("0.01"))
        nothing = await h.send(action="flat")
        assert (await h.settled(resting))["status"] == "placed"
        skipped = await h.settled(nothing)
        assert skipped["status"] == "skipped" and skipped["reason"] == "no position to close; its open orders were cancelled"
        assert await open_orders(h) == {}

        entry = await h.send(qty=Decimal("0.02"), sl=Decimal("55000"), tp=Decimal("65000"))
        resting = await h.send(order_type="limit", price=Decimal("50000"), qty=Decimal("0.01"))
        for s in (entry, resting):
            assert (await h.settled(s))["status"] == "placed"
        assert set(await open_orders(h)) == {"STOP_MARKET", "TAKE_PROFIT_MARKET", "LIMIT"}
        flat = await h.send(action="flat")
        assert (await h.settled(flat))["status"] == "placed"
        assert await h.position() is None and await open_orders(h) == {}


async def test_reverse_closes_then_opens_the_other_side(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        nothing = await h.send(action="reverse")
        assert (await h.settled(nothing))["reason"] == "no position to reverse"
        await h.settled(await h.send(qty=Decimal("0.02")))

        reverse = await h.send(action="reverse")  # no size: the size it closes
        document = await h.settled(reverse)
        assert document["status"] == "placed" and len(document["order_ids"]) == 2, document
        position = await h.position()
        assert (position["side"], position["contracts"]) == ("short", 0.02)

        back = await h.send(action="reverse", qty=Decimal("0.01"))
        assert (await h.settled(back))["status"] == "placed"
        position = await h.position()
        assert (position["side"], position["contracts"]) == ("long", 0.01)
        orders = [(o["side"], o["amount"], o["reduceOnly"]) for o in await h.venue_orders()]
        assert orders[1:] == [("sell", 0.02, True), ("sell", 0.02, False), ("buy", 0.02, True), ("buy", 0.01, False)]
        legs = await mongo_db.orders.find({"signal_id": back.signal_id}).sort("leg", 1).to_list(None)
        assert [(o["leg"], o["side"], o["reduce_only"]) for o in legs] == [(0, "buy", True), (1, "buy", False)]

        async def both_legs_told() -> list | None:
            found = await events_of(h, "OrderPlacedV1", back.signal_id)
            return found if len(found) == 2 else None

        assert [e.reduce_only for e in await wait_for(both_legs_told, what="both legs told")] == [True, False]


async def test_reverse_in_hedge_mode_ends_on_the_other_side_only(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    await venue[1].set_position_mode(True, BTC)
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        await h.settled(await h.send(qty=Decimal("0.02")))
        assert (await h.settled(await h.send(action="reverse")))["status"] == "placed"
        sides = {p["side"]: p["contracts"] for p in await h.ccxt.fetch_positions([BTC]) if p["contracts"]}
        assert sides == {"short": 0.02}


async def test_after_a_crash_between_the_legs_of_a_reverse_the_first_is_found_and_only_the_second_sent(
        amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue, start_executor=False) as (h, settings):
        await h.ccxt.create_order(BTC, "market", "buy", 0.02)
        signal = SignalReceivedV1(signal_id="crashed-reverse", token_name="main", symbol=BTC, action="reverse", received_at=utcnow())
        legs = [{"side": "sell", "amount": Decimal("0.02"), "reduce_only": True, "price": None, "stop_loss": None, "take_profit": None,
                 "client_order_id": domain.client_order_id(signal.signal_id, n), "order_id": None} for n in (0, 1)]
        legs[1]["reduce_only"] = False
        # What a crash right after sending the close leaves: it at the venue, both legs `submitting` in Mongo.
        await h.ccxt.create_order(BTC, "market", "sell", 0.02, None, {"clientOrderId": legs[0]["client_order_id"], "reduceOnly": True})
        await mongo_db.signals.insert_one({"_id": signal.signal_id, "status": "submitting", "legs": legs,
                                           "signal": signal.model_dump(mode="python"), "received_at": signal.received_at, "attempts": 1})
        await h.set_mode(KillSwitchMode.RUNNING)
        await h.publisher.publish(signal, exchange=messaging.SIGNALS_EXCHANGE, message_id=signal.signal_id)
        async with build(settings) as executor, consuming(executor):
            document = await h.settled(signal)
        assert document["status"] == "placed"
        assert [(o["side"], o["amount"]) for o in await h.venue_orders()] == [("buy", 0.02), ("sell", 0.02), ("sell", 0.02)]
        position = await h.position()
        assert (position["side"], position["contracts"]) == ("short", 0.02)
        assert await mongo_db.orders.count_documents({"signal_id": signal.signal_id}) == 2


async def test_risk_limits_refuse_entries_with_the_limit_broken_and_let_closes_through(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    limits = {"risk_max_leverage": 10, "risk_max_notional_usdt": Decimal("1000"), "risk_max_orders_per_minute": 3}
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue, **limits) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)

        async def outcome(**fields) -> dict:
            return await h.settled(await h.send(**fields))

        refused = await outcome(qty=Decimal("0.001"), leverage=20)
        assert refused["status"] == "failed" and "leverage 20x is over the limit of 10x" in refused["reason"], refused
        assert (await h.ccxt.fetch_leverage(BTC))["longLeverage"] == 5  # nothing was changed at the venue

        assert (await outcome(qty=Decimal("0.01")))["status"] == "placed"  # 600 USDT
        refused = await outcome(qty=Decimal("0.01"), leverage=7)  # would be 1200 USDT
        assert refused["status"] == "failed" and "over the limit of 1000 USDT" in refused["reason"], refused
        assert (await h.ccxt.fetch_leverage(BTC))["longLeverage"] == 5  # a refused entry changes nothing at the venue
        assert (await outcome(qty=Decimal("0.005")))["status"] == "placed"  # 900 USDT
        assert (await outcome(action="short", symbol="ETH/USDT:USDT", qty=Decimal("0.1")))["status"] == "placed"
        refused = await outcome(action="short", symbol="ETH/USDT:USDT", qty=Decimal("0.1"))  # a fourth entry this minute
        assert refused["status"] == "failed" and "3 opening orders in the last minute" in refused["reason"], refused
        assert (await outcome(action="close"))["status"] == "placed"  # closes are never refused by a limit
        assert await h.position() is None


async def test_entries_of_several_symbols_at_once_never_go_over_the_order_rate_limit(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    # The symbols run side by side: each plan would count the same placed orders before any of theirs was recorded.
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue, risk_max_orders_per_minute=2) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        sizes = {BTC: Decimal("0.001"), "ETH/USDT:USDT": Decimal("0.01"), "SOL/USDT:USDT": Decimal("0.1")}
        signals = [await h.send(symbol=symbol, qty=qty) for _ in range(3) for symbol, qty in sizes.items()]
        outcomes = [await h.settled(signal) for signal in signals]
        placed = [o for o in outcomes if o["status"] == "placed"]
        refused = [o for o in outcomes if o["status"] == "failed"]
        assert len(placed) == 2 and len(refused) == 7, [(o["symbol"], o["status"], o.get("reason")) for o in outcomes]
        assert all("2 opening orders in the last minute" in o["reason"] for o in refused), refused
        assert await mongo_db.orders.count_documents({"reduce_only": False}) == 2


async def test_a_signal_planned_twice_takes_one_order_slot(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue, risk_max_orders_per_minute=1) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        # A leverage to change is planned once ahead of the claim (and put back), then again after it.
        entry = await h.settled(await h.send(qty=Decimal("0.001"), leverage=7))
        assert entry["status"] == "placed", entry
        assert (await h.ccxt.fetch_leverage(BTC))["longLeverage"] == 7
        second = await h.settled(await h.send(qty=Decimal("0.001")))
        assert second["status"] == "failed" and "1 opening order in the last minute: the limit is 1" in second["reason"], second


async def test_a_late_delivery_of_a_placed_entry_does_not_use_up_an_order_slot(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    from services.executor.risk import ORDER_SLOTS

    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue, risk_max_orders_per_minute=1) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        first = await h.send(qty=Decimal("0.001"))
        assert (await h.settled(first))["status"] == "placed"
        long_ago = utcnow() - timedelta(minutes=2)  # a minute and more went by: its slot is free
        await mongo_db[ORDER_SLOTS].update_many({}, {"$set": {"taken_at": long_ago, "until": long_ago + timedelta(minutes=1)}})
        # Delivered again (a crash before the ack, the shard moved): planned ahead of the claim, which finds it done.
        await h.publisher.publish(first, exchange=messaging.SIGNALS_EXCHANGE, message_id=first.signal_id)

        async def told_twice() -> bool:
            return len(await events_of(h, "OrderPlacedV1", first.signal_id)) >= 2

        await wait_for(told_twice, what="the late delivery to be answered")
        second = await h.settled(await h.send(qty=Decimal("0.001")))
        assert second["status"] == "placed", second  # the slot the late delivery's plan took was given back
        assert len(await h.venue_orders()) == 2


ORDER_POST = {"path": "/openApi/swap/v2/trade/order", "method": "POST"}


@pytest.mark.parametrize("faults", [
    # BingX away for the entry's price.
    [{"kind": "http", "status": 503, "body": "busy", "path": "/openApi/swap/v2/quote/ticker"}],
    # Orders failing, slowly, while BingX answers the rest: the entry's own look-up of its order is answered.
    [{"kind": "latency", "ms": 500, **ORDER_POST}, {"kind": "http", "status": 503, "body": "busy", **ORDER_POST}],
], ids=["prices", "orders"])
async def test_signals_that_ask_nothing_of_bingx_do_not_end_its_failures_in_a_row(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue, faults):
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue, executor_max_consecutive_failures=2) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        for fault in faults:
            await inject(h, seconds=1.5, **fault)
        entry = await h.send(qty=Decimal("0.01"))
        # Meanwhile, on another symbol, alerts too old to run, one after another as each is recorded: each goes
        # through without a word to BingX. That BingX was not asked says nothing of whether it is back.
        ends = time.monotonic() + 1.5
        while time.monotonic() < ends:
            await h.settled(await h.send(symbol="ETH/USDT:USDT", qty=Decimal("0.1"),
                                         alert_time=utcnow() - timedelta(seconds=90), max_lag_s=60))
        # Skipped once the order it sent last can no longer land at BingX (REQUEST_MAY_LAND_S after it was sent).
        document = await wait_for(lambda: h.signal_status(entry.signal_id, "placed", "failed", "skipped", "expired"),
                                  timeout=25, what="the entry to settle")
        assert document["status"] == "skipped" and "entries are off" in document["reason"], document
        [trip] = await wait_for(lambda: trips(h), what="the trip")
        assert "2 times in a row" in trip.reason


async def test_an_order_sent_again_after_its_slot_ran_out_is_sent_under_a_new_one(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    from services.executor.domain import OrderPlan
    from services.executor.risk import ORDER_SLOTS

    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue, start_executor=False,
                       risk_max_orders_per_minute=1) as (h, settings):
        long_ago = utcnow() - timedelta(seconds=90)
        signal = SignalReceivedV1(signal_id="resent-1", token_name="main", symbol=BTC, action="buy", qty=Decimal("0.01"),
                                  received_at=long_ago, max_lag_s=300)
        client_id = domain.client_order_id(signal.signal_id)
        leg = {**dataclasses.asdict(OrderPlan(side="buy", amount=Decimal("0.01"), reduce_only=False)),
               "client_order_id": client_id, "order_id": None}
        # An attempt 90 s ago stored its order and sent it, which never reached BingX; its slot has run out since.
        await mongo_db.signals.insert_one({"_id": signal.signal_id, "status": "submitting", "client_order_id": client_id,
                                           "legs": [leg], "sent_at": long_ago, "claimed_at": long_ago, "attempts": 1,
                                           "signal": signal.model_dump(mode="python"), "received_at": long_ago})
        await h.set_mode(KillSwitchMode.RUNNING)
        await h.publisher.publish(signal, exchange=messaging.SIGNALS_EXCHANGE, message_id=signal.signal_id)
        async with build(settings) as executor, consuming(executor):
            assert (await h.settled(signal))["status"] == "placed"
            assert await mongo_db[ORDER_SLOTS].count_documents({"holder": signal.signal_id, "until": {"$gt": utcnow()}}) == 1
            other = await h.settled(await h.send(qty=Decimal("0.001")))
            assert other["status"] == "failed" and "1 opening order in the last minute" in other["reason"], other
        assert len(await h.venue_orders()) == 1


async def test_one_outage_met_by_several_symbols_at_once_counts_as_one_failure(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue, executor_max_consecutive_failures=2) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        # The three prices are asked for together and fail together, slowly enough that none is asked after a failure.
        ticker = "/openApi/swap/v2/quote/ticker"
        await inject(h, kind="latency", ms=1000, path=ticker, count=3)
        await inject(h, kind="http", status=503, body="busy", path=ticker, count=3)
        sizes = {BTC: Decimal("0.001"), "ETH/USDT:USDT": Decimal("0.01"), "SOL/USDT:USDT": Decimal("0.1")}
        signals = [await h.send(symbol=symbol, qty=qty) for symbol, qty in sizes.items()]
        outcomes = [await h.settled(signal) for signal in signals]
        assert [o["status"] for o in outcomes] == ["placed"] * 3, outcomes  # tried again, not turned away by a trip
        assert await trips(h) == []
        from tests.integration.test_bingx_sim import admin

        _, body = await admin(h.base_url, "GET", "/_sim/faults")
        assert body["faults"] == []  # all three were met: the venue did fail them


async def test_a_signal_handled_already_and_delivered_again_while_the_venue_is_away_is_answered_at_once(
        amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue, executor_max_consecutive_failures=1) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        signal = await h.send(qty=Decimal("0.01"))
        assert (await h.settled(signal))["status"] == "placed"
        # Its plan is made before the claim finds it done: the venue failing that plan must not hold it up or count.
        await inject(h, kind="http", status=503, body="busy", path="/openApi/swap/v2/quote/ticker", count=1)
        await h.publisher.publish(signal, exchange=messaging.SIGNALS_EXCHANGE, message_id=signal.signal_id)

        async def told_twice() -> bool:
            return len(await events_of(h, "OrderPlacedV1", signal.signal_id)) >= 2

        await wait_for(told_twice, what="the second delivery to be answered")
        from tests.integration.test_bingx_sim import admin

        _, body = await admin(h.base_url, "GET", "/_sim/faults")
        assert body["faults"] == []  # the plan did meet the venue away
        assert await trips(h) == []  # not counted as the venue failing a signal
        assert len(await h.venue_orders()) == 1


async def test_the_daily_loss_limit_refuses_entries_and_turns_them_off_for_everyone(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    from tests.integration.test_bingx_sim import admin

    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue, risk_daily_loss_limit_usdt=Decimal("50")) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        assert (await h.settled(await h.send(qty=Decimal("0.1"))))["status"] == "placed"
        await admin(h.base_url, "POST", "/_sim/prices", {"BTC-USDT": "59400"})  # 60 USDT down, with the fee more
        refused = await h.settled(await h.send(action="short", symbol="ETH/USDT:USDT", qty=Decimal("0.1")))
        assert refused["status"] == "failed" and "reached the limit of 50 USDT" in refused["reason"], refused
        [trip] = await wait_for(lambda: trips(h), what="the trip")
        assert (trip.mode, trip.severity) == (KillSwitchMode.ENTRIES_OFF, "SEV2")
        later = await h.settled(await h.send(qty=Decimal("0.001")))
        assert later["status"] == "skipped" and "entries are off" in later["reason"]
        assert (await h.settled(await h.send(action="close")))["status"] == "placed"
        assert await h.position() is None


async def test_a_position_that_differs_from_the_strategys_is_reported(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        agreed = await h.send(qty=Decimal("0.01"), market_position="long", market_position_size=Decimal("0.01"))
        assert (await h.settled(agreed))["status"] == "placed"
        await h.ccxt.create_order(BTC, "market", "buy", 0.01)  # a trade by hand in BingX's app
        drifted = await h.send(action="close_long", qty=Decimal("0.01"), market_position="flat", market_position_size=Decimal("0"))
        document = await h.settled(drifted)
        assert document["status"] == "placed"  # the order itself went as asked
        assert (document["drift"]["venue_long"], document["drift"]["claimed_side"]) == (Decimal("0.01"), "flat")
        [event] = await wait_for(lambda: events_of(h, "PositionDriftV1", drifted.signal_id), what="the drift event")
        assert (event.claimed_side, event.venue_long, event.venue_short) == ("flat", Decimal("0.01"), Decimal("0"))
        assert await events_of(h, "PositionDriftV1", agreed.signal_id) == []
        assert h.executor.registry.get_sample_value("tvtb_position_drift_total") == 1


async def test_the_markets_are_loaded_again_now_and_then_and_a_failed_reload_keeps_them(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue, markets_refresh_s=0.2) as (h, _):
        await asyncio.wait_for(h.executor.exchange_ready.wait(), timeout=10)
        exchange = h.executor.deps.exchange
        first = exchange.markets_loaded_at
        await inject(h, kind="http", status=503, body="down", path="/openApi/swap/v2/quote/contracts", count=2)

        async def reloaded() -> bool:
            return exchange.markets_loaded_at > first

        await wait_for(reloaded, what="the markets to be loaded again after the failures")
        await h.set_mode(KillSwitchMode.RUNNING)
        assert (await h.settled(await h.send(qty=Decimal("0.01"))))["status"] == "placed"


async def test_margin_held_by_a_resting_order_is_not_counted_as_a_loss(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue, risk_daily_loss_limit_usdt=Decimal("50")) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        resting = await h.send(order_type="limit", price=Decimal("50000"), qty=Decimal("0.1"))  # holds 1000 USDT
        assert (await h.settled(resting))["status"] == "placed"
        entry = await h.settled(await h.send(qty=Decimal("0.01")))
        assert entry["status"] == "placed", entry


async def test_a_reverse_whose_opening_order_is_refused_records_the_close_it_made(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        await h.settled(await h.send(qty=Decimal("0.01")))
        reverse = await h.settled(await h.send(action="reverse", qty=Decimal("10")))  # far beyond the margin
        assert reverse["status"] == "placed" and len(reverse["order_ids"]) == 1, reverse
        assert "1 of 2 orders placed; the rest not sent: BingX refused the next order: Insufficient margin" in reverse["reason"]
        assert await h.position() is None  # closed, and nothing opened
        assert await mongo_db.orders.count_documents({"signal_id": reverse["_id"]}) == 1


async def test_stopping_entries_cancels_resting_limit_entries_and_keeps_protection(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    from tests.integration.test_bingx_sim import admin

    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        protected = await h.send(qty=Decimal("0.01"), sl=Decimal("45000"))
        resting = await h.send(order_type="limit", price=Decimal("50000"), qty=Decimal("0.01"))
        for s in (protected, resting):
            assert (await h.settled(s))["status"] == "placed"
        assert set(await open_orders(h)) == {"STOP_MARKET", "LIMIT"}

        await h.set_mode(KillSwitchMode.ENTRIES_OFF)

        async def only_protection_left() -> bool:
            return set(await open_orders(h)) == {"STOP_MARKET"}

        await wait_for(only_protection_left, what="the resting entry to be cancelled")
        [record] = await mongo_db.orders.find({"signal_id": resting.signal_id}).to_list(None)
        assert record["status"] == "canceled"
        await admin(h.base_url, "POST", "/_sim/prices", {"BTC-USDT": "49000"})  # where the entry would have filled
        assert (await h.position())["contracts"] == 0.01
        assert set(await open_orders(h)) == {"STOP_MARKET"}  # the protection still stands


async def test_a_resting_limit_order_that_fills_is_recorded_and_told(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    from tests.integration.test_bingx_sim import admin

    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue, fill_poll_s=0.1) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        resting = await h.send(order_type="limit", price=Decimal("59000"), qty=Decimal("0.01"))
        assert (await h.settled(resting))["status"] == "placed"
        await admin(h.base_url, "POST", "/_sim/prices", {"BTC-USDT": "58900"})
        [filled] = await wait_for(lambda: events_of(h, "OrderFilledV1", resting.signal_id), what="the fill to be told")
        assert (filled.side, filled.filled, filled.amount, filled.average, filled.status) == (
            "buy", Decimal("0.01"), Decimal("0.01"), Decimal("59000"), "closed")
        [record] = await mongo_db.orders.find({"signal_id": resting.signal_id}).to_list(None)
        assert (record["status"], record["filled"]) == ("closed", Decimal("0.01"))


async def test_per_symbol_defaults_apply_when_the_alert_says_nothing(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    defaults = {"symbol_leverage": "BTC-USDT=8,*=3", "symbol_margin_mode": "*=isolated"}
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue, **defaults) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        assert (await h.settled(await h.send(qty=Decimal("0.01"))))["status"] == "placed"
        assert (await h.ccxt.fetch_leverage(BTC))["longLeverage"] == 8
        assert (await h.ccxt.fetch_margin_mode(BTC))["marginMode"] == "isolated"
        eth = "ETH/USDT:USDT"
        assert (await h.settled(await h.send(symbol=eth, qty=Decimal("0.1"))))["status"] == "placed"
        assert (await h.ccxt.fetch_leverage(eth))["longLeverage"] == 3
        assert (await h.settled(await h.send(symbol=eth, qty=Decimal("0.1"), leverage=12)))["status"] == "placed"
        assert (await h.ccxt.fetch_leverage(eth))["longLeverage"] == 12  # the alert's own word wins


async def test_a_trip_nobody_answered_still_holds_after_the_executor_restarts(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue, start_executor=False) as (h, settings):
        await h.set_mode(KillSwitchMode.RUNNING)
        async with build(settings) as executor, consuming(executor):
            await inject(h, kind="error", code=100413, msg="Incorrect apiKey", path="/openApi/swap/v2/trade/order", method="POST", count=1)
            assert (await h.settled(await h.send(qty=Decimal("0.01"))))["status"] == "failed"
            assert await mongo_db.executor_trips.count_documents({"sent": True}) == 1
        async with build(settings) as executor, consuming(executor):  # restarted; the kill switch still says running
            held = await h.settled(await h.send(qty=Decimal("0.01")))
            assert held["status"] == "skipped" and "tripped by the executor" in held["reason"], held
            await h.set_mode(KillSwitchMode.RUNNING)  # someone looked and decided after the trip
            assert (await h.settled(await h.send(qty=Decimal("0.01"))))["status"] == "placed"
        assert await h.position() is not None


async def test_a_prefetched_price_is_used_only_while_fresh(venue, monkeypatch):
    from services.executor import exchange as exchange_module
    from services.executor.exchange import BingxExchange
    from tests.integration.test_bingx_sim import admin

    base_url, _ = venue
    exchange = BingxExchange(api_key=KEY, api_secret=SECRET, base_url=base_url, sandbox=False)
    try:
        await exchange.start()
        exchange.prefetch_price(BTC)
        await wait_for(lambda: _done(exchange._prefetched[BTC][1]), what="the prefetched price")
        await admin(base_url, "POST", "/_sim/prices", {"BTC-USDT": "61000"})
        assert await exchange.price(BTC) == Decimal("60000")  # asked ahead, taken as it came: one request, not two
        assert await exchange.price(BTC) == Decimal("61000")  # taken once: the next ask goes to the venue

        monkeypatch.setattr(exchange_module, "PREFETCH_FRESH_S", 0.0)
        exchange.prefetch_price(BTC)
        await wait_for(lambda: _done(exchange._prefetched[BTC][1]), what="the prefetched price")
        await admin(base_url, "POST", "/_sim/prices", {"BTC-USDT": "62000"})
        assert await exchange.price(BTC) == Decimal("62000")  # too old: asked again
    finally:
        await exchange.close()


async def _done(task) -> bool:
    return task.done()
