"""What the ingress keeps: recent signal ids (dedup), request records (batched), and the outbox used while the
broker is unreachable, with the relay that publishes it in order once the broker is back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from datetime import timedelta

from pymongo import ASCENDING
from pymongo.errors import BulkWriteError
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from shared.contracts import SignalReceivedV1, decode, encode, utcnow
from shared.messaging import SIGNALS_EXCHANGE, Publisher
from shared.runtime import raise_if_cancelling

log = logging.getLogger(__name__)

RECENT_WINDOW = timedelta(hours=24)


class RecentSignals:
    """Signal ids this ingress accepted lately, with their fingerprints: the resend check costs no I/O."""

    def __init__(self, max_entries: int = 500_000) -> None:
        self._entries: OrderedDict[str, str] = OrderedDict()
        self._max = max_entries

    def get(self, signal_id: str) -> str | None:
        return self._entries.get(signal_id)

    def put(self, signal_id: str, fingerprint: str) -> None:
        self._entries[signal_id] = fingerprint
        self._entries.move_to_end(signal_id)
        if len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def discard(self, signal_id: str) -> None:
        self._entries.pop(signal_id, None)

    async def load(self, requests: AsyncCollection) -> int:
        """After a restart, the last day's accepted ids: a resend of an alert accepted before is still a resend."""
        since = utcnow() - RECENT_WINDOW
        cursor = requests.find(
            {"result": "accepted", "at": {"$gte": since}}, {"signal_id": 1, "fingerprint": 1}, sort=[("at", ASCENDING)]
        )
        count = 0
        async for document in cursor:
            self.put(document["signal_id"], document["fingerprint"])
            count += 1
        return count


class Recorder:
    """Writes request records in batches: one round trip for many, so a flood costs the database little.

    The answer never waits for its record. If the database is away, records wait (up to `max_pending`, then the
    oldest are dropped and counted); every record is also a log line.
    """

    def __init__(self, collection: AsyncCollection, *, batch: int = 500, interval_s: float = 0.05, max_pending: int = 100_000) -> None:
        self._collection = collection
        self._batch = batch
        self._interval = interval_s
        self._pending: list[dict] = []
        self._max_pending = max_pending
        self._wake = asyncio.Event()
        self.dropped = 0

    def record(self, document: dict) -> None:
        self._pending.append(document)
        if len(self._pending) > self._max_pending:
            del self._pending[0]
            self.dropped += 1
        if len(self._pending) >= self._batch:
            self._wake.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        while self._pending:
            batch = self._pending[: self._batch]
            try:
                await self._collection.insert_many(batch, ordered=False)
            except BulkWriteError as error:
                # Some were written: a retry would repeat their _ids forever. Keep none of this batch back.
                errors = error.details.get("writeErrors", [])
                first = str(errors[0].get("errmsg", ""))[:200] if errors else ""
                log.warning("some request records were refused", extra={"refused": len(errors), "batch": len(batch), "first_error": first})
            except Exception as error:
                raise_if_cancelling()
                log.warning("request records not written yet", extra={"error": type(error).__name__, "pending": len(self._pending)})
                return
            del self._pending[: len(batch)]


class Outbox:
    """Signals accepted while the broker could not confirm them, kept in Mongo and relayed in arrival order.

    While anything waits in the outbox, new signals queue behind it rather than overtake it.
    """

    def __init__(self, collection: AsyncCollection, publisher: Publisher, *, timeout_s: float = 1.0) -> None:
        self._collection = collection
        self._publisher = publisher
        self._timeout = timeout_s
        self._lock = asyncio.Lock()
        self._last_seq = 0
        self.pending = False
        self.relayed = 0

    def _next_seq(self) -> int:
        # Nanoseconds, so the order holds across restarts; strictly increasing within this process.
        self._last_seq = max(self._last_seq + 1, time.time_ns())
        return self._last_seq

    async def load(self) -> None:
        self.pending = await self._collection.find_one({}, {"_id": 1}) is not None

    async def put(self, signal: SignalReceivedV1) -> None:
        """Make the signal durable in Mongo; raises when the database did not take it in time."""
        document = {"_id": signal.signal_id, "seq": self._next_seq(), "body": encode(signal).decode(), "created_at": utcnow()}
        async with self._lock:
            await asyncio.wait_for(self._collection.insert_one(document), self._timeout)
            self.pending = True

    async def relay_once(self, limit: int = 200) -> int:
        """Publish waiting signals oldest first; each leaves the outbox only once the broker confirmed it."""
        async with self._lock:
            documents = await self._collection.find({}, sort=[("seq", ASCENDING)], limit=limit).to_list(None)
            if not documents:
                self.pending = False
                return 0
        sent = 0
        for document in documents:
            signal = decode("SignalReceivedV1", document["body"].encode())
            await self._publisher.publish(signal, exchange=SIGNALS_EXCHANGE, message_id=signal.signal_id, timeout=self._timeout)
            await self._collection.delete_one({"_id": document["_id"]})
            sent += 1
            self.relayed += 1
        log.info("outbox relayed", extra={"count": sent})
        return sent

    async def run(self, interval_s: float = 0.2) -> None:
        while True:
            try:
                while await self.relay_once():
                    pass
            except Exception as error:  # broker or database still away: the next round tries again
                raise_if_cancelling()
                log.warning("outbox not relayed yet", extra={"error": f"{type(error).__name__}: {error}"[:300]})
            await asyncio.sleep(interval_s)


def collections(db: AsyncDatabase) -> tuple[AsyncCollection, AsyncCollection]:
    return db.webhook_requests, db.outbox
