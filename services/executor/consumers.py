"""The executor's AMQP door: consume signals, but only once the kill-switch state and the venue are known."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aio_pika.abc import AbstractIncomingMessage
from opentelemetry import trace

from services.executor.bootstrap import Executor
from services.executor.handlers import handle_signal
from shared.contracts import Message, SignalBatchV1, SignalReceivedV1
from shared.errors import PermanentError
from shared.messaging import EXECUTOR_SIGNALS, Consumer
from shared.observability import bound_signal, extract_trace

log = logging.getLogger(__name__)
tracer = trace.get_tracer("tvtb.executor")


@contextlib.asynccontextmanager
async def consuming(executor: Executor) -> AsyncIterator[Consumer]:
    """Start consuming signals when the state is learned (fail closed); stop first on the way out."""
    channel = await executor.connection.channel()

    async def handle(message: Message, raw: AbstractIncomingMessage) -> None:
        if isinstance(message, SignalReceivedV1):
            await handle_signal(message, executor.deps)
        elif isinstance(message, SignalBatchV1):
            # In order, each under its own trace. A failure stops the batch and the whole message is retried:
            # the signals already handled are recorded, so they are not executed again.
            for signal, headers in message.entries():
                with tracer.start_as_current_span("handle signal", context=extract_trace(headers)), bound_signal(signal.signal_id):
                    await handle_signal(signal, executor.deps)
        else:
            raise PermanentError(f"{type(message).__name__} does not belong on {EXECUTOR_SIGNALS.name}")

    # prefetch 1 with a single active consumer: signals execute one at a time, in the order accepted.
    consumer = Consumer(channel=channel, queue_name=EXECUTOR_SIGNALS.name, handler=handle, prefetch=1, name="executor")

    async def start_when_known() -> None:
        await executor.deps.view.known.wait()
        await executor.exchange_ready.wait()
        await consumer.start()

    starter = asyncio.create_task(start_when_known())
    try:
        yield consumer
    finally:
        starter.cancel()
        await asyncio.gather(starter, return_exceptions=True)
        await consumer.stop()
