"""Settings of the notifier: Telegram is optional; without it notifications go to the log."""

from __future__ import annotations

from typing import Annotated

from pydantic import SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from shared.settings import ServiceSettings, parse_ids


class NotifierSettings(ServiceSettings):
    telegram_api_id: int | None = None
    telegram_api_hash: SecretStr | None = None
    telegram_bot_token: SecretStr | None = None
    telegram_chat_ids: Annotated[tuple[int, ...], NoDecode] = ()
    telegram_session_path: str = "notifier.session"
    notifier_port: int = 9103

    @field_validator("telegram_chat_ids", mode="before")
    @classmethod
    def _ids(cls, value: object) -> tuple[int, ...]:
        return parse_ids(value)

    @model_validator(mode="after")
    def _all_or_nothing(self) -> "NotifierSettings":
        given = {
            "TELEGRAM_API_ID": self.telegram_api_id is not None,
            "TELEGRAM_API_HASH": self.telegram_api_hash is not None,
            "TELEGRAM_BOT_TOKEN": self.telegram_bot_token is not None,
        }
        if any(given.values()) and not all(given.values()):
            missing = ", ".join(name for name, present in given.items() if not present)
            raise ValueError(f"Telegram is half configured: {missing} missing (set all three, or none for the log)")
        if all(given.values()) and not self.telegram_chat_ids:
            raise ValueError("TELEGRAM_CHAT_IDS must name at least one chat when Telegram is configured")
        return self

    @property
    def telegram_enabled(self) -> bool:
        return self.telegram_bot_token is not None
