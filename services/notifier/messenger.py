"""The Messenger port: where notifications go. Telethon in production, the log when Telegram is not configured."""

from __future__ import annotations

import logging
from typing import Protocol

from shared.errors import PermanentError, TemporaryError

log = logging.getLogger(__name__)


class DeliveryDelayed(TemporaryError):
    """Telegram asked us to wait (flood control) or could not be reached: try again after `retry_after` seconds."""

    def __init__(self, reason: str, retry_after: float = 1.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class DeliveryFailed(PermanentError):
    """This message can never reach this chat (unknown chat, bot blocked, bad text): record it and go on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Messenger(Protocol):
    name: str

    async def start(self) -> None: ...

    async def send(self, chat_id: int, html: str, *, silent: bool = False) -> None:
        """Deliver one HTML message (at most 4,096 characters after parsing), without a sound when `silent`, or
        raise DeliveryDelayed/DeliveryFailed."""

    async def close(self) -> None: ...


class LogMessenger:
    """Writes each notification to the log: the messenger when no Telegram settings are given."""

    name = "log"

    def __init__(self) -> None:
        self.sent: list[tuple[int, str]] = []

    async def start(self) -> None:
        return None

    async def send(self, chat_id: int, html: str, *, silent: bool = False) -> None:
        self.sent.append((chat_id, html))
        log.info("notification", extra={"chat_id": chat_id, "text": html, "silent": silent})

    async def close(self) -> None:
        return None
