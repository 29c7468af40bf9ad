"""Settings of the executor."""

from __future__ import annotations

from decimal import Decimal

from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from shared.settings import ServiceSettings, TradingMode

PAPER_DEFAULT_BASE_URL = "http://127.0.0.1:8090"


class ExecutorSettings(ServiceSettings):
    bingx_api_key: SecretStr
    bingx_api_secret: SecretStr
    bingx_base_url: str | None = None
    executor_port: int = 9102
    # What an entry uses when its alert does not say: `BTC-USDT=10,ETH-USDT=5,*=3` and `*=isolated,BTC-USDT=cross`
    # (BingX's symbol names; `*` for every other symbol). Unset: BingX's current setting is left as it is.
    symbol_leverage: Annotated[dict[str, int], NoDecode] = Field(default_factory=dict)
    symbol_margin_mode: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    exchange_timeout_s: float = Field(default=10.0, gt=0)
    # ccxt's client-side throttle (BingX allows about 5 orders/s per key). Off by default only against the simulator.
    exchange_rate_limit: bool | None = None
    # This many venue failures in a row (unreachable, timing out, busy) turn entries off by themselves.
    fill_poll_s: float = Field(default=5.0, gt=0)  # how often resting limit orders are looked up for fills
    markets_refresh_s: float = Field(default=3600.0, gt=0)  # how often BingX's contract list is loaded again
    account_snapshot_s: float = Field(default=10.0, gt=0)  # how often positions and balance are kept for /status, /positions
    executor_max_consecutive_failures: int = Field(default=5, ge=1, le=1000)
    # Risk limits, checked before every opening order; 0 turns one off.
    risk_max_leverage: int = Field(default=0, ge=0, le=150)
    risk_max_notional_usdt: Decimal = Field(default=Decimal(0), ge=0)  # one side of one symbol, after the order
    risk_max_orders_per_minute: int = Field(default=0, ge=0)  # opening orders of the account, every replica's
    risk_daily_loss_limit_usdt: Decimal = Field(default=Decimal(0), ge=0)  # equity lost since the day's first entry (UTC)

    @field_validator("symbol_leverage", mode="before")
    @classmethod
    def _leverage(cls, value: object):
        pairs = _pairs(value, "SYMBOL_LEVERAGE")
        try:
            parsed = {symbol: int(level) for symbol, level in pairs.items()}
        except ValueError:
            raise ValueError("SYMBOL_LEVERAGE values must be whole numbers, e.g. BTC-USDT=10") from None
        if any(not 1 <= level <= 150 for level in parsed.values()):
            raise ValueError("SYMBOL_LEVERAGE values must be from 1 to 150")
        return parsed

    @field_validator("symbol_margin_mode", mode="before")
    @classmethod
    def _margin(cls, value: object):
        pairs = {symbol: mode.lower() for symbol, mode in _pairs(value, "SYMBOL_MARGIN_MODE").items()}
        if any(mode not in ("isolated", "cross") for mode in pairs.values()):
            raise ValueError("SYMBOL_MARGIN_MODE values must be isolated or cross")
        return pairs

    def default_for(self, table: dict, symbol: str):
        """The default of a ccxt symbol (BTC/USDT:USDT is BTC-USDT here), else `*`'s, else None."""
        exchange_id = symbol.split(":")[0].replace("/", "-")
        return table.get(exchange_id, table.get("*"))

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


def _pairs(value: object, setting: str) -> dict[str, str]:
    if isinstance(value, dict):
        return {str(k).upper(): str(v) for k, v in value.items()}
    if value is None or value == "":
        return {}
    pairs = {}
    for part in str(value).split(","):
        symbol, sep, setting_value = part.strip().partition("=")
        if not sep or not symbol.strip() or not setting_value.strip():
            raise ValueError(f"{setting} must look like BTC-USDT=10,*=5")
        pairs[symbol.strip().upper()] = setting_value.strip()
    return pairs
