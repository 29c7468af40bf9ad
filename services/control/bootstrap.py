"""Builds the control service's dependencies in start order and closes them in reverse."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aio_pika.abc import AbstractRobustConnection
from pymongo import AsyncMongoClient

from services.control.handlers import ControlDeps
from services.control.settings import ControlSettings
from shared import messaging, mongo


@dataclass
class Control:
    settings: ControlSettings
    deps: ControlDeps
    connection: AbstractRobustConnection
    client: AsyncMongoClient


@contextlib.asynccontextmanager
async def build(settings: ControlSettings) -> AsyncIterator[Control]:
    async with contextlib.AsyncExitStack() as stack:
        client = mongo.connect(settings.mongo_uri.get_secret_value(), app_name="control")
        stack.push_async_callback(client.close)
        db = mongo.database(client, settings.mongo_db)
        await mongo.ensure_indexes(db, ("control_history",))

        connection = await messaging.connect(settings.amqp_url.get_secret_value(), "tvtb-control")
        stack.push_async_callback(connection.close)
        channel = await connection.channel()
        await messaging.declare_topology(channel)
        publisher = await messaging.Publisher.open(connection)

        yield Control(settings=settings, deps=ControlDeps(db=db, publisher=publisher), connection=connection, client=client)
