"""The executor's HTTP side: /healthz, /readyz (ready only when it may trade) and /metrics, on port 9102."""

from __future__ import annotations

from aiohttp import web

from services.executor.bootstrap import Executor
from shared import mongo
from services.executor.shards import ShardConsumers
from shared.observability import Readiness, add_health_routes


def create_app(executor: Executor, consumer: ShardConsumers) -> web.Application:
    app = web.Application()

    async def readiness() -> Readiness:
        broker = not executor.connection.is_closed
        database = await mongo.ping(executor.deps.db)
        detail = {
            "broker": broker,
            "mongo": database,
            "exchange": executor.exchange_ready.is_set(),
            "consuming": consumer.consuming,
            "replica": consumer.replica,
            "shards": consumer.owned,
            **executor.deps.view.describe(),
        }
        ready = broker and database and executor.exchange_ready.is_set() and consumer.consuming and executor.deps.view.known.is_set()
        return Readiness(ready=ready, detail=detail)

    add_health_routes(app, executor.registry, readiness)
    return app
