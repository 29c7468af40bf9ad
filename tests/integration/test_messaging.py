"""The shared broker layer on a real RabbitMQ: confirms, ack after the outcome, dead letters, trace context, logs."""

from __future__ import annotations

import io
import logging

import aio_pika
import orjson
from opentelemetry import trace

from shared import messaging
from shared.contracts import Action, SignalReceivedV1, utcnow
from shared.errors import PermanentError
from shared.messaging import EXECUTOR_SHARDS, SIGNALS_EXCHANGE, Consumer, Publisher
from shared.observability import JsonFormatter
from tests.support import wait_for


def make_signal(signal_id: str) -> SignalReceivedV1:
    return SignalReceivedV1(signal_id=signal_id, token_name="t", symbol="BTC/USDT:USDT", action=Action.BUY, received_at=utcnow())


async def ready_count(connection, queue: str) -> int:
    channel = await connection.channel()
    try:
        underlay = await channel.get_underlay_channel()
        declared = await underlay.queue_declare(queue, passive=True)
        return declared.message_count
    finally:
        await channel.close()


async def consume_every_shard(connection, handle) -> list[Consumer]:
    consumers = [Consumer(await connection.channel(), shard.name, handle) for shard in EXECUTOR_SHARDS]
    for consumer in consumers:
        await consumer.start()
    return consumers


async def stop(consumers: list[Consumer]) -> None:
    for consumer in consumers:
        await consumer.stop()


async def ready_in_shards(connection, *, dead_letters: bool = False) -> int:
    return sum([await ready_count(connection, shard.dlq if dead_letters else shard.name) for shard in EXECUTOR_SHARDS])


async def test_topology_is_declared_idempotently_and_consumers_see_the_trace(amqp_url):
    connection = await messaging.connect(amqp_url, "test")
    try:
        channel = await connection.channel()
        await messaging.declare_topology(channel)
        await messaging.declare_topology(channel)  # a second service starting: same arguments, no error
        publisher = await Publisher.open(connection)
        tracer = trace.get_tracer("test")
        with tracer.start_as_current_span("webhook") as span:
            sent_trace = span.get_span_context().trace_id
            await publisher.publish(make_signal("s-1"), exchange=SIGNALS_EXCHANGE, message_id="s-1")

        seen: list[tuple[str, int]] = []

        async def handle(message, raw) -> None:
            seen.append((message.signal_id, trace.get_current_span().get_span_context().trace_id))

        consumers = await consume_every_shard(connection, handle)
        await wait_for(lambda: _value(seen), what="the signal")
        await stop(consumers)
        assert seen == [("s-1", sent_trace)]  # one trace from the publisher to the consumer
        assert await ready_in_shards(connection) == 0  # acked after the handler returned
    finally:
        await connection.close()


async def _value(value):
    return value


async def test_undecodable_and_permanently_failing_messages_go_to_the_dead_letter_queue(amqp_url):
    connection = await messaging.connect(amqp_url, "test")
    try:
        channel = await connection.channel()
        await messaging.declare_topology(channel)
        signals = await channel.get_exchange(SIGNALS_EXCHANGE)
        await signals.publish(aio_pika.Message(b"{garbage", type="SignalReceivedV1"), routing_key="default.BTC-USDT")
        publisher = await Publisher.open(connection)
        await publisher.publish(make_signal("poison"), exchange=SIGNALS_EXCHANGE)
        await publisher.publish(make_signal("fine"), exchange=SIGNALS_EXCHANGE)
        handled: list[str] = []

        async def handle(message, raw) -> None:
            if message.signal_id == "poison":
                raise PermanentError("cannot ever work")
            handled.append(message.signal_id)

        consumers = await consume_every_shard(connection, handle)
        await wait_for(lambda: _value(handled), what="the good signal")
        await stop(consumers)

        async def dead_lettered() -> int:
            return await ready_in_shards(connection, dead_letters=True) == 2

        await wait_for(dead_lettered, what="two dead letters")
        assert handled == ["fine"]
    finally:
        await connection.close()


async def test_a_failing_handler_returns_the_message_and_it_is_handled_again(amqp_url):
    connection = await messaging.connect(amqp_url, "test")
    try:
        channel = await connection.channel()
        await messaging.declare_topology(channel)
        publisher = await Publisher.open(connection)
        await publisher.publish(make_signal("flaky"), exchange=SIGNALS_EXCHANGE)
        attempts: list[bool] = []

        async def handle(message, raw) -> None:
            attempts.append(raw.redelivered)
            if len(attempts) == 1:
                raise ConnectionError("the database went away for a moment")

        consumers = await consume_every_shard(connection, handle)
        await wait_for(lambda: _value(len(attempts) >= 2), what="the retry")
        await stop(consumers)
        assert attempts == [False, True]
        assert await ready_in_shards(connection, dead_letters=True) == 0
    finally:
        await connection.close()


async def test_an_unroutable_publish_is_an_error_not_a_silent_loss(amqp_url):
    connection = await messaging.connect(amqp_url, "test")
    try:
        channel = await connection.channel()
        await channel.declare_exchange("tvtb.nowhere", aio_pika.ExchangeType.TOPIC)
        publisher = await Publisher.open(connection)
        try:
            await publisher.publish(make_signal("lost"), exchange="tvtb.nowhere")
        except messaging.PublishFailed as error:
            assert "refused" in str(error) or "acknowledge" in str(error)
        else:
            raise AssertionError("an unroutable message was reported as published")
    finally:
        await connection.close()


def test_log_lines_are_json_with_trace_and_signal_ids_and_no_secret():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("ingress", secrets=["hunter2-secret", 'quo"te\\secret']))
    log = logging.getLogger("test.json")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        from shared.observability import bound_signal

        with trace.get_tracer("test").start_as_current_span("x") as span, bound_signal("sig-7"):
            log.info("token was hunter2-secret", extra={"symbol": "BTC/USDT:USDT", "other": 'x quo"te\\secret y'})
        line = orjson.loads(stream.getvalue())
    finally:
        log.removeHandler(handler)
    assert line["service"] == "ingress" and line["signal_id"] == "sig-7" and line["symbol"] == "BTC/USDT:USDT"
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x") and len(line["span_id"]) == 16
    assert line["msg"] == "token was [redacted]"
    assert line["other"] == "x [redacted] y"  # a secret that JSON would escape is still found
