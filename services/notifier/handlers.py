"""The notifier's dependencies and metrics; services/notifier/dispatch.py does the sending."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter
from pymongo.asynchronous.database import AsyncDatabase

from services.notifier.messenger import Messenger

log = logging.getLogger(__name__)

LOG_CHAT = 0  # where the log messenger "sends": no Telegram chat has id 0


class NotifierMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.notifications = Counter("tvtb_notifications_total", "Notifications by result (one per event and chat)", ["result"],
                                     registry=registry)
        for result in ("sent", "failed", "delayed", "duplicate"):  # exported at 0: increase() sees the first one
            self.notifications.labels(result)
        self.queued = Counter("tvtb_notifications_queued_total", "Notifications queued (one per event and chat)", registry=registry)
        self.digests = Counter("tvtb_notification_digests_total", "Digests sent: several events in one message", registry=registry)


@dataclass
class NotifierDeps:
    db: AsyncDatabase
    messenger: Messenger
    chat_ids: tuple[int, ...]
    metrics: NotifierMetrics
