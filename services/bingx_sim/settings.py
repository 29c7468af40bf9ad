"""Settings of the BingX simulator, read once from the environment."""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
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


@dataclass(frozen=True)
class AccountSpec:
    """One extra paper account from the accounts file."""

    api_key: str
    api_secret: str
    balance: Decimal

    def __repr__(self) -> str:  # never print a secret
        return f"AccountSpec(api_key={self.api_key!r}, balance={self.balance})"


def parse_accounts(text: str) -> list[AccountSpec]:
    """The accounts file: a JSON list of {"api_key", "api_secret", "balance"} (balance optional, default 10000)."""
    try:
        raw = json.loads(text)
    except ValueError:
        raise ValueError("the accounts file is not JSON") from None
    if not isinstance(raw, list):
        raise ValueError("the accounts file must hold a JSON list")
    accounts: list[AccountSpec] = []
    for position, entry in enumerate(raw, start=1):
        if not isinstance(entry, dict):
            raise ValueError(f"account {position} is not a JSON object")
        key, secret = entry.get("api_key"), entry.get("api_secret")
        if not isinstance(key, str) or not key.strip() or not isinstance(secret, str) or not secret.strip():
            raise ValueError(f"account {position} needs a non-empty api_key and api_secret")
        try:
            balance = Decimal(str(entry.get("balance", "10000")))
        except InvalidOperation:
            raise ValueError(f"account {position}: balance is not a number") from None
        if not balance.is_finite() or balance < 0:
            raise ValueError(f"account {position}: balance must be 0 or more")
        if any(a.api_key == key for a in accounts):
            raise ValueError(f"account {position}: api_key {key!r} appears twice")
        accounts.append(AccountSpec(key, secret, balance))
    return accounts


class BingxSimSettings(BaseSettings):
    """What the simulator reads. It needs no broker, and Mongo only to keep accounts across restarts."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    bingx_api_key: SecretStr
    bingx_api_secret: SecretStr
    bingx_sim_balance_usdt: Decimal = Field(default=Decimal("10000"), ge=0, allow_inf_nan=False)
    bingx_sim_prices: Annotated[dict[str, Decimal], NoDecode] = Field(default_factory=lambda: dict(BUILTIN_PRICES))
    bingx_sim_port: int = Field(default=8090, ge=1, le=65535)
    bind_host: str = "0.0.0.0"
    log_level: str = "INFO"
    # Extra accounts besides BINGX_API_KEY's, each with its own balance, positions and orders.
    bingx_sim_accounts_file: Path | None = None
    # BingX's 5/s per account on the order endpoints; off by default so tests and paper trading are not throttled.
    bingx_sim_rate_limit: bool = False
    # An optional seeded random walk of every price, one step per interval; each step runs the triggers.
    bingx_sim_random_walk: bool = False
    bingx_sim_seed: int | None = None  # None: a random seed, logged at start so the path can be replayed
    bingx_sim_walk_interval_s: float = Field(default=1.0, gt=0, le=86400)
    bingx_sim_walk_volatility: Decimal = Field(default=Decimal("0.001"), gt=0, le=Decimal("0.5"), allow_inf_nan=False)
    # With a MongoDB the accounts survive a restart (a paper account kept for weeks); without, they live in memory.
    mongo_uri: SecretStr | None = None
    mongo_db: str = "tvtb"

    def extra_accounts(self) -> list[AccountSpec]:
        if self.bingx_sim_accounts_file is None:
            return []
        accounts = parse_accounts(self.bingx_sim_accounts_file.read_text())
        if any(a.api_key == self.bingx_api_key.get_secret_value() for a in accounts):
            raise ValueError("the accounts file repeats BINGX_API_KEY")
        return accounts

    @model_validator(mode="after")
    def _accounts_readable(self) -> BingxSimSettings:
        # Read once here so a bad accounts file stops the simulator at start, not at the first request.
        try:
            self.extra_accounts()
        except OSError as error:
            raise ValueError(f"BINGX_SIM_ACCOUNTS_FILE cannot be read: {error.strerror}") from None
        return self

    @field_validator("mongo_uri")
    @classmethod
    def _mongo_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError("must start with mongodb:// or mongodb+srv://")
        return value

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
