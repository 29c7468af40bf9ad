"""The executor's AMQP door: consume its shards of the signals, but only once the kill-switch state and the venue
are known."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aio_pika.abc import AbstractIncomingMessage
from opentelemetry import trace

from services.executor.bootstrap import Executor
from services.executor.handlers import handle_signal
from services.executor.shards import ShardConsumers
from shared.contracts import Message, SignalBatchV1, SignalReceivedV1
from shared import messaging
from shared.errors import PermanentError
from shared.observability import bound_signal, extract_trace
from shared.runtime import raise_if_cancelling

log = logging.getLogger(__name__)
tracer = trace.get_tracer("tvtb.executor")


@contextlib.asynccontextmanager
async def consuming(executor: Executor, *, replica: str | None = None) -> AsyncIterator[ShardConsumers]:
    """Take part in the shard rota when the state is learned (fail closed); leave it first on the way out."""

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
            raise PermanentError(f"{type(message).__name__} does not belong on the executor's shards")

    async def known() -> None:
        await executor.deps.view.known.wait()
        await executor.exchange_ready.wait()

    # Each shard's single active consumer is its owner, which runs one account+symbol at a time in order, and the
    # shard's several symbols side by side (shared.messaging.LaneConsumer).
    shards = ShardConsumers(executor.connection, executor.deps.db, handle, replica=replica or executor.deps.replica or None,
                            on_change=executor.deps.metrics.show_shards)
    executor.deps.replica = shards.replica
    async def run() -> None:
        # An upgraded broker's old single queue holds the oldest signals: they run first, in order, through the
        # same handler, once the kill-switch state and the venue are known.
        await known()
        try:
            await messaging.drain_legacy_signals(executor.connection, handle)
        except Exception as error:  # what was not handled stays in that queue (acked only once handled)
            raise_if_cancelling()
            log.error("the legacy signals queue was not drained; restart the executor to try again",
                      extra={"error": f"{type(error).__name__}: {error}"[:300]})
        await shards.run(known)

    runner = asyncio.create_task(run())
    try:
        yield shards
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await shards.stop()
