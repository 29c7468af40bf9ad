"""Settings of the notifier: Telegram is optional; without it notifications go to the log."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from shared.settings import ServiceSettings, parse_ids


class NotifierSettings(ServiceSettings):
    telegram_api_id: int | None = None
    telegram_api_hash: SecretStr | None = None
    telegram_bot_token: SecretStr | None = None
    telegram_chat_ids: Annotated[tuple[int, ...], NoDecode] = ()
    telegram_session_path: str = "notifier.session"
    # Per event kind: on, silent or off (`skipped=silent,placed=off`); kinds not named are on; a SEV1 trip always is.
    notify_events: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    notifier_port: int = 9103

    @field_validator("notify_events", mode="before")
    @classmethod
    def _routes(cls, value: object) -> dict[str, str]:
        from services.notifier.dispatch import KINDS, Route

        if isinstance(value, dict):
            pairs = {str(k): str(v) for k, v in value.items()}
        else:
            pairs = {}
            for part in str(value or "").split(","):
                if not part.strip():
                    continue
                kind, sep, route = part.partition("=")
                if not sep:
                    raise ValueError(f"{part.strip()[:32]!r} must look like kind=on|silent|off")
                pairs[kind.strip().lower()] = route.strip().lower()
        for kind, route in pairs.items():
            if kind not in KINDS:
                raise ValueError(f"unknown event kind {kind[:32]!r} (one of {', '.join(KINDS)})")
            if route not in {r.value for r in Route}:
                raise ValueError(f"{kind}={route[:16]!r}: must be on, silent or off")
        return pairs

    @field_validator("telegram_chat_ids", mode="before")
    @classmethod
    def _ids(cls, value: object) -> tuple[int, ...]:
        return parse_ids(value)

    @model_validator(mode="after")
    def _all_or_nothing(self) -> "NotifierSettings":
        given = {
            "TELEGRAM_API_ID": self.telegram_api_id is not None,
            "TELEGRAM_API_HASH": self.telegram_api_hash is not None,
            "TELEGRAM_BOT_TOKEN": self.telegram_bot_token is not None,
        }
        if any(given.values()) and not all(given.values()):
            missing = ", ".join(name for name, present in given.items() if not present)
            raise ValueError(f"Telegram is half configured: {missing} missing (set all three, or none for the log)")
        if all(given.values()) and not self.telegram_chat_ids:
            raise ValueError("TELEGRAM_CHAT_IDS must name at least one chat when Telegram is configured")
        return self

    @property
    def telegram_enabled(self) -> bool:
        return self.telegram_bot_token is not None
