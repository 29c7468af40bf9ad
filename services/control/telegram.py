"""The control bot: Telethon receiving commands for the command table (commands.py) and sending its answers.

Its own session file (TELEGRAM_CONTROL_SESSION_PATH), never the notifier's. Telethon runs handlers concurrently and
swallows their exceptions: every command is wrapped, so a failure is logged and answered, never lost silently.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from telethon import TelegramClient, errors, events

from services.control.commands import Command, CommandTable
from shared.contracts import utcnow
from shared.errors import ConfigurationError

log = logging.getLogger(__name__)


class TelegramCommands:
    def __init__(self, *, api_id: int, api_hash: str, bot_token: str, session_path: str, table: CommandTable,
                 client_factory: Callable[..., TelegramClient] | None = None) -> None:
        self._api_id = api_id
        self._api_hash = api_hash
        self._bot_token = bot_token
        self._session_path = session_path
        self._table = table
        self._client_factory = client_factory or TelegramClient
        self.client: TelegramClient | None = None

    @property
    def connected(self) -> bool:
        return self.client is not None and self.client.is_connected()

    async def start(self) -> None:
        client = self._client_factory(self._session_path, self._api_id, self._api_hash, flood_sleep_threshold=5,
                                      raise_last_call_error=True)
        rejected = None
        try:
            await client.start(bot_token=self._bot_token)
        except (errors.AccessTokenInvalidError, errors.AccessTokenExpiredError):
            rejected = "Telegram rejected the bot token (check TELEGRAM_BOT_TOKEN)"
        except errors.ApiIdInvalidError:
            rejected = "Telegram rejected the api_id/api_hash pair (check TELEGRAM_API_ID and TELEGRAM_API_HASH)"
        except BaseException:
            await client.disconnect()
            raise
        if rejected is not None:
            await client.disconnect()
            raise ConfigurationError(rejected)  # outside the except: Telethon's error carries the login request
        # Every incoming command; who sent it is checked by the table, so a stranger is logged too.
        # Private chats only: an answer (positions, a flatten code) must not be posted to a whole group.
        client.add_event_handler(self._on_message, events.NewMessage(incoming=True, pattern=r"^/", func=lambda e: e.is_private))
        self.client = client
        log.info("telegram control bot listening for commands")

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            await client.disconnect()

    async def _on_message(self, event: events.NewMessage.Event) -> None:
        command = Command(user_id=event.sender_id or 0, text=event.raw_text or "", sent_at=event.date)
        try:
            answer = await self._table.run(command, utcnow())
        except Exception:
            log.exception("telegram command failed", extra={"user_id": command.user_id})
            answer = "That failed on our side; check /status before trying again (the control service logged why)."
        if answer is None:
            return
        try:
            await event.respond(answer, parse_mode="html", link_preview=False)
        except (errors.RPCError, OSError, ValueError) as error:
            log.warning("telegram answer not sent", extra={"user_id": command.user_id, "error": type(error).__name__})
