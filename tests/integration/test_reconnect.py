"""After the broker drops a connection, consumers come back and the kill switch is re-learned before any trading."""

from __future__ import annotations

import aio_pika

from shared import messaging
from shared.contracts import Action, KillSwitchChangedV1, KillSwitchMode, SignalReceivedV1, utcnow
from shared.killswitch import KillSwitchView, stream_reader
from shared.messaging import CONTROL_STREAM, EXECUTOR_SHARDS, SIGNALS_EXCHANGE, Consumer, Publisher
from tests.support import close_connections, wait_for


def state(version: int, mode: KillSwitchMode) -> KillSwitchChangedV1:
    return KillSwitchChangedV1(version=version, mode=mode, actor="test", reason="test", changed_at=utcnow())


async def test_consumers_and_the_kill_switch_survive_a_dropped_connection(broker_vhost):
    vhost, amqp_url = broker_vhost
    service = await messaging.connect(amqp_url, "victim")
    producer = await messaging.connect(amqp_url, "producer")
    try:
        channel = await service.channel()
        await messaging.declare_topology(channel)
        publisher = await Publisher.open(producer)
        await publisher.publish(state(1, KillSwitchMode.RUNNING), exchange="", routing_key=CONTROL_STREAM)

        view = KillSwitchView()
        modes: list[KillSwitchMode | None] = []
        view.on_change(lambda s: modes.append(s.mode if s else None))
        await stream_reader(await service.channel(), view, connection=service).start()
        handled: list[str] = []

        async def handle(message, raw) -> None:
            handled.append(message.signal_id)

        for shard in EXECUTOR_SHARDS:
            await Consumer(await service.channel(), shard.name, handle).start()
        await wait_for(lambda: _ready(view.mode is KillSwitchMode.RUNNING), what="the initial state")

        assert await wait_for(lambda: _ready(close_connections(vhost, "victim")), what="the connection to close") == 1
        await wait_for(lambda: _ready(None in modes), what="the view to forget the mode")

        # While the service was away, trading was halted. After the reconnect it must know, and still consume.
        await publisher.publish(state(2, KillSwitchMode.HALTED), exchange="", routing_key=CONTROL_STREAM)
        signal = SignalReceivedV1(signal_id="after", token_name="t", symbol="BTC/USDT:USDT", action=Action.BUY, received_at=utcnow())
        await publisher.publish(signal, exchange=SIGNALS_EXCHANGE)
        await wait_for(lambda: _ready(view.mode is KillSwitchMode.HALTED), timeout=20, what="the halt after reconnecting")
        await wait_for(lambda: _ready(handled == ["after"]), timeout=20, what="the signal after reconnecting")
        # Forgotten on the drop; on reconnect confirmed (v1, if the reconnect beat the halt) and then halted.
        assert modes[:2] == [KillSwitchMode.RUNNING, None] and modes[-1] is KillSwitchMode.HALTED
        assert modes[2:-1] in ([], [KillSwitchMode.RUNNING])
    finally:
        await service.close()
        await producer.close()


async def test_an_unknown_message_on_the_stream_is_skipped_without_closing_the_connection(amqp_url):
    connection = await messaging.connect(amqp_url, "reader")
    try:
        channel = await connection.channel()
        await messaging.declare_topology(channel)
        publisher = await Publisher.open(connection)
        signal = SignalReceivedV1(signal_id="x", token_name="t", symbol="BTC/USDT:USDT", action=Action.BUY, received_at=utcnow())
        await publisher.publish(state(1, KillSwitchMode.HALTED), exchange="", routing_key=CONTROL_STREAM)
        await publisher.publish(signal, exchange="", routing_key=CONTROL_STREAM)  # not a kill-switch message
        await channel.default_exchange.publish(aio_pika.Message(b"not json", type="KillSwitchChangedV2"), routing_key=CONTROL_STREAM)
        await publisher.publish(state(2, KillSwitchMode.RUNNING), exchange="", routing_key=CONTROL_STREAM)

        view = KillSwitchView()
        reader_channel = await connection.channel()
        reader = stream_reader(reader_channel, view, connection=connection)
        reader.consume_arguments = {"x-stream-offset": "first"}
        await reader.start()
        await wait_for(lambda: _ready(view.mode is KillSwitchMode.RUNNING), what="the last state past the odd messages")
        assert not connection.is_closed and not reader_channel.is_closed
    finally:
        await connection.close()


async def _ready(value):
    return value
