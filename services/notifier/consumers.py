"""The notifier's AMQP door: every event of tvtb.events, queued for its chats in order, acked once they all have it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aio_pika.abc import AbstractIncomingMessage

from services.notifier.bootstrap import Notifier
from services.notifier.dispatch import Dispatcher
from shared.contracts import Message
from shared.messaging import NOTIFIER_EVENTS, Consumer

# Events held unacked while they wait for Telegram's limits or for Telegram itself: a burst up to this size is
# coalesced into digests; beyond it, the rest wait in the queue.
IN_FLIGHT = 1000


@contextlib.asynccontextmanager
async def consuming(notifier: Notifier) -> AsyncIterator[Consumer]:
    channel = await notifier.connection.channel()
    dispatcher = Dispatcher(notifier.deps, routes=notifier.settings.notify_events)
    notifier.dispatcher = dispatcher

    async def handle(message: Message, raw: AbstractIncomingMessage) -> None:
        told = dispatcher.submit(message, raw.message_id or "")
        if told is not None:
            await told

    consumer = Consumer(channel=channel, queue_name=NOTIFIER_EVENTS.name, handler=handle, prefetch=IN_FLIGHT, name="notifier")
    await consumer.start()
    try:
        yield consumer
    finally:
        stopping = asyncio.create_task(consumer.stop())  # takes no more, then waits for the events in hand...
        await dispatcher.close()  # ...which go back to the queue if not yet told
        await stopping
