"""Builds the control service's dependencies in start order and closes them in reverse."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aio_pika.abc import AbstractRobustConnection

from services.control.handlers import ControlDeps
from services.control.settings import ControlSettings
from shared import messaging
from shared.bootstrap import open_infrastructure
from shared.killswitch import stream_reader


@dataclass
class Control:
    settings: ControlSettings
    deps: ControlDeps
    connection: AbstractRobustConnection


@contextlib.asynccontextmanager
async def build(settings: ControlSettings) -> AsyncIterator[Control]:
    async with contextlib.AsyncExitStack() as stack:
        infra = await open_infrastructure(stack, settings, "control", ("control_history", "control_confirmations"))
        publisher = await messaging.Publisher.open(infra.connection)
        deps = ControlDeps(db=infra.db, publisher=publisher, connection=infra.connection)
        reader = stream_reader(await infra.connection.channel(), deps.view, connection=infra.connection)
        await reader.start()
        stack.push_async_callback(reader.stop)
        yield Control(settings=settings, deps=deps, connection=infra.connection)
