"""Settings of the ingress."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from services.ingress.domain import InvalidAlert, normalize_symbol
from services.ingress.guards import TRADINGVIEW_SOURCES, Network, parse_networks, parse_scopes
from shared.settings import ServiceSettings, WebhookTokens, parse_webhook_tokens


class IngressSettings(ServiceSettings):
    webhook_tokens: WebhookTokens
    ingress_port: int = 8080
    webhook_rate_limit_per_token: float = Field(default=0, ge=0)
    webhook_rate_limit_per_ip: float = Field(default=0, ge=0)
    # Empty: any source. `tradingview` stands for TradingView's four sender addresses.
    webhook_allowed_sources: Annotated[tuple[Network, ...], NoDecode] = ()
    # X-Forwarded-For is believed only when the socket peer is one of these (the TLS proxy in front).
    webhook_trusted_proxies: Annotated[tuple[Network, ...], NoDecode] = ()
    # name=BTCUSDT.P|ETHUSDT.P: a token that may only trade these symbols (or use these strategies).
    webhook_token_symbols: Annotated[dict[str, tuple[str, ...]], NoDecode] = Field(default_factory=dict)
    webhook_token_strategies: Annotated[dict[str, tuple[str, ...]], NoDecode] = Field(default_factory=dict)
    publish_timeout_s: float = Field(default=1.0, gt=0, le=2.5)
    body_timeout_s: float = Field(default=2.0, gt=0, le=10)
    # An alert without an id, byte-identical to one accepted this recently, is a TradingView resend.
    webhook_resend_window_s: float = Field(default=120.0, ge=0, le=3600)

    @field_validator("webhook_tokens", mode="before")
    @classmethod
    def _parse_tokens(cls, value: object):
        return parse_webhook_tokens(value)

    @field_validator("webhook_allowed_sources", mode="before")
    @classmethod
    def _sources(cls, value: object):
        return parse_networks(value, presets={"tradingview": TRADINGVIEW_SOURCES})

    @field_validator("webhook_trusted_proxies", mode="before")
    @classmethod
    def _proxies(cls, value: object):
        return parse_networks(value)

    @field_validator("webhook_token_symbols", mode="before")
    @classmethod
    def _symbols(cls, value: object):
        scopes = parse_scopes(value)
        try:
            return {name: tuple(normalize_symbol(s) for s in symbols) for name, symbols in scopes.items()}
        except InvalidAlert as error:
            raise ValueError(str(error)) from None

    @field_validator("webhook_token_strategies", mode="before")
    @classmethod
    def _strategies(cls, value: object):
        return parse_scopes(value)

    @model_validator(mode="after")
    def _scopes_name_tokens(self) -> "IngressSettings":
        names = {t.name for t in self.webhook_tokens}
        for setting, scopes in (("WEBHOOK_TOKEN_SYMBOLS", self.webhook_token_symbols), ("WEBHOOK_TOKEN_STRATEGIES", self.webhook_token_strategies)):
            unknown = sorted(set(scopes) - names)
            if unknown:
                raise ValueError(f"{setting} names tokens that WEBHOOK_TOKENS does not have: {', '.join(unknown)}")
        return self
