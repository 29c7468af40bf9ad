"""Settings of the ingress."""

from __future__ import annotations

from pydantic import Field, field_validator

from shared.settings import ServiceSettings, WebhookTokens, parse_webhook_tokens


class IngressSettings(ServiceSettings):
    webhook_tokens: WebhookTokens
    ingress_port: int = 8080
    webhook_rate_limit_per_token: float = Field(default=0, ge=0)
    webhook_rate_limit_per_ip: float = Field(default=0, ge=0)
    publish_timeout_s: float = Field(default=1.0, gt=0, le=2.5)

    @field_validator("webhook_tokens", mode="before")
    @classmethod
    def _parse_tokens(cls, value: object):
        return parse_webhook_tokens(value)
