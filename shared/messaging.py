"""The broker: topology as values declared idempotently, a confirmed publisher, and a consumer that acks after the outcome.

Every service declares the same topology at start, so whichever starts first creates it and no message is
published to an exchange without its queues.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
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
# key) over a consistent-hash exchange into a few queues, each with a single active consumer, which runs each
# symbol's signals in lanes (LaneConsumer): one symbol always lands in the same shard, and so runs in the order
# accepted, while the executor replicas share the shards. Changing the count moves symbols between shards: do it
# only with the executor stopped and every shard empty.
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
# executor stopped would never run. The executor drains it, in order, before it reads any shard (drain_legacy_signals).
LEGACY_SIGNALS_QUEUE = "executor.signals"
LEGACY_POLL_S = 0.2


async def drain_legacy_signals(connection: AbstractRobustConnection, handler: Handler, *, poll_s: float = LEGACY_POLL_S) -> int | None:
    """Cut the legacy queue's binding, run what it holds through `handler` in its order, then delete it.

    Run before the shards are read: the legacy queue holds the oldest signals, and after the cut no new one enters
    it, so draining it first keeps every symbol in order (a signal also in a shard, copied while both were bound,
    is one signal_id, which the executor runs once). Each message is acked once handled, like a shard's, by the same
    Consumer. Returns how many were handled, or None when there is no legacy queue. Another replica (or the old
    executor) holding its single active consumer: this one leaves it to them after a while.
    """
    probe = await connection.channel()
    try:
        try:
            declared = await probe.declare_queue(LEGACY_SIGNALS_QUEUE, passive=True)
        except aio_pika.exceptions.ChannelClosed:  # 404: nothing to drain (a fresh install, or already done)
            return None
        await declared.unbind(SIGNALS_EXCHANGE, routing_key="#")
    finally:
        if not probe.is_closed:
            await probe.close()
    log.warning("draining the legacy signals queue before the shards", extra={"queue": LEGACY_SIGNALS_QUEUE})
    handled = 0

    async def counting(message: Message, raw: AbstractIncomingMessage) -> None:
        nonlocal handled
        await handler(message, raw)
        handled += 1

    consumer = Consumer(channel=await connection.channel(), queue_name=LEGACY_SIGNALS_QUEUE, handler=counting, prefetch=1,
                        name="legacy-drain")
    await consumer.start()
    before = 0
    standby_s = 0.0
    try:
        while True:
            ready, consumers = await _queue_counts(connection, LEGACY_SIGNALS_QUEUE)
            if ready == 0 and not consumer.busy and consumers <= 1:
                break  # empty, and only this drain consumes it
            # Another consumer holds the single active consumer (a replica draining it, or the old executor): this
            # one gets nothing, and leaves the queue to it after a while.
            standby_s = standby_s + poll_s if consumers > 1 and not consumer.busy and handled == before else 0.0
            if standby_s >= 5.0:
                log.warning("the legacy signals queue is drained by another consumer", extra={"handled": handled})
                return handled
            before = handled
            await asyncio.sleep(poll_s)
    finally:
        await consumer.stop()
        if not consumer.channel.is_closed:
            await consumer.channel.close()
    # Quorum queues refuse queue.delete's if-unused and if-empty (the broker closes the whole connection): look, then
    # delete. No binding feeds it any more, so empty and unconsumed stays so.
    ready, consumers = await _queue_counts(connection, LEGACY_SIGNALS_QUEUE)
    if ready or consumers:
        log.warning("legacy signals queue not deleted: it is not empty or not idle", extra={"ready": ready, "consumers": consumers})
        return handled
    channel = await connection.channel()
    try:
        underlay = await channel.get_underlay_channel()
        await underlay.queue_delete(LEGACY_SIGNALS_QUEUE)
        log.warning("legacy signals queue drained and deleted", extra={"handled": handled})
    except aiormq.exceptions.AMQPError as error:
        log.warning("legacy signals queue not deleted", extra={"error": str(error)[:200], "handled": handled})
    finally:
        if not channel.is_closed:
            await channel.close()
    return handled


async def _queue_counts(connection: AbstractRobustConnection, name: str) -> tuple[int, int]:
    channel = await connection.channel()
    try:
        underlay = await channel.get_underlay_channel()
        declared = await underlay.queue_declare(name, passive=True)
        return declared.message_count, declared.consumer_count
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
    """Seconds before a message that failed `failures` times in a row is tried again (before jitter)."""
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

    @property
    def busy(self) -> bool:
        """A message is in hand (being handled, or waiting out a retry's backoff)."""
        return bool(self._inflight)

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

    @contextmanager
    def _processing(self, message: AbstractIncomingMessage) -> Iterator[None]:
        """The span of handling one message, in the trace of the request that led to it, and its signal's logs."""
        with tracer.start_as_current_span(f"process {self.queue_name}", context=extract_trace(message.headers),
                                          kind=SpanKind.CONSUMER) as span, bound_signal(message.correlation_id):
            span.set_attribute("messaging.message.id", message.message_id or "")
            yield

    async def _dead_letter_permanent(self, message: AbstractIncomingMessage, error: PermanentError) -> None:
        log.error("message dead-lettered", extra={"queue": self.queue_name, "error": str(error)}, exc_info=True)
        await message.reject(requeue=False)

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
        with self._processing(message):
            try:
                await self.handler(decoded, message)
            except PermanentError as error:
                await self._dead_letter_permanent(message, error)
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


@dataclass
class LaneConsumer(Consumer):
    """Consumes one queue with several messages in hand, in lanes: the messages of one lane (`lane_of`, e.g. the
    shard key, one account+symbol) are handled one at a time in the order delivered, different lanes at once.

    A temporary failure is retried in place after a backoff, holding its lane: a message given back to the queue
    would meet later ones of its lane already in hand, and fresh ones delivered meanwhile, and lose its place. After
    `attempts` tries it is dead-lettered, as the queue's delivery limit would. When the consumer stops, each lane
    finishes the message it is handling (one waiting out a retry's backoff does not wait), and then the channel is
    closed: the broker puts back every message not done, in the order delivered, before it lets the queue's next
    consumer take over (a cancel first would hand the queue over while they were still here, and what it then
    delivers would overtake them). The channel is the consumer's own: stopped, it is closed.
    """

    lane_of: Callable[[AbstractIncomingMessage], str] = lambda message: ""
    attempts: int = DELIVERY_LIMIT
    _lanes: dict[str, deque[AbstractIncomingMessage]] = field(default_factory=dict, init=False)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    async def start(self) -> None:
        self._stopping.clear()
        await super().start()

    async def stop(self) -> None:
        self._stopping.set()
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        self._tag = None
        try:
            await self.channel.close()
        except Exception:  # already gone with the connection: the broker puts back what was not acked all the same
            log.warning("could not close a consumer's channel; the broker puts its messages back", extra={"queue": self.queue_name})

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self._stopping.is_set():
            return  # delivered while stopping: put back with the channel
        key = self.lane_of(message)
        lane = self._lanes.get(key)
        if lane is not None:
            lane.append(message)  # its worker takes it in turn
            return
        self._lanes[key] = deque([message])
        worker = asyncio.current_task()  # this delivery's task works the lane until it is empty
        if worker is not None:
            self._inflight.add(worker)
        try:
            await self._work(key)
        finally:
            self._lanes.pop(key, None)
            if worker is not None:
                self._inflight.discard(worker)

    async def _work(self, key: str) -> None:
        lane = self._lanes[key]
        while lane:
            if self._stopping.is_set():
                return  # stopping: what was not started goes back with the channel, in order
            message = lane[0]
            try:
                handled = await self._attempt_until_done(message)
            except BaseException:
                # Cancelled, or the channel failing under an ack or a reject: nothing behind it may run before it.
                await self._give_back(lane)
                raise
            if not handled:
                return  # stopping while it waited out a backoff: it goes back with the channel, the others behind it
            lane.popleft()

    async def _attempt_until_done(self, message: AbstractIncomingMessage) -> bool:
        """Handle the message, retrying in place; False when the consumer stops before it is done."""
        if message.channel.is_closed:
            return True  # its channel is gone: the broker delivers it again on the new one
        try:
            decoded = decode(message.type, message.body)
        except (ValidationError, UnknownMessageType, ValueError) as error:
            log.error("undecodable message dead-lettered",
                      extra={"queue": self.queue_name, "message_id": message.message_id, "error": str(error)[:500]})
            await message.reject(requeue=False)
            return True
        failures = 0
        while True:
            with self._processing(message):
                try:
                    await self.handler(decoded, message)
                except PermanentError as error:
                    await self._dead_letter_permanent(message, error)
                    return True
                except asyncio.CancelledError:
                    raise
                except Exception as error:
                    failures += 1
                    if failures >= self.attempts:
                        log.error("message dead-lettered after %d attempts", failures,
                                  extra={"queue": self.queue_name, "error": f"{type(error).__name__}: {error}"[:500]})
                        await message.reject(requeue=False)
                        return True
                    delay = retry_delay(failures) * random.uniform(1 - RETRY_JITTER, 1 + RETRY_JITTER)
                    log.warning("handling failed; tried again in place",
                                extra={"queue": self.queue_name, "error": f"{type(error).__name__}: {error}"[:500],
                                       "retry_in_s": round(delay, 2)},
                                exc_info=not isinstance(error, TemporaryError))
                else:
                    try:
                        await message.ack()
                    except Exception:  # the channel closed meanwhile: the broker delivers it again; it is known then
                        log.warning("could not ack a handled message; the broker will deliver it again", exc_info=True)
                    return True
            if message.channel.is_closed:
                return True  # the broker delivers it again, with the ones behind it, in order
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
                return False
            except asyncio.TimeoutError:
                pass

    async def _give_back(self, lane: deque[AbstractIncomingMessage]) -> None:
        while lane:
            await _safe_nack(lane.popleft())


def shard_lane(message: AbstractIncomingMessage) -> str:
    """A signal's lane on its shard: its shard key (one account+symbol), whose signals run in the order accepted."""
    return str((message.headers or {}).get(SHARD_KEY_HEADER) or "")


async def _safe_nack(message: AbstractIncomingMessage) -> None:
    try:
        await message.nack(requeue=True)
    except Exception:  # the channel closed: the broker redelivers the unacked message anyway
        log.warning("could not return a message to its queue; the broker will redeliver it", exc_info=True)
