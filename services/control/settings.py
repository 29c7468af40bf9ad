"""Settings of the control service."""

from __future__ import annotations

from pydantic import SecretStr, field_validator

from shared.settings import ServiceSettings, TradingMode


class ControlSettings(ServiceSettings):
    control_api_token: SecretStr
    initial_autotrade: bool | None = None
    control_port: int = 8081

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
