"""Settings of the BingX simulator, read once from the environment."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from services.bingx_sim.engine import BUILTIN_PRICES, is_symbol

LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


def parse_prices(raw: object) -> dict[str, Decimal]:
    """`BTC-USDT=60000,ETH-USDT=3000` (or an already-built mapping) as symbol -> positive Decimal price."""
    if isinstance(raw, dict):
        items = [(str(symbol), str(price)) for symbol, price in raw.items()]
    elif isinstance(raw, str):
        items = []
        for position, entry in enumerate((part.strip() for part in raw.split(",")), start=1):
            if not entry:
                continue
            symbol, sep, price = entry.partition("=")
            if not sep:
                raise ValueError(f"entry {position} ({entry!r}) is not of the form SYMBOL=price")
            items.append((symbol.strip(), price.strip()))
    else:
        raise ValueError("must be a comma-separated list of SYMBOL=price")
    prices: dict[str, Decimal] = {}
    for symbol, text in items:
        if not is_symbol(symbol):
            raise ValueError(f"{symbol!r} is not a USDT-M symbol like BTC-USDT")
        try:
            price = Decimal(text)
        except InvalidOperation:
            raise ValueError(f"the price of {symbol} ({text!r}) is not a number") from None
        if not price.is_finite() or price <= 0:
            raise ValueError(f"the price of {symbol} must be a positive number")
        prices[symbol] = price
    if not prices:
        raise ValueError("must give at least one SYMBOL=price")
    return prices


class BingxSimSettings(BaseSettings):
    """What the simulator reads. It needs neither the broker nor Mongo."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    bingx_api_key: SecretStr
    bingx_api_secret: SecretStr
    bingx_sim_balance_usdt: Decimal = Field(default=Decimal("10000"), ge=0, allow_inf_nan=False)
    bingx_sim_prices: Annotated[dict[str, Decimal], NoDecode] = Field(default_factory=lambda: dict(BUILTIN_PRICES))
    bingx_sim_port: int = Field(default=8090, ge=1, le=65535)
    bind_host: str = "0.0.0.0"
    log_level: str = "INFO"

    @field_validator("bingx_sim_prices", mode="before")
    @classmethod
    def _prices(cls, value: object) -> dict[str, Decimal]:
        return parse_prices(value)

    @field_validator("bingx_api_key", "bingx_api_secret")
    @classmethod
    def _not_blank(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        value = value.upper()
        if value not in LOG_LEVELS:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return value
