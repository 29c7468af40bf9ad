"""The executor's shard consumer on a real RabbitMQ: symbols side by side, each symbol strictly in order, through
failures, retries and a stop (shared.messaging.LaneConsumer)."""

from __future__ import annotations

import asyncio

import pytest

from shared import messaging
from shared.contracts import Action, SignalReceivedV1, utcnow
from shared.errors import TemporaryError
from shared.messaging import EXECUTOR_SHARDS, Consumer, LaneConsumer, Publisher, shard_lane
from tests.support import wait_for

QUEUE = EXECUTOR_SHARDS[0].name
BTC, ETH = "BTC/USDT:USDT", "ETH/USDT:USDT"


def make_signal(signal_id: str, symbol: str) -> SignalReceivedV1:
    return SignalReceivedV1(signal_id=signal_id, token_name="t", symbol=symbol, action=Action.BUY, received_at=utcnow())


@pytest.fixture
async def broker(amqp_url):
    connection = await messaging.connect(amqp_url, "lanes-test")
    await messaging.declare_topology(await connection.channel())
    publisher = await Publisher.open(connection)

    async def publish(*signals: SignalReceivedV1) -> None:
        for signal in signals:  # straight into one shard, with the shard key header the ingress sets
            await publisher.publish(signal, exchange="", routing_key=QUEUE, message_id=signal.signal_id)

    try:
        yield connection, publish
    finally:
        await connection.close()


def lanes(connection_channel, handler, **options) -> LaneConsumer:
    return LaneConsumer(channel=connection_channel, queue_name=QUEUE, handler=handler, prefetch=32, name="lanes",
                        lane_of=shard_lane, **options)


async def _true(value) -> bool:
    return bool(value)


async def queue_counts(connection, queue: str = QUEUE) -> int:
    channel = await connection.channel()
    try:
        return (await (await channel.get_underlay_channel()).queue_declare(queue, passive=True)).message_count
    finally:
        await channel.close()


async def test_symbols_run_side_by_side_and_each_symbol_in_order(broker):
    connection, publish = broker
    gate = asyncio.Event()
    handled: list[str] = []

    async def handle(message, raw) -> None:
        if message.signal_id == "btc-1":
            await gate.wait()  # a slow order on BTC
        handled.append(message.signal_id)

    consumer = lanes(await connection.channel(), handle)
    await consumer.start()
    try:
        await publish(make_signal("btc-1", BTC), make_signal("eth-1", ETH), make_signal("btc-2", BTC), make_signal("eth-2", ETH))
        # ETH is not held up by BTC's slow order; BTC's second waits for its first.
        await wait_for(lambda: _true(handled == ["eth-1", "eth-2"]), what="ETH's signals while BTC's first is in hand")
        assert "btc-2" not in handled
        gate.set()
        await wait_for(lambda: _true(len(handled) == 4), what="BTC's signals")
        assert handled == ["eth-1", "eth-2", "btc-1", "btc-2"]
    finally:
        gate.set()
        await consumer.stop()
    assert await queue_counts(connection) == 0


async def test_a_temporary_failure_is_retried_in_place_holding_its_symbol_only(broker, monkeypatch):
    monkeypatch.setattr(messaging, "retry_delay", lambda failures: 0.05)
    connection, publish = broker
    attempts: list[str] = []

    async def handle(message, raw) -> None:
        attempts.append(message.signal_id)
        if message.signal_id == "btc-1" and attempts.count("btc-1") < 3:
            raise TemporaryError("the venue is busy")

    consumer = lanes(await connection.channel(), handle)
    await consumer.start()
    try:
        await publish(make_signal("btc-1", BTC), make_signal("btc-2", BTC), make_signal("eth-1", ETH), make_signal("btc-3", BTC))
        await wait_for(lambda: _true(len(attempts) == 6), what="every signal handled")
    finally:
        await consumer.stop()
    btc = [signal_id for signal_id in attempts if signal_id.startswith("btc")]
    # Given back to the queue instead, btc-1 would have been overtaken by btc-2, already in hand.
    assert btc == ["btc-1", "btc-1", "btc-1", "btc-2", "btc-3"]
    assert attempts.count("eth-1") == 1
    assert await queue_counts(connection) == 0 and await queue_counts(connection, EXECUTOR_SHARDS[0].dlq) == 0


@pytest.mark.parametrize("in_hand", ["handling", "retrying"])
async def test_a_stop_gives_back_what_was_not_started_in_order(broker, monkeypatch, in_hand):
    """What a replica letting go of its shard had not started reaches the next owner in the order it came."""
    monkeypatch.setattr(messaging, "retry_delay", lambda failures: 60.0)  # a stop does not wait out a backoff
    connection, publish = broker
    gate, started = asyncio.Event(), asyncio.Event()
    handled: list[str] = []

    async def handle(message, raw) -> None:
        if message.signal_id == "btc-1":
            started.set()
            if in_hand == "retrying":
                raise TemporaryError("the venue is busy")
            await gate.wait()
        handled.append(message.signal_id)

    consumer = lanes(await connection.channel(), handle)
    await consumer.start()
    await publish(*(make_signal(f"btc-{n}", BTC) for n in range(1, 6)))
    await asyncio.wait_for(started.wait(), 10)
    await wait_for(lambda: _none_ready(connection), what="every signal in the consumer's hands")
    stopping = asyncio.create_task(consumer.stop())
    gate.set()
    await asyncio.wait_for(stopping, 10)
    assert handled == ([] if in_hand == "retrying" else ["btc-1"])

    after: list[str] = []

    async def next_owner(message, raw) -> None:
        after.append(message.signal_id)

    following = Consumer(await connection.channel(), QUEUE, next_owner)
    await following.start()
    expected = [f"btc-{n}" for n in range(1 if in_hand == "retrying" else 2, 6)]
    await wait_for(lambda: _true(len(after) == len(expected)), what="the signals given back")
    await following.stop()
    assert after == expected


async def test_a_message_failing_every_attempt_is_dead_lettered_and_its_symbol_goes_on(broker, monkeypatch):
    monkeypatch.setattr(messaging, "retry_delay", lambda failures: 0.01)
    connection, publish = broker
    handled: list[str] = []

    async def handle(message, raw) -> None:
        if message.signal_id == "btc-1":
            raise RuntimeError("a bug")
        handled.append(message.signal_id)

    consumer = lanes(await connection.channel(), handle, attempts=3)
    await consumer.start()
    try:
        await publish(make_signal("btc-1", BTC), make_signal("btc-2", BTC))
        await wait_for(lambda: _true(handled == ["btc-2"]), what="the next signal of the symbol")
    finally:
        await consumer.stop()
    await wait_for(lambda: _dead_letters(connection), what="the failing message in the dead-letter queue")


async def _none_ready(connection) -> bool:
    return await queue_counts(connection) == 0


async def _dead_letters(connection) -> bool:
    return await queue_counts(connection, EXECUTOR_SHARDS[0].dlq) == 1
