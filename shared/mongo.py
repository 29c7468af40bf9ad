"""MongoDB access through PyMongo's async client: one client per process, Decimal stored exactly, indexes at start."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from bson.codec_options import CodecOptions, TypeCodec, TypeRegistry
from bson.decimal128 import Decimal128
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure, WriteConcernError

DUPLICATE_KEY_CODES = (11000, 11001, 12582)  # as pymongo reads them


class DecimalCodec(TypeCodec):
    """Money and quantities are Decimal in the code and Decimal128 in the database: never a float in between."""

    python_type = Decimal
    bson_type = Decimal128

    def transform_python(self, value: Decimal) -> Decimal128:
        return Decimal128(value)

    def transform_bson(self, value: Decimal128) -> Decimal:
        return value.to_decimal()


CODEC_OPTIONS = CodecOptions(tz_aware=True, type_registry=TypeRegistry([DecimalCodec()]))

# Every collection's indexes, in one place. `signals` is keyed by signal_id (_id), which makes it the dedup.
INDEXES: dict[str, list[IndexModel]] = {
    "signals": [
        IndexModel([("status", ASCENDING), ("received_at", DESCENDING)]),
        IndexModel([("received_at", DESCENDING)]),
        # Alerts without an id, by their text's fingerprint: how the executor knows a resend named differently.
        IndexModel([("resend_key", ASCENDING), ("received_at", DESCENDING)], sparse=True),
    ],
    "orders": [
        IndexModel([("client_order_id", ASCENDING)], unique=True),
        IndexModel([("signal_id", ASCENDING)]),
        IndexModel([("placed_at", DESCENDING)]),
        # The executor looks for resting limit orders every few seconds: an index, not a scan of every order ever.
        IndexModel([("status", ASCENDING), ("type", ASCENDING)]),
    ],
    "notifications": [
        IndexModel([("event_id", ASCENDING), ("chat_id", ASCENDING)], unique=True),
        IndexModel([("signal_id", ASCENDING)]),
    ],
    "signal_conflicts": [IndexModel([("signal_id", ASCENDING)])],
    "control_history": [IndexModel([("version", DESCENDING)], unique=True)],
    # Buckets of request records (services/ingress/store.py), kept 30 days after their last record: a flood of
    # refused requests must not fill the disk for ever.
    "webhook_requests": [IndexModel([("until", ASCENDING)], expireAfterSeconds=30 * 24 * 3600)],
    "outbox": [IndexModel([("seq", ASCENDING)])],
    # Executor replicas' heartbeats (services/executor/shards.py); a replica gone for a minute is forgotten.
    "executor_replicas": [IndexModel([("seen_at", ASCENDING)], expireAfterSeconds=60)],
    # Kill-switch trips by the executor (services/executor/handlers.py), kept until someone answers them.
    "executor_trips": [IndexModel([("sent", ASCENDING)]), IndexModel([("tripped_at", DESCENDING)])],
    # Confirmations a flatten waits for (services/control/handlers.py): gone once expired.
    "control_confirmations": [IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=0)],
}


def connect(uri: str, *, app_name: str, timeout_ms: int = 5000) -> AsyncMongoClient:
    """No I/O happens here: the client connects on first use."""
    return AsyncMongoClient(
        uri,
        appname=f"tvtb-{app_name}",
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        tz_aware=True,
    )


def database(client: AsyncMongoClient, name: str) -> AsyncDatabase:
    return client.get_database(name, codec_options=CODEC_OPTIONS)


async def ensure_indexes(db: AsyncDatabase, collections: tuple[str, ...] | None = None) -> None:
    for name, models in INDEXES.items():
        if collections is None or name in collections:
            await db[name].create_indexes(models)


async def ping(db: AsyncDatabase) -> bool:
    try:
        await db.command("ping")
        return True
    except Exception:
        return False


class GroupedInserts:
    """insert_one for tasks that write to the same collections at once: what arrives while one insert_many is on its
    way goes together in the next (a group commit), so a busy executor writes its claims and orders in a few round
    trips, and a quiet one, one at a time, at once. Each caller waits for its own document and gets its own outcome:
    DuplicateKeyError for a key already taken, as from insert_one.
    """

    def __init__(self, db: AsyncDatabase, *, max_batch: int = 64) -> None:
        self._db = db
        self._max_batch = max_batch
        self._pending: dict[str, list[tuple[dict, asyncio.Future]]] = {}
        self._senders: dict[str, asyncio.Task] = {}

    async def insert_one(self, collection: str, document: dict) -> None:
        done = asyncio.get_running_loop().create_future()
        done.add_done_callback(_retrieved)  # a caller that stopped waiting leaves no "never retrieved" warning
        self._pending.setdefault(collection, []).append((document, done))
        if collection not in self._senders:
            self._senders[collection] = asyncio.create_task(self._send(collection))
        # Shielded: a caller that stops waiting does not take the others' write with it (the document may still be
        # written, as with insert_one).
        await asyncio.shield(done)

    async def _send(self, collection: str) -> None:
        try:
            while self._pending.get(collection):
                waiting = self._pending[collection]
                batch, self._pending[collection] = waiting[: self._max_batch], waiting[self._max_batch :]
                await self._write(collection, batch)
        finally:
            del self._senders[collection]
            for _, done in self._pending.pop(collection, []):  # stopped (cancelled): nobody is left waiting forever
                if not done.done():
                    done.set_exception(RuntimeError("the insert was not sent: the writer stopped"))

    async def _write(self, collection: str, batch: list[tuple[dict, asyncio.Future]]) -> None:
        failed: dict[int, Exception] = {}
        try:
            await self._db[collection].insert_many([document for document, _ in batch], ordered=False)
        except BulkWriteError as error:
            for write_error in error.details.get("writeErrors", []):
                code, message = write_error.get("code"), write_error.get("errmsg", "write failed")
                failed[write_error["index"]] = (DuplicateKeyError(message, code, write_error) if code in DUPLICATE_KEY_CODES
                                                else OperationFailure(message, code, write_error))
            concern = error.details.get("writeConcernErrors") or []
            if concern:  # as insert_one would raise it: written, but not as durably as asked
                for index in range(len(batch)):
                    failed.setdefault(index, WriteConcernError(concern[0].get("errmsg", "write concern error"),
                                                               concern[0].get("code"), concern[0]))
        except BaseException as error:  # nothing is known of any of them: each caller meets the error
            for _, done in batch:
                if not done.done():
                    done.set_exception(error if isinstance(error, Exception) else RuntimeError("the write was interrupted"))
            if not isinstance(error, Exception):
                raise
            return
        for index, (_, done) in enumerate(batch):
            if not done.done():
                if index in failed:
                    done.set_exception(failed[index])
                else:
                    done.set_result(None)


def _retrieved(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()
