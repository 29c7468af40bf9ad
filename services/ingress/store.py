"""What the ingress keeps: recent signal ids (dedup), request records (in buckets), and the outbox used while the
broker is unreachable, with the relay that publishes it in order once the broker is back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

from pymongo import ASCENDING
from pymongo.errors import BulkWriteError
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from shared.contracts import SignalReceivedV1, decode, encode, utcnow
from shared.messaging import SIGNALS_EXCHANGE, Publisher
from shared.runtime import raise_if_cancelling

log = logging.getLogger(__name__)

RECENT_WINDOW = timedelta(hours=24)
RESEND_WINDOW_S = 120.0  # TradingView resends a failed delivery 3 times, 5 s apart


class RecentSignals:
    """What this ingress accepted lately, so a resend is recognised without I/O.

    An alert with an `id` is known by that id for a day. An alert without one is known by its fingerprint only for
    TradingView's resend window: the same text firing again later is a new alert.
    """

    def __init__(self, max_entries: int = 500_000, resend_window_s: float = RESEND_WINDOW_S) -> None:
        self._entries: OrderedDict[str, tuple[str, str, float]] = OrderedDict()  # key -> (signal_id, fingerprint, at)
        self._max = max_entries
        self._window = resend_window_s
        # key -> (signal_id, at) of alerts answered 503: the write may have landed after all (a confirm or an insert
        # that completed after its deadline), so TradingView's resend must carry the same signal id, which the
        # executor then dedupes, rather than a new one that would trade the alert twice.
        self._unsettled: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._max_unsettled = 10_000

    @staticmethod
    def key(payload_id: str | None, fingerprint: str) -> str:
        return payload_id if payload_id is not None else f"fp:{fingerprint}"

    def get(self, key: str, now: float) -> tuple[str, str] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        signal_id, fingerprint, at = entry
        if key.startswith("fp:") and now - at > self._window:
            return None
        return signal_id, fingerprint

    def unsettled(self, key: str, now: float) -> str | None:
        """The signal id given to this alert when it was last answered 503, within the resend window."""
        entry = self._unsettled.get(key)
        return entry[0] if entry is not None and now - entry[1] <= self._window else None

    def put_unsettled(self, key: str, signal_id: str, at: float) -> None:
        self._unsettled[key] = (signal_id, at)
        self._unsettled.move_to_end(key)
        if len(self._unsettled) > self._max_unsettled:
            self._unsettled.popitem(last=False)

    def put(self, key: str, signal_id: str, fingerprint: str, at: float) -> None:
        self._unsettled.pop(key, None)
        self._entries[key] = (signal_id, fingerprint, at)
        self._entries.move_to_end(key)
        if len(self._entries) > self._max:
            self._entries.popitem(last=False)

    async def load(self, requests: AsyncCollection) -> int:
        """After a restart, the last day's accepted alerts: a resend of one accepted before is still a resend."""
        count = 0
        async for document in request_records(requests, utcnow() - RECENT_WINDOW):
            if document["result"] != "accepted":
                continue
            payload_id = document["signal_id"] if document.get("keyed_by_id") else None
            key = self.key(payload_id, document["fingerprint"])
            self.put(key, document["signal_id"], document["fingerprint"], document["at"].timestamp())
            count += 1
        return count


class Recorder:
    """Writes request records in buckets: one document holds the records of one flush, in arrival order.

    One insert for many requests, and one index entry: a flood costs the database little (on the test server a
    record alone cost about 100 us of its CPU, a record in a bucket about 6 us). The answer never waits for its
    record. If the database is away, records wait (up to `max_pending`, then the oldest are dropped and counted);
    every record is also a log line.
    """

    def __init__(self, collection: AsyncCollection, *, batch: int = 500, interval_s: float = 0.05, max_pending: int = 100_000) -> None:
        self._collection = collection
        self._batch = batch
        self._interval = interval_s
        self._pending: deque[dict] = deque()
        self._max_pending = max_pending
        self._wake = asyncio.Event()
        self.dropped = 0

    def record(self, document: dict) -> None:
        if len(self._pending) >= self._max_pending:
            self._pending.popleft()
            self.dropped += 1
        self._pending.append(document)
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
            # Taken out before the write: records that arrive meanwhile are never confused with these.
            batch = [self._pending.popleft() for _ in range(min(self._batch, len(self._pending)))]
            bucket = {"at": batch[0]["at"], "until": batch[-1]["at"], "count": len(batch), "records": batch}
            try:
                await self._collection.insert_one(bucket)
            except Exception as error:
                room = self._max_pending - len(self._pending)
                self._pending.extendleft(reversed(batch[-room:] if room > 0 else []))
                raise_if_cancelling()
                log.warning("request records not written yet", extra={"error": type(error).__name__, "pending": len(self._pending)})
                return


async def request_records(collection: AsyncCollection, since: datetime | None = None) -> AsyncIterator[dict]:
    """Every request record (of buckets ending at or after `since`), oldest first."""
    query = {"until": {"$gte": since}} if since is not None else {}
    async for bucket in collection.find(query, {"records": 1}, sort=[("until", ASCENDING)]):
        for record in bucket["records"]:
            if since is None or record["at"] >= since:
                yield record


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

    async def put_many(self, signals: list[SignalReceivedV1], timeout_s: float) -> None:
        """Make the signals durable in Mongo, in this order; raises when the database did not take them within
        `timeout_s` (the wait for the relay's lock included: the callers' answers are due)."""
        now = utcnow()
        documents = [{"_id": s.signal_id, "seq": self._next_seq(), "body": encode(s).decode(), "created_at": now} for s in signals]
        async with asyncio.timeout(max(timeout_s, 0.0)):
            async with self._lock:
                try:
                    # Unordered is safe: the relay goes by seq, not by insertion.
                    await self._collection.insert_many(documents, ordered=False)
                except BulkWriteError as error:
                    # A signal already there (a retried write that had landed) is kept; any other refusal is not.
                    if any(e.get("code") != 11000 for e in error.details.get("writeErrors", [])):
                        raise
                self.pending = True

    async def relay_once(self, limit: int = 200) -> int:
        """Publish waiting signals oldest first; each leaves the outbox only once the broker confirmed it."""
        async with self._lock:
            # Bounded: requests queue behind this lock while it is held.
            async with asyncio.timeout(self._timeout):
                documents = await self._collection.find({}, sort=[("seq", ASCENDING)], limit=limit).to_list(None)
            if not documents:
                self.pending = False
                return 0
        sent = 0
        for document in documents:
            try:
                signal = decode("SignalReceivedV1", document["body"].encode())
            except ValueError:
                # Unreadable (written by another version?): parked for an operator, never blocking those behind it.
                log.error("outbox entry could not be read; parked in outbox_parked", extra={"signal_id": document["_id"]})
                await self._collection.database.outbox_parked.replace_one({"_id": document["_id"]}, document, upsert=True)
                await self._collection.delete_one({"_id": document["_id"]})
                continue
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
