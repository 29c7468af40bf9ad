"""Settings of the control service."""

from __future__ import annotations

from typing import Annotated

from pydantic import SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from shared.settings import ServiceSettings, TradingMode, parse_ids


class ControlSettings(ServiceSettings):
    control_api_token: SecretStr
    initial_autotrade: bool | None = None
    control_port: int = 8081
    # The control bot (Telegram commands): the same bot as the notifier's, its own session file.
    telegram_api_id: int | None = None
    telegram_api_hash: SecretStr | None = None
    telegram_bot_token: SecretStr | None = None
    telegram_admin_ids: Annotated[tuple[int, ...], NoDecode] = ()
    telegram_control_session_path: str = "control.session"

    @field_validator("telegram_admin_ids", mode="before")
    @classmethod
    def _ids(cls, value: object) -> tuple[int, ...]:
        return parse_ids(value)

    @model_validator(mode="after")
    def _all_or_nothing(self) -> "ControlSettings":
        given = {"TELEGRAM_API_ID": self.telegram_api_id is not None, "TELEGRAM_API_HASH": self.telegram_api_hash is not None,
                 "TELEGRAM_BOT_TOKEN": self.telegram_bot_token is not None}
        if any(given.values()) and not all(given.values()):
            missing = ", ".join(name for name, present in given.items() if not present)
            raise ValueError(f"Telegram is half configured: {missing} missing (set all three, or none for no Telegram commands)")
        if all(given.values()) and not self.telegram_admin_ids:
            raise ValueError("TELEGRAM_ADMIN_IDS must name at least one user when Telegram is configured (who may command)")
        return self

    @property
    def telegram_enabled(self) -> bool:
        return self.telegram_bot_token is not None

    @field_validator("control_api_token")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (it guards the kill switch)")
        return value

    @property
    def initial_autotrade_effective(self) -> bool:
        """Default on in paper mode, off where real money (demo or live keys) is at stake."""
        if self.initial_autotrade is not None:
            return self.initial_autotrade
        return self.trading_mode is TradingMode.PAPER
