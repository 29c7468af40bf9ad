"""The Telethon adapter of the Messenger port: a send-only bot client, with Telethon's errors mapped to ours."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from telethon import TelegramClient, errors

from services.notifier.messenger import DeliveryDelayed, DeliveryFailed
from shared.errors import ConfigurationError

log = logging.getLogger(__name__)

# Flood waits that carry the number of seconds Telegram wants us to wait.
_TIMED_WAITS = (errors.FloodWaitError, errors.SlowModeWaitError, errors.FloodPremiumWaitError)


class TelethonMessenger:
    """Sends HTML notifications as a Telegram bot; raises DeliveryDelayed or DeliveryFailed, never Telethon's errors."""

    name = "telegram"

    def __init__(
        self,
        *,
        api_id: int,
        api_hash: str,
        bot_token: str,
        session_path: str,
        flood_sleep_threshold: int = 5,
        client_factory: Callable[..., TelegramClient] | None = None,
        send_timeout: float = 60.0,
    ) -> None:
        self._api_id = api_id
        self._api_hash = api_hash
        self._bot_token = bot_token
        self._session_path = session_path
        self._flood_sleep_threshold = flood_sleep_threshold
        self._client_factory = client_factory or TelegramClient
        # Telethon waits forever for an answer while it reconnects; the notifier's queue must keep moving.
        self._send_timeout = send_timeout
        self._client: TelegramClient | None = None

    async def start(self) -> None:
        client = self._client_factory(
            self._session_path,
            self._api_id,
            self._api_hash,
            receive_updates=False,
            flood_sleep_threshold=self._flood_sleep_threshold,
            # Without this, retries that end in server errors surface as a bare ValueError, which reads as permanent.
            raise_last_call_error=True,
        )
        rejected: str | None = None
        try:
            await client.start(bot_token=self._bot_token)
            me = await client.get_me()
        except (errors.AccessTokenInvalidError, errors.AccessTokenExpiredError):
            rejected = "Telegram rejected the bot token (check the notifier's bot token setting)"
        except errors.ApiIdInvalidError:
            rejected = "Telegram rejected the api_id/api_hash pair (check the notifier's Telegram API settings)"
        except (errors.RPCError, OSError, asyncio.TimeoutError, ValueError) as e:
            await client.disconnect()
            # Not chained: the login request (with the token) rides on Telethon's error.
            raise self._translate(e) from None
        except BaseException:
            await client.disconnect()
            raise
        if rejected is not None:
            await client.disconnect()
            # Raised outside the except clause on purpose: Telethon's error holds the login request, and its
            # traceback the frames, that carry the token; neither must ride along as __cause__ or __context__.
            raise ConfigurationError(rejected)
        self._client = client
        log.info("telegram bot logged in", extra={"bot_id": me.id, "bot_username": me.username})

    async def send(self, chat_id: int, html: str, *, silent: bool = False) -> None:
        if self._client is None:
            raise RuntimeError("TelethonMessenger.send() called before start()")
        try:
            await asyncio.wait_for(
                self._client.send_message(chat_id, html, parse_mode="html", link_preview=False, silent=silent),
                timeout=self._send_timeout,
            )
        except (errors.RPCError, OSError, asyncio.TimeoutError, ValueError) as e:
            raise self._translate(e) from e

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.disconnect()

    def _translate(self, e: BaseException) -> DeliveryDelayed | DeliveryFailed:
        """Temporary for flood control, the network and Telegram's own failures; permanent for anything about the
        chat or the text (400/403: PEER_ID_INVALID, CHAT_WRITE_FORBIDDEN, USER_IS_BLOCKED, CHANNEL_PRIVATE,
        MESSAGE_TOO_LONG...) and for Telethon's ValueError ("Could not find the input entity", empty text)."""
        reason = self._redact(f"{type(e).__name__}: {e}")
        if isinstance(e, _TIMED_WAITS):
            return DeliveryDelayed(reason, retry_after=e.seconds)
        if isinstance(e, errors.RPCError):
            # Telegram also answers with negative codes (-500 "No workers running", -503 "Timeout").
            if isinstance(e, (errors.FloodError, errors.ServerError, errors.TimedOutError)) or abs(e.code or 0) >= 500:
                return DeliveryDelayed(reason)
            return DeliveryFailed(reason)
        if isinstance(e, (OSError, asyncio.TimeoutError)):
            return DeliveryDelayed(reason)
        return DeliveryFailed(reason)

    def _redact(self, text: str) -> str:
        # Telethon's messages name only the request type, but reasons end up in Mongo and in chats: make sure.
        for secret in (self._bot_token, self._bot_token.partition(":")[2], self._api_hash):
            if secret:
                text = text.replace(secret, "***")
        return text
