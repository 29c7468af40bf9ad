"""Settings of the executor."""

from __future__ import annotations

from decimal import Decimal

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
    fill_poll_s: float = Field(default=5.0, gt=0)  # how often resting limit orders are looked up for fills
    markets_refresh_s: float = Field(default=3600.0, gt=0)  # how often BingX's contract list is loaded again
    executor_max_consecutive_failures: int = Field(default=5, ge=1, le=1000)
    # Risk limits, checked before every opening order; 0 turns one off.
    risk_max_leverage: int = Field(default=0, ge=0, le=150)
    risk_max_notional_usdt: Decimal = Field(default=Decimal(0), ge=0)  # one side of one symbol, after the order
    risk_max_orders_per_minute: int = Field(default=0, ge=0)  # opening orders of the account, every replica's
    risk_daily_loss_limit_usdt: Decimal = Field(default=Decimal(0), ge=0)  # equity lost since the day's first entry (UTC)

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
