"""Settings of the executor."""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator

from shared.settings import ServiceSettings, TradingMode

PAPER_DEFAULT_BASE_URL = "http://127.0.0.1:8090"


class ExecutorSettings(ServiceSettings):
    bingx_api_key: SecretStr
    bingx_api_secret: SecretStr
    bingx_base_url: str | None = None
    executor_port: int = 9102
    exchange_timeout_s: float = Field(default=10.0, gt=0)
    # ccxt's client-side throttle (BingX allows about 5 orders/s per key). Off by default only against the simulator.
    exchange_rate_limit: bool | None = None
    # This many venue failures in a row (unreachable, timing out, busy) turn entries off by themselves.
    executor_max_consecutive_failures: int = Field(default=5, ge=1, le=1000)

    @model_validator(mode="after")
    def _venue(self) -> "ExecutorSettings":
        if self.bingx_base_url is not None and not self.bingx_base_url.startswith(("http://", "https://")):
            raise ValueError("BINGX_BASE_URL must start with http:// or https://")
        return self

    @property
    def venue_base_url(self) -> str | None:
        """Where orders go: the simulator in paper mode unless told otherwise; BingX itself (None) in demo and live."""
        if self.bingx_base_url:
            return self.bingx_base_url.rstrip("/")
        return PAPER_DEFAULT_BASE_URL if self.trading_mode is TradingMode.PAPER else None

    @property
    def throttle(self) -> bool:
        if self.exchange_rate_limit is not None:
            return self.exchange_rate_limit
        return self.trading_mode is not TradingMode.PAPER

    @property
    def sandbox(self) -> bool:
        return self.trading_mode is TradingMode.DEMO
