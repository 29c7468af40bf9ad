"""Builds the ingress's dependencies in start order and closes them in reverse."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aio_pika.abc import AbstractRobustConnection
from pymongo.asynchronous.database import AsyncDatabase

from services.ingress.settings import IngressSettings
from shared import messaging
from shared.bootstrap import open_infrastructure


@dataclass
class Ingress:
    settings: IngressSettings
    db: AsyncDatabase
    connection: AbstractRobustConnection
    publisher: messaging.Publisher


@contextlib.asynccontextmanager
async def build(settings: IngressSettings) -> AsyncIterator[Ingress]:
    async with contextlib.AsyncExitStack() as stack:
        infra = await open_infrastructure(stack, settings, "ingress", ("ingress_rejections",))
        publisher = await messaging.Publisher.open(infra.connection, timeout=settings.publish_timeout_s)
        yield Ingress(settings=settings, db=infra.db, connection=infra.connection, publisher=publisher)
