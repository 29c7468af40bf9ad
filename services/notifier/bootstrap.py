"""Builds the notifier's dependencies in start order and closes them in reverse."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aio_pika.abc import AbstractRobustConnection
from prometheus_client import CollectorRegistry

from services.notifier.handlers import NotifierDeps, NotifierMetrics
from services.notifier.messenger import LogMessenger, Messenger
from services.notifier.settings import NotifierSettings
from shared.bootstrap import open_infrastructure
from shared.killswitch import KillSwitchView, expose_mode, follow


@dataclass
class Notifier:
    settings: NotifierSettings
    deps: NotifierDeps
    connection: AbstractRobustConnection
    registry: CollectorRegistry
    killswitch: KillSwitchView
    dispatcher: object | None = None  # services/notifier/dispatch.py, while consuming


def default_messenger(settings: NotifierSettings) -> Messenger:
    if not settings.telegram_enabled:
        return LogMessenger()
    from services.notifier.telegram import TelethonMessenger

    assert settings.telegram_api_id is not None and settings.telegram_api_hash and settings.telegram_bot_token
    return TelethonMessenger(
        api_id=settings.telegram_api_id,
        api_hash=settings.telegram_api_hash.get_secret_value(),
        bot_token=settings.telegram_bot_token.get_secret_value(),
        session_path=settings.telegram_session_path,
    )


@contextlib.asynccontextmanager
async def build(settings: NotifierSettings, *, messenger: Messenger | None = None) -> AsyncIterator[Notifier]:
    registry = CollectorRegistry()
    async with contextlib.AsyncExitStack() as stack:
        infra = await open_infrastructure(stack, settings, "notifier", ("notifications",))

        messenger = messenger or default_messenger(settings)
        await messenger.start()
        stack.push_async_callback(messenger.close)

        deps = NotifierDeps(db=infra.db, messenger=messenger, chat_ids=settings.telegram_chat_ids, metrics=NotifierMetrics(registry))
        view, reader = await follow(infra.connection)  # shown in /readyz and the metrics; the notifier does not trade
        stack.push_async_callback(reader.stop)
        expose_mode(registry, view)
        yield Notifier(settings=settings, deps=deps, connection=infra.connection, registry=registry, killswitch=view)
