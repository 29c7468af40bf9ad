"""The broker: topology as values declared idempotently, a confirmed publisher, and a consumer that acks after the outcome.

Every service declares the same topology at start, so whichever starts first creates it and no message is
published to an exchange without its queues.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
    ExchangeType,
)
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from shared.contracts import Message, UnknownMessageType, decode, encode
from shared.errors import PermanentError, TemporaryError
from shared.observability import bound_signal, extract_trace, inject_trace

log = logging.getLogger(__name__)
tracer = trace.get_tracer("tvtb.messaging")

SIGNALS_EXCHANGE = "tvtb.signals"
EVENTS_EXCHANGE = "tvtb.events"
DEAD_LETTER_EXCHANGE = "tvtb.dlx"
CONTROL_STREAM = "tvtb.control"
DELIVERY_LIMIT = 20


@dataclass(frozen=True)
class QueueSpec:
    """A quorum queue `<service>.<purpose>` with its `.dlq` twin and the bindings that feed it."""

    name: str
    exchange: str
    binding_keys: tuple[str, ...]
    single_active_consumer: bool = False
    delivery_limit: int = DELIVERY_LIMIT

    @property
    def dlq(self) -> str:
        return f"{self.name}.dlq"

    def arguments(self) -> dict:
        arguments: dict = {
            "x-queue-type": "quorum",
            "x-delivery-limit": self.delivery_limit,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": self.dlq,
            # at-least-once dead-lettering: a rejected message is not dropped on its way to the .dlq.
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
        if self.single_active_consumer:
            arguments["x-single-active-consumer"] = True
        return arguments


# Signals are sharded by their BingX symbol (the `x-shard-key` header; every `account` label trades with the one API
# key) over a consistent-hash exchange into a few queues, each with a single active consumer and prefetch 1: one
# symbol always lands in the same shard, and so runs in the order accepted, while the executor replicas share the
# shards. Changing the count moves symbols between
# shards: do it only with the executor stopped and every shard empty.
SIGNAL_SHARDS_EXCHANGE = "tvtb.signals.shards"
SHARD_KEY_HEADER = "x-shard-key"
SIGNAL_SHARDS = 4
# A signal the venue keeps failing is retried until its max lag (at most 600 s) makes it expire, which is recorded:
# the delivery limit must not dead-letter it first, unrecorded (tests/unit/test_messaging_limits.py checks).
SIGNAL_DELIVERY_LIMIT = 500
EXECUTOR_SHARDS = tuple(
    QueueSpec(f"executor.signals.{n}", SIGNAL_SHARDS_EXCHANGE, ("1",), single_active_consumer=True,  # "1": the weight
              delivery_limit=SIGNAL_DELIVERY_LIMIT)
    for n in range(SIGNAL_SHARDS)
)
NOTIFIER_EVENTS = QueueSpec("notifier.events", EVENTS_EXCHANGE, ("#",))
# Services asking the control service to trip the kill switch (KillSwitchTripV1).
CONTROL_TRIPS = QueueSpec("control.trips", EVENTS_EXCHANGE, ("control.trip.v1",))
QUEUES = (*EXECUTOR_SHARDS, NOTIFIER_EVENTS, CONTROL_TRIPS)
CONTROL_STREAM_ARGUMENTS = {"x-queue-type": "stream", "x-max-length-bytes": 100_000_000}


async def connect(url: str, name: str) -> AbstractRobustConnection:
    """A robust connection, named so the broker's management UI shows which service holds it."""
    return await aio_pika.connect_robust(url, client_properties={"connection_name": name}, timeout=10, reconnect_interval=1)


async def declare_topology(channel: AbstractChannel) -> None:
    signals = await channel.declare_exchange(SIGNALS_EXCHANGE, ExchangeType.TOPIC, durable=True)
    shards = await channel.declare_exchange(SIGNAL_SHARDS_EXCHANGE, "x-consistent-hash", durable=True,
                                            arguments={"hash-header": SHARD_KEY_HEADER})
    await shards.bind(signals, routing_key="#")
    await channel.declare_exchange(EVENTS_EXCHANGE, ExchangeType.TOPIC, durable=True)
    dlx = await channel.declare_exchange(DEAD_LETTER_EXCHANGE, ExchangeType.DIRECT, durable=True)
    for spec in QUEUES:
        dlq = await channel.declare_queue(spec.dlq, durable=True, arguments={"x-queue-type": "quorum"})
        await dlq.bind(dlx, routing_key=spec.dlq)
        queue = await channel.declare_queue(spec.name, durable=True, arguments=spec.arguments())
        for key in spec.binding_keys:
            await queue.bind(spec.exchange, routing_key=key)
    await channel.declare_queue(CONTROL_STREAM, durable=True, arguments=CONTROL_STREAM_ARGUMENTS)


# Before signals were sharded, one queue held them all, bound to tvtb.signals with `#`. A broker upgraded from then
# still has it: its binding would copy every new signal into a queue nobody reads, and what it held when the old
# executor stopped would never run. The executor retires it at start (retire_legacy_signals_queue).
LEGACY_SIGNALS_QUEUE = "executor.signals"
LEGACY_IDLE_S = 1.0


async def retire_legacy_signals_queue(connection: AbstractRobustConnection, publisher: "Publisher",
                                      idle_s: float = LEGACY_IDLE_S) -> int | None:
    """Cut the legacy queue's binding, move what it holds into the shards in its order, then delete it.

    Returns how many messages moved, or None when there is no legacy queue. A message is acked only once the shards
    have it (confirmed): a crash midway moves the rest at the next start, and a signal moved twice, or present in
    both (copied there while both were bound), is one signal_id, which the executor runs once. An unreadable message
    is dead-lettered to the legacy `.dlq` for an operator. Signals that waited too long expire at the executor and
    are parked for replay, like any stale signal; none is lost.
    """
    channel = await connection.channel()
    try:
        try:
            queue = await channel.declare_queue(LEGACY_SIGNALS_QUEUE, passive=True)
        except aio_pika.exceptions.ChannelClosed:  # 404: nothing to retire (a fresh install, or already done)
            return None
        await queue.unbind(SIGNALS_EXCHANGE, routing_key="#")
        waiting = queue.declaration_result.message_count
        log.warning("retiring the legacy signals queue: moving what it holds into the shards",
                    extra={"queue": LEGACY_SIGNALS_QUEUE, "messages": waiting})
        await channel.set_qos(prefetch_count=32)
        moved = 0
        async with queue.iterator() as messages:
            while True:
                try:
                    incoming = await asyncio.wait_for(messages.__anext__(), idle_s)
                except (asyncio.TimeoutError, StopAsyncIteration):
                    break
                try:
                    message = decode(incoming.type, incoming.body)
                except (UnknownMessageType, ValidationError):
                    log.error("unreadable message in the legacy signals queue: dead-lettered for an operator",
                              extra={"message_id": incoming.message_id, "type": incoming.type})
                    await incoming.reject(requeue=False)
                    continue
                await publisher.publish(message, exchange=SIGNALS_EXCHANGE, message_id=incoming.message_id)
                await incoming.ack()
                moved += 1
    finally:
        if not channel.is_closed:
            await channel.close()
    await _delete_if_empty(connection, LEGACY_SIGNALS_QUEUE, moved)
    return moved


async def _delete_if_empty(connection: AbstractRobustConnection, name: str, moved: int) -> None:
    channel = await connection.channel()
    try:
        queue = await channel.declare_queue(name, passive=True)
        left = queue.declaration_result.message_count
        if left or queue.declaration_result.consumer_count:
            # Another replica is moving them (the queue has a single active consumer): it deletes the queue.
            log.warning("legacy signals queue not deleted yet", extra={"queue": name, "left": left, "moved": moved})
            return
        await queue.delete(if_unused=False, if_empty=False)
        log.warning("legacy signals queue retired", extra={"queue": name, "moved": moved})
    except aio_pika.exceptions.ChannelClosed as error:
        log.warning("legacy signals queue not deleted", extra={"queue": name, "error": str(error)[:200]})
    finally:
        if not channel.is_closed:
            await channel.close()


class PublishFailed(TemporaryError):
    """The broker did not confirm the message (nack, unroutable, timeout or no connection)."""


class Publisher:
    """Publishes messages with publisher confirms: `publish` returns only once the broker has the message."""

    def __init__(self, channel: AbstractChannel, *, timeout: float = 5.0) -> None:
        self._channel = channel
        self._timeout = timeout
        self._exchanges: dict[str, object] = {}

    @classmethod
    async def open(cls, connection: AbstractRobustConnection, *, timeout: float = 5.0) -> Publisher:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        return cls(channel, timeout=timeout)

    async def publish(
        self,
        message: Message,
        *,
        exchange: str,
        routing_key: str | None = None,
        message_id: str | None = None,
        timeout: float | None = None,
        parent: Context | None = None,
    ) -> str:
        """`parent`: the trace this publish belongs to, when it is not the caller's current one (a batch runner
        publishing for a request)."""
        key = routing_key if routing_key is not None else message.routing_key()
        message_id = message_id or uuid.uuid4().hex
        with tracer.start_as_current_span(f"publish {exchange or key}", context=parent, kind=SpanKind.PRODUCER) as span:
            span.set_attribute("messaging.destination.name", exchange or key)
            span.set_attribute("messaging.rabbitmq.destination.routing_key", key)
            amqp_message = aio_pika.Message(
                body=encode(message),
                content_type="application/json",
                message_id=message_id,
                type=message.TYPE,
                correlation_id=message.correlation_id(),
                timestamp=datetime.now(timezone.utc),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                headers=_headers(message),
            )
            try:
                target = self._exchanges.get(exchange)
                if target is None:
                    target = self._channel.default_exchange if not exchange else await self._channel.get_exchange(
                        exchange, ensure=False
                    )
                    self._exchanges[exchange] = target
                # mandatory: a message no queue would take is an error, not a silent loss.
                confirmation = await target.publish(
                    amqp_message, routing_key=key, mandatory=True, timeout=timeout or self._timeout
                )
            except asyncio.TimeoutError as error:
                raise PublishFailed(f"the broker did not confirm within {timeout or self._timeout}s") from error
            except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError) as error:
                raise PublishFailed(f"the broker refused or could not take the message: {type(error).__name__}") from error
            if not isinstance(confirmation, aiormq.spec.Basic.Ack):
                raise PublishFailed(f"the broker did not acknowledge the message: {type(confirmation).__name__}")
        return message_id


RETRY_JITTER = 0.2


def _headers(message: Message) -> dict:
    headers = inject_trace({})
    shard_key = message.shard_key()
    if shard_key is not None:
        headers[SHARD_KEY_HEADER] = shard_key
    return headers


def retry_delay(failures: int) -> float:
    """Seconds before a message that failed `failures` times in a row goes back to its queue (before jitter)."""
    return min(5.0, 0.2 * 2 ** min(failures, 5))


Handler = Callable[[Message, AbstractIncomingMessage], Awaitable[None]]


@dataclass
class Consumer:
    """Consumes one queue. The handler records the outcome; the message is acked only after it returns.

    A permanent error or an undecodable message is dead-lettered; anything else (the database or the venue
    briefly away) is retried after a backoff, with the message held so later ones do not overtake it.
    """

    channel: AbstractChannel
    queue_name: str
    handler: Handler
    prefetch: int = 1
    name: str = "consumer"
    consume_arguments: dict | None = None
    # A stream takes no nack or reject (the broker closes the whole connection): every message is acked.
    stream: bool = False
    _queue: AbstractQueue | None = field(default=None, init=False)
    _tag: str | None = field(default=None, init=False)
    _inflight: set[asyncio.Task] = field(default_factory=set, init=False)
    _failures: int = field(default=0, init=False)

    @property
    def consuming(self) -> bool:
        return self._tag is not None

    async def start(self) -> None:
        if self._tag is not None:
            return
        await self.channel.set_qos(prefetch_count=self.prefetch)
        # declare_queue (passive) registers the queue with the robust channel, so its consumer is restored
        # after a reconnect; get_queue(ensure=False) would leave the service silently deaf.
        self._queue = await self.channel.declare_queue(self.queue_name, passive=True)
        self._tag = await self._queue.consume(self._on_message, arguments=self.consume_arguments)
        log.info("consuming", extra={"queue": self.queue_name, "consumer": self.name})

    async def stop(self) -> None:
        """Stop taking messages and let the ones in hand finish (they are acked or returned to the queue)."""
        if self._queue is not None and self._tag is not None:
            tag, self._tag = self._tag, None
            try:
                await self._queue.cancel(tag)
            except Exception:  # the channel may already be gone; nothing is lost, unacked messages return
                log.warning("could not cancel consumer", extra={"queue": self.queue_name}, exc_info=True)
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            await self._process(message)
        finally:
            if task is not None:
                self._inflight.discard(task)

    async def _process(self, message: AbstractIncomingMessage) -> None:
        try:
            decoded = decode(message.type, message.body)
        except (ValidationError, UnknownMessageType, ValueError) as error:
            log.error(
                "undecodable message %s",
                "ignored" if self.stream else "dead-lettered",
                extra={"queue": self.queue_name, "message_id": message.message_id, "error": str(error)[:500]},
            )
            await (message.ack() if self.stream else message.reject(requeue=False))
            return
        if self.stream:
            await self._process_stream(message, decoded)
            return
        context = extract_trace(message.headers)
        with tracer.start_as_current_span(
            f"process {self.queue_name}", context=context, kind=SpanKind.CONSUMER
        ) as span, bound_signal(message.correlation_id):
            span.set_attribute("messaging.message.id", message.message_id or "")
            try:
                await self.handler(decoded, message)
            except PermanentError as error:
                log.error("message dead-lettered", extra={"queue": self.queue_name, "error": str(error)}, exc_info=True)
                await message.reject(requeue=False)
                return
            except asyncio.CancelledError:
                await _safe_nack(message)
                raise
            except Exception as error:
                self._failures += 1
                delay = retry_delay(self._failures) * random.uniform(1 - RETRY_JITTER, 1 + RETRY_JITTER)
                log.warning(
                    "handling failed; the message goes back to the queue",
                    extra={"queue": self.queue_name, "error": f"{type(error).__name__}: {error}"[:500], "retry_in_s": round(delay, 2)},
                    exc_info=not isinstance(error, TemporaryError),
                )
                await asyncio.sleep(delay)
                await _safe_nack(message)
                return
            self._failures = 0
            await message.ack()


    async def _process_stream(self, message: AbstractIncomingMessage, decoded: Message) -> None:
        try:
            await self.handler(decoded, message)
        except Exception:  # the next message of the stream still counts: log, never reject
            log.exception("stream message could not be handled", extra={"queue": self.queue_name})
        await message.ack()


async def _safe_nack(message: AbstractIncomingMessage) -> None:
    try:
        await message.nack(requeue=True)
    except Exception:  # the channel closed: the broker redelivers the unacked message anyway
        log.warning("could not return a message to its queue; the broker will redeliver it", exc_info=True)
