"""MongoDB access through PyMongo's async client: one client per process, Decimal stored exactly, indexes at start."""

from __future__ import annotations

from decimal import Decimal

from bson.codec_options import CodecOptions, TypeCodec, TypeRegistry
from bson.decimal128 import Decimal128
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.database import AsyncDatabase


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
