"""How an accepted signal becomes durable: group commit to the broker, or the outbox while the broker fails.

One publish round at a time. The signals accepted while a round waits for its confirm go out together in the next
round, one message per routing key (a `SignalBatchV1`, or a plain `SignalReceivedV1` when alone). At low load a
round holds one signal and leaves at once; under load it holds what arrived during one confirm, so the broker and
this process pay for a confirm per round instead of per alert, and the queue receives the signals in the order they
were accepted.

A round that the broker did not confirm goes to the outbox, in order, before the next round starts; while the outbox
holds anything, later rounds go to the outbox behind it (the relay publishes it in order once the broker is back).
Every round finishes within the earliest deadline of its signals, so every answer is due before TradingView's 3 s.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import deque
from dataclasses import dataclass

from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry.context import Context

from services.ingress.store import Outbox
from shared.contracts import SignalBatchV1, SignalReceivedV1, SignalRejectedV1
from shared.messaging import EVENTS_EXCHANGE, SIGNALS_EXCHANGE, PublishFailed, Publisher

log = logging.getLogger(__name__)

OUTBOX_RESERVE_S = 0.5  # what a publish leaves for the outbox, should it fail
MIN_PUBLISH_TIMEOUT_S = 0.05
MAX_GROUP = 256  # signals per round: a batch message stays small (about 100 KiB at most)


class Unavailable(Exception):
    """Neither the broker nor the outbox took the signal: the request answers 503 and TradingView resends."""


@dataclass(eq=False)
class _Entry:
    signal: SignalReceivedV1
    trace: Context  # the request's trace context, captured where the request was handled
    deadline: float  # time.monotonic() by which the request must be answered
    outcome: asyncio.Future


class GroupCommit:
    def __init__(self, publisher: Publisher, outbox: Outbox, *, publish_timeout_s: float, max_group: int = MAX_GROUP) -> None:
        self._publisher = publisher
        self._outbox = outbox
        self._publish_timeout = publish_timeout_s
        self._max_group = max_group
        self._waiting: deque[_Entry] = deque()
        self._runner: asyncio.Task | None = None
        self.rounds = 0
        self.committed = 0

    async def commit(self, signal: SignalReceivedV1, deadline: float) -> str:
        """`published` once the broker confirmed the signal, `outbox` once Mongo holds it; raises Unavailable."""
        entry = _Entry(signal, otel_context.get_current(), deadline, asyncio.get_running_loop().create_future())
        self._waiting.append(entry)
        if self._runner is None or self._runner.done():
            # A context of its own: the runner serves many requests and must not carry the first one's trace.
            self._runner = asyncio.create_task(self._run(), name="group-commit", context=contextvars.Context())
        return await entry.outcome

    async def close(self, timeout_s: float = 5.0) -> None:
        """Let the rounds under way finish (their requests are owed an answer), then stop."""
        runner = self._runner
        if runner is None or runner.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(runner), timeout_s)
        except asyncio.TimeoutError:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)

    async def _run(self) -> None:
        group: list[_Entry] = []
        try:
            while self._waiting:
                group = [self._waiting.popleft() for _ in range(min(self._max_group, len(self._waiting)))]
                try:
                    outcomes = await self._commit_round(group)
                except Exception as error:  # a bug: these requests get a 503 (TradingView resends), the next round runs
                    log.exception("a commit round failed unexpectedly")
                    outcomes = [Unavailable(type(error).__name__)] * len(group)
                for entry, outcome in zip(group, outcomes):
                    _settle(entry, outcome)
                self.rounds += 1
                self.committed += len(group)
                group = []
        finally:
            # Cancelled (shutdown): whoever still waits gets an answer, 503, and TradingView resends.
            for entry in [*group, *self._waiting]:
                _settle(entry, Unavailable("the ingress is stopping"))
            self._waiting.clear()

    async def _commit_round(self, group: list[_Entry]) -> list[str | Exception]:
        earliest = min(entry.deadline for entry in group)
        failed: list[_Entry] = group
        if not self._outbox.pending:
            timeout = min(self._publish_timeout, max(earliest - time.monotonic() - OUTBOX_RESERVE_S, MIN_PUBLISH_TIMEOUT_S))
            failed = await self._publish(group, timeout)
            if not failed:
                return ["published"] * len(group)
        try:
            await self._outbox.put_many([entry.signal for entry in failed], timeout_s=earliest - time.monotonic())
            saved: str | Exception = "outbox"
        except Exception as error:
            log.error("signals not accepted: neither the broker nor the outbox took them",
                      extra={"count": len(failed), "error": f"{type(error).__name__}: {error}"[:300]},
                      exc_info=not isinstance(error, (OSError, asyncio.TimeoutError)))
            saved = Unavailable(str(error)[:200])
        failed_ids = {id(entry) for entry in failed}
        return [saved if id(entry) in failed_ids else "published" for entry in group]

    async def _publish(self, group: list[_Entry], timeout: float) -> list[_Entry]:
        """Publish the round, one message per routing key, all confirmed together; returns what was not confirmed."""
        by_key: dict[str, list[_Entry]] = {}
        for entry in group:
            by_key.setdefault(entry.signal.routing_key(), []).append(entry)
        parts = list(by_key.values())
        results = await asyncio.gather(*(self._publish_part(part, timeout) for part in parts), return_exceptions=True)
        failed: list[_Entry] = []
        for part, result in zip(parts, results):
            if isinstance(result, PublishFailed):
                log.warning("broker did not confirm; keeping the signals in the outbox", extra={"count": len(part), "error": str(result)})
                failed.extend(part)
            elif isinstance(result, BaseException):
                raise result
        # In acceptance order, as the outbox must keep them.
        failed_ids = {id(entry) for entry in failed}
        return [entry for entry in group if id(entry) in failed_ids]

    async def _publish_part(self, part: list[_Entry], timeout: float) -> None:
        if len(part) == 1:
            entry = part[0]
            await self._publisher.publish(entry.signal, exchange=SIGNALS_EXCHANGE, message_id=entry.signal.signal_id,
                                          timeout=timeout, parent=entry.trace)
            return
        batch = SignalBatchV1(signals=tuple(entry.signal for entry in part), traces=tuple(_headers(entry.trace) for entry in part))
        await self._publisher.publish(batch, exchange=SIGNALS_EXCHANGE, message_id=f"batch-{part[0].signal.signal_id}", timeout=timeout)


def _headers(context: Context) -> dict[str, str]:
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return carrier


def _settle(entry: _Entry, outcome: str | Exception) -> None:
    if entry.outcome.done():  # the request was cancelled meanwhile
        return
    if isinstance(outcome, Exception):
        entry.outcome.set_exception(Unavailable(str(outcome)))
    else:
        entry.outcome.set_result(outcome)


class RejectionNotices:
    """Tells the trader, through the notifier, why an alert with a valid token was refused (TradingView shows them
    nothing of the answer). Never in the answer's way: each notice is published in the background, at most
    `max_pending` at once (the rest are counted as dropped; the request record and the log keep every refusal)."""

    def __init__(self, publisher: Publisher, *, max_pending: int = 1000, timeout_s: float = 5.0) -> None:
        self._publisher = publisher
        self._max_pending = max_pending
        self._timeout = timeout_s
        self._tasks: set[asyncio.Task] = set()
        self.dropped = 0

    def tell(self, notice: SignalRejectedV1, message_id: str) -> None:
        if len(self._tasks) >= self._max_pending:
            self.dropped += 1
            return
        task = asyncio.get_running_loop().create_task(self._publish(notice, message_id), context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, notice: SignalRejectedV1, message_id: str) -> None:
        try:
            await self._publisher.publish(notice, exchange=EVENTS_EXCHANGE, message_id=message_id, timeout=self._timeout)
        except PublishFailed as error:
            self.dropped += 1
            log.warning("rejection not told to the notifier", extra={"error": str(error)[:200]})

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
