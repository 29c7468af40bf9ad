"""An upgraded broker's single signals queue (from before sharding) is retired: nothing it holds is lost or left."""

from __future__ import annotations

from decimal import Decimal

import aio_pika
import aiormq
import pytest

from shared import messaging
from shared.contracts import Action, KillSwitchMode, SignalReceivedV1, utcnow
from shared.messaging import LEGACY_SIGNALS_QUEUE, SIGNALS_EXCHANGE, Publisher, QueueSpec, retire_legacy_signals_queue
from tests.integration.test_executor import harness, venue  # noqa: F401 - venue is a fixture
from tests.integration.test_messaging import ready_count
from tests.support import drain_signals

# As the executor declared it before signals were sharded (commit ced59ad removed it).
LEGACY = QueueSpec(LEGACY_SIGNALS_QUEUE, SIGNALS_EXCHANGE, ("#",), single_active_consumer=True)


def signal(signal_id: str, symbol: str) -> SignalReceivedV1:
    return SignalReceivedV1(signal_id=signal_id, token_name="t", symbol=symbol, action=Action.BUY, qty=Decimal("0.01"),
                            received_at=utcnow())


async def declare_old_topology(channel) -> None:
    signals = await channel.declare_exchange(SIGNALS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    dlx = await channel.declare_exchange(messaging.DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
    dlq = await channel.declare_queue(LEGACY.dlq, durable=True, arguments={"x-queue-type": "quorum"})
    await dlq.bind(dlx, routing_key=LEGACY.dlq)
    queue = await channel.declare_queue(LEGACY.name, durable=True, arguments=LEGACY.arguments())
    await queue.bind(signals, routing_key="#")


async def test_the_legacy_queue_is_moved_into_the_shards_in_order_then_deleted(amqp_url):
    connection = await messaging.connect(amqp_url, "test-legacy")
    try:
        channel = await connection.channel()
        await declare_old_topology(channel)
        publisher = await Publisher.open(connection)
        # What the old executor left behind when it stopped: two BTC signals in order, one ETH, one unreadable message.
        for message in (signal("old-1", "BTC/USDT:USDT"), signal("old-2", "BTC/USDT:USDT"), signal("old-3", "ETH/USDT:USDT")):
            await publisher.publish(message, exchange=SIGNALS_EXCHANGE, message_id=message.signal_id)
        await channel.default_exchange.publish(aio_pika.Message(b"{not json", type="SignalReceivedV1"), routing_key=LEGACY.name)

        # The new version's topology, while the legacy binding is still there: a new signal lands in both.
        await messaging.declare_topology(channel)
        both = signal("new-1", "BTC/USDT:USDT")
        await publisher.publish(both, exchange=SIGNALS_EXCHANGE, message_id=both.signal_id)
        assert await ready_count(connection, LEGACY.name) == 5

        moved = await retire_legacy_signals_queue(connection, publisher, idle_s=0.5)
        assert moved == 4

        with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
            await ready_count(connection, LEGACY.name)
        assert await ready_count(connection, LEGACY.dlq) == 1  # the unreadable one, kept for an operator
        assert await retire_legacy_signals_queue(connection, publisher) is None  # nothing left to retire

        ids = [s.signal_id for s in await drain_signals(amqp_url)]
        # Every legacy signal is in the shards; BTC's in the order accepted. new-1 is there twice (its shard copy and
        # the legacy one): one signal_id, which the executor runs once.
        assert sorted(ids) == ["new-1", "new-1", "old-1", "old-2", "old-3"]
        btc = [i for i in ids if i != "old-3"]
        assert btc.index("old-1") < btc.index("old-2")
    finally:
        await connection.close()


async def test_a_broker_without_the_legacy_queue_is_left_alone(amqp_url):
    connection = await messaging.connect(amqp_url, "test-legacy")
    try:
        await messaging.declare_topology(await connection.channel())
        assert await retire_legacy_signals_queue(connection, await Publisher.open(connection)) is None
    finally:
        await connection.close()


async def test_an_executor_started_on_an_upgraded_broker_runs_what_the_legacy_queue_held(
    amqp_url, mongo_uri, mongo_db_name, mongo_db, venue
):
    connection = await messaging.connect(amqp_url, "test-legacy")
    try:
        await declare_old_topology(await connection.channel())
        left = signal("left-behind", "BTC/USDT:USDT")
        await (await Publisher.open(connection)).publish(left, exchange=SIGNALS_EXCHANGE, message_id=left.signal_id)
    finally:
        await connection.close()

    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        document = await h.settled(left)
        assert document["status"] == "placed"
        assert len(await h.venue_orders()) == 1
        with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
            await ready_count(h.connection, LEGACY.name)
