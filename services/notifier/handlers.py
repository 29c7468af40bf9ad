"""What happens to each event: render it, send it to each chat once, record every outcome."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter
from pymongo.asynchronous.database import AsyncDatabase

from services.notifier.format import render
from services.notifier.messenger import DeliveryDelayed, DeliveryFailed, Messenger
from shared.contracts import Message, utcnow

log = logging.getLogger(__name__)

LOG_CHAT = 0  # where the log messenger "sends": no Telegram chat has id 0


class NotifierMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.notifications = Counter("tvtb_notifications_total", "Notifications by result", ["result"], registry=registry)


@dataclass
class NotifierDeps:
    db: AsyncDatabase
    messenger: Messenger
    chat_ids: tuple[int, ...]
    metrics: NotifierMetrics


async def handle_event(event: Message, event_id: str, deps: NotifierDeps) -> None:
    text = render(event)
    if text is None:
        return
    signal_id = getattr(event, "signal_id", None)
    for chat_id in deps.chat_ids or (LOG_CHAT,):
        done = await deps.db.notifications.find_one({"event_id": event_id, "chat_id": chat_id, "sent": True})
        if done is not None:
            deps.metrics.notifications.labels("duplicate").inc()
            continue
        record = {"event_id": event_id, "chat_id": chat_id, "signal_id": signal_id, "type": event.TYPE,
                  "messenger": deps.messenger.name, "at": utcnow()}
        try:
            await deps.messenger.send(chat_id, text)
        except DeliveryFailed as error:
            # This chat will never take it; the others still get theirs.
            deps.metrics.notifications.labels("failed").inc()
            log.error("notification failed", extra={"chat_id": chat_id, "reason": error.reason})
            await _record(deps, {**record, "sent": False, "error": error.reason})
            continue
        except DeliveryDelayed as error:
            deps.metrics.notifications.labels("delayed").inc()
            await _record(deps, {**record, "sent": False, "error": error.reason})
            raise  # the event goes back to the queue and is tried again; chats already served are skipped
        deps.metrics.notifications.labels("sent").inc()
        await _record(deps, {**record, "sent": True, "error": None})


async def _record(deps: NotifierDeps, record: dict) -> None:
    await deps.db.notifications.update_one(
        {"event_id": record["event_id"], "chat_id": record["chat_id"]}, {"$set": record}, upsert=True
    )
