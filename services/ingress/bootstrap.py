"""Builds the ingress's dependencies in start order and closes them in reverse."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aio_pika.abc import AbstractRobustConnection
from pymongo.asynchronous.database import AsyncDatabase

from services.ingress.settings import IngressSettings
from shared import messaging, mongo


@dataclass
class Ingress:
    settings: IngressSettings
    db: AsyncDatabase
    connection: AbstractRobustConnection
    publisher: messaging.Publisher


@contextlib.asynccontextmanager
async def build(settings: IngressSettings) -> AsyncIterator[Ingress]:
    async with contextlib.AsyncExitStack() as stack:
        client = mongo.connect(settings.mongo_uri.get_secret_value(), app_name="ingress")
        stack.push_async_callback(client.close)
        db = mongo.database(client, settings.mongo_db)
        await mongo.ensure_indexes(db, ("ingress_rejections",))

        connection = await messaging.connect(settings.amqp_url.get_secret_value(), "tvtb-ingress")
        stack.push_async_callback(connection.close)
        channel = await connection.channel()
        await messaging.declare_topology(channel)
        publisher = await messaging.Publisher.open(connection, timeout=settings.publish_timeout_s)
        yield Ingress(settings=settings, db=db, connection=connection, publisher=publisher)
