"""The notifier's AMQP door: every event of tvtb.events, in order, acked once its notifications are recorded."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aio_pika.abc import AbstractIncomingMessage

from services.notifier.bootstrap import Notifier
from services.notifier.handlers import handle_event
from shared.contracts import Message
from shared.messaging import NOTIFIER_EVENTS, Consumer


@contextlib.asynccontextmanager
async def consuming(notifier: Notifier) -> AsyncIterator[Consumer]:
    channel = await notifier.connection.channel()

    async def handle(message: Message, raw: AbstractIncomingMessage) -> None:
        await handle_event(message, raw.message_id or "", notifier.deps)

    consumer = Consumer(channel=channel, queue_name=NOTIFIER_EVENTS.name, handler=handle, prefetch=1, name="notifier")
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()
