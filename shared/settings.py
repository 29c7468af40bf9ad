"""Settings shared by every service, read once from the environment names in DESIGN.md."""

from __future__ import annotations

import re
import sys
from enum import StrEnum
from urllib.parse import urlsplit
from typing import Annotated, TypeVar

import yarl
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pymongo import uri_parser
from pymongo.errors import PyMongoError


PLACEHOLDER = "change-me"


class TradingMode(StrEnum):
    PAPER = "paper"
    DEMO = "demo"
    LIVE = "live"


class WebhookToken(BaseModel):
    """One entry of WEBHOOK_TOKENS: the name is what logs and records show, never the secret."""

    model_config = ConfigDict(frozen=True)
    name: str
    secret: SecretStr


def parse_webhook_tokens(raw: object) -> tuple[WebhookToken, ...]:
    if isinstance(raw, (tuple, list)):
        return tuple(raw)
    if not isinstance(raw, str):
        raise ValueError("must be a comma-separated list of name:secret")
    tokens: list[WebhookToken] = []
    for position, item in enumerate((part.strip() for part in raw.split(",")), start=1):
        if not item:
            continue
        name, sep, secret = item.partition(":")
        name, secret = name.strip(), secret.strip()
        # The message names the entry by position only: the text may be a secret pasted in the wrong place.
        if not sep or not name or not secret:
            raise ValueError(f"entry {position} is not of the form name:secret")
        if any(t.name == name for t in tokens):
            raise ValueError(f"the name {name!r} is used twice")
        tokens.append(WebhookToken(name=name, secret=SecretStr(secret)))
    if not tokens:
        raise ValueError("must name at least one token as name:secret")
    return tuple(tokens)


class ServiceSettings(BaseSettings):
    """What every service reads. Each service's settings class adds its own fields."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    amqp_url: SecretStr = Field(description="broker address, vhost included")
    mongo_uri: SecretStr
    mongo_db: str = "tvtb"
    trading_mode: TradingMode = TradingMode.PAPER
    log_level: str = "INFO"
    otel_exporter_otlp_endpoint: str | None = None
    bind_host: str = "0.0.0.0"
    # Slow or hostile clients: a connection that has not sent a whole request head within this many seconds (or sits
    # idle between requests that long) is closed; beyond this many open connections new ones are closed at once,
    # so a flood of sockets cannot take the descriptors the broker and database connections need.
    http_idle_timeout_s: float = Field(default=5.0, gt=0, le=300)
    http_max_connections: int = Field(default=1000, ge=1, le=100_000)

    def secret_values(self) -> list[str]:
        """Every secret this process holds, so the log formatter can redact them should one ever slip through."""
        values: list[str] = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            items = value if isinstance(value, tuple) else (value,)
            for item in items:
                if isinstance(item, SecretStr):
                    values.append(item.get_secret_value())
                elif isinstance(item, WebhookToken):
                    values.append(item.secret.get_secret_value())
        for uri in (self.amqp_url, self.mongo_uri):
            password = urlsplit(uri.get_secret_value()).password
            if password:
                values.append(password)
        return values

    @model_validator(mode="after")
    def _no_placeholder_secrets_with_real_money(self) -> "ServiceSettings":
        """.env.example's `change-me` values run paper trading; with demo or live keys they would be an open door."""
        if self.trading_mode is TradingMode.PAPER:
            return self
        placeholders = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            items = value if isinstance(value, tuple) else (value,)
            for item in items:
                secret = item.secret if isinstance(item, WebhookToken) else item
                if isinstance(secret, SecretStr) and secret.get_secret_value().lower().startswith(PLACEHOLDER):
                    placeholders.append(name.upper())
        if placeholders:
            raise ValueError(f"{', '.join(sorted(set(placeholders)))} still hold the {PLACEHOLDER} placeholder: "
                             f"set real secrets before TRADING_MODE={self.trading_mode.value}")
        return self

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        value = value.upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return value

    @field_validator("amqp_url")
    @classmethod
    def _amqp_scheme(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        if not url.startswith(("amqp://", "amqps://")):
            raise ValueError("must start with amqp:// or amqps://")
        try:
            parsed = yarl.URL(url)
            host, _ = parsed.host, parsed.port
        except ValueError:
            raise ValueError("is not a valid URL (check the port, and that user and password are %-escaped)") from None
        if not host:
            raise ValueError("names no host (amqp://user:pass@host:5672/vhost)")
        return value

    @field_validator("mongo_uri")
    @classmethod
    def _mongo_scheme(cls, value: SecretStr) -> SecretStr:
        uri = value.get_secret_value()
        if not uri.startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError("must start with mongodb:// or mongodb+srv://")
        if uri.startswith("mongodb://"):  # an SRV address is resolved by DNS: nothing to check before connecting
            try:
                uri_parser.parse_uri(uri)
            except (ValueError, PyMongoError) as error:
                raise ValueError(f"is not a valid MongoDB URI: {_without(str(error), uri)}") from None
        return value


def _without(message: str, secret_text: str) -> str:
    """The library's reason, unless it quotes any part of the setting (which may hold a password)."""
    parts = [part for part in re.split(r"[:/@?&=,]", secret_text) if len(part) >= 3 and part not in ("mongodb", "amqp")]
    if any(part in message for part in parts):
        return "check the host, the port, the options and that user and password are %-escaped"
    return message[:200]


WebhookTokens = Annotated[tuple[WebhookToken, ...], NoDecode]

S = TypeVar("S", bound=BaseSettings)


def describe_errors(error: ValidationError) -> str:
    """One line naming each bad setting by its environment name. Input values are never echoed (secrets)."""
    parts = []
    for item in error.errors(include_input=False, include_url=False):
        name = str(item["loc"][0]).upper() if item["loc"] else "settings"
        message = "is required but not set" if item["type"] == "missing" else item["msg"]
        message = message.removeprefix("Value error, ")
        parts.append(f"{name} {message}" if item["type"] == "missing" else f"{name}: {message}")
    return "; ".join(parts)


def load_settings(cls: type[S], service: str) -> S:
    """Build the settings or stop the process with one clear line naming what is wrong."""
    try:
        return cls()
    except ValidationError as error:
        sys.stderr.write(f"{service}: configuration error: {describe_errors(error)}\n")
        raise SystemExit(2) from None


def parse_ids(value: object) -> tuple[int, ...]:
    if isinstance(value, (tuple, list)):
        return tuple(int(v) for v in value)
    if isinstance(value, int):
        return (value,)
    if not isinstance(value, str):
        raise ValueError("must be a comma-separated list of numeric ids")
    ids = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        try:
            ids.append(int(part))
        except ValueError:
            raise ValueError(f"{part[:24]!r} is not a numeric Telegram id") from None
    return tuple(ids)
