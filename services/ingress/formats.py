"""The alert formats users already have, read by content (not by Content-Type) into the native payload's keys.

- native JSON (DESIGN.md), also when TradingView sends it as text/plain;
- 3Commas-style JSON: `secret`, `tv_instrument`, `action`, `order.amount` with `currency_type`, `timestamp`, `max_lag`;
- OctoBot-style text: `KEY=VALUE` pairs separated by new lines or `;` (`SYMBOL`, `SIGNAL`, `VOLUME`, `TOKEN`, ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

TOKEN_KEYS = ("token", "secret", "passphrase")
# A TradingView placeholder left unfilled (an unquoted one breaks the JSON); only its name is ever echoed.
_PLACEHOLDER = re.compile(r"\{\{\s{0,4}([A-Za-z0-9_.]{1,60})\s{0,4}\}\}")


class UnreadableBody(ValueError):
    """The body is in no format we read; the message says what was wrong, for a person."""


@dataclass(frozen=True)
class ParsedAlert:
    format: str  # native | 3commas | octobot
    payload: dict[str, Any]  # native keys, the token removed
    token: str | None


def parse_body(raw: bytes) -> ParsedAlert:
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise UnreadableBody("the body is not UTF-8 text") from None
    if not text:
        raise UnreadableBody("the body is empty")
    if text[0] in "{[":
        try:
            document = orjson.loads(text)
        except orjson.JSONDecodeError as error:
            if placeholder := _PLACEHOLDER.search(text):
                raise UnreadableBody(f"the body is not valid JSON: TradingView left the placeholder "
                                     f"{{{{{placeholder.group(1)}}}}} unfilled") from None
            raise UnreadableBody(f"the body is not valid JSON ({error.msg} at character {error.pos})") from None
        if not isinstance(document, dict):
            raise UnreadableBody("the body must be a JSON object")
        if "tv_instrument" in document or isinstance(document.get("order"), dict):
            return _three_commas(document)
        return _native(document)
    if "=" in text:
        return _octobot(text)
    raise UnreadableBody("the body is neither JSON nor KEY=VALUE text")


def _take_token(document: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    token = None
    rest = dict(document)
    for key in TOKEN_KEYS:
        if key in rest:
            value = rest.pop(key)
            if token is None and isinstance(value, str):
                token = value
            elif token is None and value is not None:
                token = "\x00"  # present but not text: "unknown", never matches, never echoed
    return rest, token


def _native(document: dict[str, Any]) -> ParsedAlert:
    payload, token = _take_token(document)
    return ParsedAlert("native", payload, token)


_THREE_COMMAS_SIZE = {"base": "qty", "quote": "usdt", "margin_percent": "percent", "position_percent": "percent"}


def _three_commas(document: dict[str, Any]) -> ParsedAlert:
    rest, token = _take_token(document)
    order = rest.get("order") if isinstance(rest.get("order"), dict) else {}
    payload: dict[str, Any] = {
        "symbol": rest.get("tv_instrument") or rest.get("symbol"),
        "action": rest.get("action"),
        "timestamp": rest.get("timestamp"),
        "max_lag": rest.get("max_lag"),
        "id": rest.get("id"),
        "strategy": rest.get("strategy") or rest.get("bot_uuid"),
    }
    if "amount" in order:
        currency_type = str(order.get("currency_type") or "base").lower()
        size_key = _THREE_COMMAS_SIZE.get(currency_type)
        if size_key is None:
            raise UnreadableBody("'order.currency_type' must be base, quote or margin_percent")
        payload[size_key] = order.get("amount")
    return ParsedAlert("3commas", {k: v for k, v in payload.items() if v is not None}, token)


_OCTOBOT_KEYS = {
    "SYMBOL": "symbol",
    "ORDER_TYPE": "order_type",
    "PRICE": "price",
    "STOP_PRICE": "sl",
    "TAKE_PROFIT_PRICE": "tp",
    "REDUCE_ONLY": "reduce_only",
    "LEVERAGE": "leverage",
    "TAG": "strategy",
    "ID": "id",
    "ACCOUNT": "account",
    "MAX_LAG": "max_lag",
    "TIMESTAMP": "timestamp",
}


def _octobot(text: str) -> ParsedAlert:
    pairs: dict[str, str] = {}
    for number, part in enumerate((p.strip() for p in text.replace(";", "\n").splitlines()), start=1):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise UnreadableBody(f"part {number} of the text is not KEY=VALUE")
        key = key.strip().upper()
        if key in pairs:
            raise UnreadableBody(f"{key} is given twice (part {number}): send it once")
        pairs[key] = value.strip()
    token = pairs.pop("TOKEN", None)
    if token is None:
        token = pairs.pop("SECRET", None) or pairs.pop("PASSPHRASE", None)
    payload: dict[str, Any] = {}
    signal = pairs.pop("SIGNAL", None)
    if signal is not None:
        if signal.upper() == "CANCEL":
            raise UnreadableBody("SIGNAL=CANCEL is not supported yet: cancel orders through the exchange")
        payload["action"] = signal.lower()
    volume = pairs.pop("VOLUME", None)
    if volume:
        if volume.endswith("%"):
            payload["percent"] = volume[:-1].strip()
        else:
            payload["qty"] = volume
    for key, value in pairs.items():
        if key in _OCTOBOT_KEYS:
            payload[_OCTOBOT_KEYS[key]] = value
    if "PRICE" in pairs and "ORDER_TYPE" not in pairs:
        payload.pop("price")  # a PRICE without ORDER_TYPE=LIMIT is the alert's reference price, not a limit
    return ParsedAlert("octobot", payload, token)
