"""What every service's composition root starts first: MongoDB with its indexes, then the broker with its topology."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from aio_pika.abc import AbstractRobustConnection
from pymongo.asynchronous.database import AsyncDatabase

from shared import messaging, mongo
from shared.settings import ServiceSettings


@dataclass
class Infrastructure:
    db: AsyncDatabase
    connection: AbstractRobustConnection


async def open_infrastructure(
    stack: contextlib.AsyncExitStack, settings: ServiceSettings, service: str, collections: tuple[str, ...]
) -> Infrastructure:
    """Connect in dependency order; `stack` closes them in reverse."""
    client = mongo.connect(settings.mongo_uri.get_secret_value(), app_name=service)
    stack.push_async_callback(client.close)
    db = mongo.database(client, settings.mongo_db)
    await mongo.ensure_indexes(db, collections)

    connection = await messaging.connect(settings.amqp_url.get_secret_value(), f"tvtb-{service}")
    stack.push_async_callback(connection.close)
    channel = await connection.channel()
    await messaging.declare_topology(channel)
    await channel.close()
    return Infrastructure(db=db, connection=connection)
