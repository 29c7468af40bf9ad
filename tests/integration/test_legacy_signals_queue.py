"""An upgraded broker's single signals queue (from before sharding) is drained first: nothing lost, one symbol in order."""

from __future__ import annotations

from decimal import Decimal

import aio_pika
import aiormq

from shared import messaging
from shared.contracts import Action, KillSwitchMode, SignalReceivedV1, utcnow
from shared.messaging import LEGACY_SIGNALS_QUEUE, SIGNALS_EXCHANGE, Publisher, QueueSpec
from tests.integration.test_executor import harness
from tests.integration.test_messaging import ready_count
from tests.support import wait_for

# As the executor declared it before signals were sharded (commit ced59ad removed it).
LEGACY = QueueSpec(LEGACY_SIGNALS_QUEUE, SIGNALS_EXCHANGE, ("#",), single_active_consumer=True)
BTC = "BTC/USDT:USDT"


def signal(signal_id: str, action: Action, qty: str = "0.01") -> SignalReceivedV1:
    return SignalReceivedV1(signal_id=signal_id, token_name="t", symbol=BTC, action=action, qty=Decimal(qty), received_at=utcnow())


async def declare_old_topology(channel) -> None:
    signals = await channel.declare_exchange(SIGNALS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    dlx = await channel.declare_exchange(messaging.DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
    dlq = await channel.declare_queue(LEGACY.dlq, durable=True, arguments={"x-queue-type": "quorum"})
    await dlq.bind(dlx, routing_key=LEGACY.dlq)
    queue = await channel.declare_queue(LEGACY.name, durable=True, arguments=LEGACY.arguments())
    await queue.bind(signals, routing_key="#")


async def test_an_executor_on_an_upgraded_broker_runs_the_legacy_queue_first_in_order_and_once(
        amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):  # noqa: F811
    connection = await messaging.connect(amqp_url, "test-legacy")
    try:
        channel = await connection.channel()
        await declare_old_topology(channel)
        publisher = await Publisher.open(connection)
        # What the old executor left behind: a buy, then (another service already upgraded, so the shards are bound
        # too) a close that lands in both the legacy queue and a shard. The buy must run first, the close once.
        await publisher.publish(signal("old-buy", Action.BUY), exchange=SIGNALS_EXCHANGE, message_id="old-buy")
        await messaging.declare_topology(channel)
        await publisher.publish(signal("new-close", Action.CLOSE_LONG), exchange=SIGNALS_EXCHANGE, message_id="new-close")
        await channel.default_exchange.publish(aio_pika.Message(b"{not json", type="SignalReceivedV1"), routing_key=LEGACY.name)
        assert await ready_count(connection, LEGACY.name) == 3
    finally:
        await connection.close()

    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        buy = await h.settled(signal("old-buy", Action.BUY))
        close = await h.settled(signal("new-close", Action.CLOSE_LONG))
        assert buy["status"] == "placed" and close["status"] == "placed", (buy, close)
        orders = await h.venue_orders()
        # In order (had the close run first, it would have found nothing to close and been skipped), and once.
        assert [o["side"] for o in sorted(orders, key=lambda o: o["timestamp"])] == ["buy", "sell"]
        assert await h.position() is None
        await wait_for(lambda: _gone(h.connection, LEGACY.name), what="the drained legacy queue to be deleted")
        assert await ready_count(h.connection, LEGACY.dlq) == 1  # the unreadable one, kept for an operator


async def _gone(connection, queue: str) -> bool:
    try:
        await ready_count(connection, queue)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return True
    return False


async def test_a_broker_without_the_legacy_queue_is_left_alone(amqp_url):
    connection = await messaging.connect(amqp_url, "test-legacy")
    try:
        await messaging.declare_topology(await connection.channel())

        async def never(message, raw) -> None:
            raise AssertionError("nothing to handle")

        assert await messaging.drain_legacy_signals(connection, never) is None
    finally:
        await connection.close()
