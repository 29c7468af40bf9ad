"""Builds the ingress's dependencies in start order and closes them in reverse."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aio_pika.abc import AbstractRobustConnection
from pymongo.asynchronous.database import AsyncDatabase

from services.ingress.durable import GroupCommit, RejectionNotices
from services.ingress.guards import RateLimiter
from services.ingress.settings import IngressSettings
from services.ingress.store import Outbox, RecentSignals, Recorder
from shared import messaging
from shared.killswitch import KillSwitchView, follow
from shared.bootstrap import open_infrastructure


@dataclass
class Ingress:
    settings: IngressSettings
    db: AsyncDatabase
    connection: AbstractRobustConnection
    publisher: messaging.Publisher
    recent: RecentSignals
    recorder: Recorder
    outbox: Outbox
    committer: GroupCommit
    token_limiter: RateLimiter
    ip_limiter: RateLimiter
    inflight: dict[str, asyncio.Future] = field(default_factory=dict)
    # Shown, not obeyed: the ingress accepts alerts whatever the mode; the executor records them skipped.
    killswitch: KillSwitchView = field(default_factory=KillSwitchView)
    rejections: RejectionNotices | None = None  # set in build(): refusals told to the trader through the notifier
    secrets: tuple[str, ...] = ()  # every secret the process holds, kept out of the reasons it gives
    token_secrets: tuple[str, ...] = ()  # the webhook tokens' secrets: never let into a signal


async def _stop(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@contextlib.asynccontextmanager
async def build(settings: IngressSettings) -> AsyncIterator[Ingress]:
    async with contextlib.AsyncExitStack() as stack:
        infra = await open_infrastructure(stack, settings, "ingress", ("webhook_requests", "outbox"))
        publisher = await messaging.Publisher.open(infra.connection, timeout=settings.publish_timeout_s)
        recent = RecentSignals(resend_window_s=settings.webhook_resend_window_s)
        await recent.load(infra.db.webhook_requests)
        recorder = Recorder(infra.db.webhook_requests)
        outbox = Outbox(infra.db.outbox, publisher, timeout_s=settings.publish_timeout_s)
        await outbox.load()
        ingress = Ingress(
            settings=settings, db=infra.db, connection=infra.connection, publisher=publisher, recent=recent,
            recorder=recorder, outbox=outbox,
            committer=GroupCommit(publisher, outbox, publish_timeout_s=settings.publish_timeout_s),
            token_limiter=RateLimiter(settings.webhook_rate_limit_per_token),
            ip_limiter=RateLimiter(settings.webhook_rate_limit_per_ip),
        )
        ingress.rejections = RejectionNotices(publisher)
        ingress.secrets = tuple(secret for secret in settings.secret_values() if secret)
        ingress.token_secrets = tuple(token.secret.get_secret_value() for token in settings.webhook_tokens)
        stack.push_async_callback(ingress.rejections.close)
        view, reader = await follow(infra.connection)
        stack.push_async_callback(reader.stop)
        ingress.killswitch = view
        stack.push_async_callback(recorder.flush)  # runs after the writer stops: the last records are written
        stack.push_async_callback(_stop, asyncio.create_task(recorder.run()))
        stack.push_async_callback(_stop, asyncio.create_task(outbox.run()))
        stack.push_async_callback(ingress.committer.close)
        yield ingress
