"""The notifier's HTTP side: /healthz, /readyz and /metrics on port 9103."""

from __future__ import annotations

from aiohttp import web

from services.notifier.bootstrap import Notifier
from shared import mongo
from shared.messaging import Consumer
from shared.observability import Readiness, add_health_routes


def create_app(notifier: Notifier, consumer: Consumer) -> web.Application:
    app = web.Application()

    async def readiness() -> Readiness:
        broker = not notifier.connection.is_closed
        database = await mongo.ping(notifier.deps.db)
        detail = {"broker": broker, "mongo": database, "consuming": consumer.consuming, "messenger": notifier.deps.messenger.name,
                  **notifier.killswitch.describe()}
        return Readiness(ready=broker and database and consumer.consuming, detail=detail)

    add_health_routes(app, notifier.registry, readiness)
    return app
