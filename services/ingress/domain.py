"""Pure rules of the ingress: reading an alert, mapping its symbol, naming its signal. No I/O."""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import re
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from shared.contracts import Action, OrderType, SignalReceivedV1
from shared.settings import WebhookToken

MAX_LAG_DEFAULT_S = 60.0
MAX_LAG_CAP_S = 600.0
SIZE_FIELDS = ("qty", "usdt", "percent")
SUPPORTED_QUOTE = "USDT"
_MAX_EXPONENT = 12
_MIN_EXPONENT = -12
# Linear on hostile input (no nested quantifier over the whole value).
_PLACEHOLDER = re.compile(r"\{\{[^{}]{0,100}\}\}")
# \Z, not $: `$` also matches before a trailing new line ('BTC\n' would pass as a market name).
_SYMBOL_CHARS = re.compile(r"^[A-Z0-9]{1,20}\Z")
_ACCOUNT_CHARS = re.compile(r"^[A-Za-z0-9_-]{1,32}\Z")
_ID_CHARS = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}\Z")  # ASCII: an AMQP message id holds at most 255 bytes


# What other bridges call the same actions (WunderTrading's codes, 3Commas' enter/exit).
ACTION_ALIASES = {
    "enter-long": "long", "enter_long": "long", "exit-long": "close_long", "exit_long": "close_long",
    "enter-short": "short", "enter_short": "short", "exit-short": "close_short", "exit_short": "close_short",
    "exit-all": "close", "exit_all": "close", "close_all": "close",
}


class InvalidAlert(ValueError):
    """The alert cannot become a signal; the message says why, for a person to read."""


def match_token(presented: str | None, tokens: tuple[WebhookToken, ...]) -> WebhookToken | None:
    """Compare against every configured token in constant time, without stopping at the first match."""
    if not presented:
        return None
    presented_bytes = presented.encode()
    found: WebhookToken | None = None
    for token in tokens:
        if hmac.compare_digest(presented_bytes, token.secret.get_secret_value().encode()):
            found = token
    return found


@functools.lru_cache(maxsize=1024)  # a handful of symbols, on every alert
def normalize_symbol(raw: str) -> str:
    """`BTCUSDT.P`, `BINANCE:BTCUSDT.P`, `BTC-USDT`, `BTC/USDT`, `BTC/USDT:USDT` all become `BTC/USDT:USDT`."""
    text = raw.strip().upper()
    if ":" in text and "/" not in text:
        text = text.split(":", 1)[1]  # an exchange prefix such as BINANCE:
    if "/" in text:
        pair, _, settle = text.partition(":")
        base, _, quote = pair.partition("/")
        if settle and settle != quote:
            raise InvalidAlert(f"symbol {raw!r}: settle currency {settle} differs from quote {quote}")
    else:
        for suffix in (".P", "PERP", ".PERP"):
            text = text.removesuffix(suffix)
        if "-" in text:
            base, _, quote = text.partition("-")
        elif text.endswith(SUPPORTED_QUOTE):
            base, quote = text[: -len(SUPPORTED_QUOTE)], SUPPORTED_QUOTE
        else:
            raise InvalidAlert(f"symbol {raw!r} is not a USDT perpetual (expected e.g. BTCUSDT.P or BTC-USDT)")
    if quote != SUPPORTED_QUOTE:
        raise InvalidAlert(f"symbol {raw!r}: only USDT-margined perpetuals are traded (quote {quote})")
    if not _SYMBOL_CHARS.match(base):
        raise InvalidAlert(f"symbol {raw!r} is not a valid market name")
    return f"{base}/{SUPPORTED_QUOTE}:{SUPPORTED_QUOTE}"


class OutOfScope(ValueError):
    """The token is valid but not for this symbol or strategy."""


def check_scope(signal: SignalReceivedV1, symbols: dict[str, tuple[str, ...]], strategies: dict[str, tuple[str, ...]]) -> None:
    allowed_symbols = symbols.get(signal.token_name)
    if allowed_symbols is not None and signal.symbol not in allowed_symbols:
        raise OutOfScope(f"token '{signal.token_name}' may not trade {signal.symbol}")
    allowed_strategies = strategies.get(signal.token_name)
    if allowed_strategies is not None and signal.strategy not in allowed_strategies:
        raise OutOfScope(f"token '{signal.token_name}' may not send strategy {signal.strategy or '(none)'}")


def fingerprint(token_name: str, payload: dict[str, Any]) -> str:
    """Identical deliveries of one alert have the same fingerprint; a different alert reusing an id does not.

    It is taken over the alert with its token removed, so a signal id derived from it says nothing about the token.
    """
    try:
        canonical = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS, default=str)
    except TypeError:  # what orjson cannot write (an integer beyond 64 bits) the standard library can
        canonical = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(token_name.encode() + b"\n" + canonical).hexdigest()[:32]


SECRET_IN_SIGNAL_FROM = 12  # a pasted token starts with its beginning; shorter runs are left to chance names


def secret_in_signal(signal: SignalReceivedV1, secrets: tuple[str, ...]) -> str | None:
    """The first text field of the signal (its id, account, strategy, ...) holding a webhook token, or the first 12
    characters of one, without regard to case; else None.

    A token pasted into another field of the alert would otherwise become part of the signal: stored, published,
    logged and shown in Telegram. Such an alert is refused. Only what the signal keeps is looked at: a token in a
    field the signal drops goes nowhere, and refusing it would lose an alert (TradingView does not resend a 4xx).
    For the same reason a token shorter than 12 characters is not looked for: a word like 'tradingview' would turn
    away every strategy named after it.
    """
    needles = _needles(secrets)
    for name, value in vars(signal).items():  # the fields' values as kept (iterating the model itself costs more)
        if isinstance(value, str) and any(needle in value.lower() for needle in needles):
            return name
    return None


@functools.lru_cache(maxsize=8)
def _needles(secrets: tuple[str, ...]) -> tuple[str, ...]:
    """What secret_in_signal looks for, worked out once per set of tokens rather than on every alert."""
    return tuple(secret[:SECRET_IN_SIGNAL_FROM].lower() for secret in secrets if len(secret) >= SECRET_IN_SIGNAL_FROM)


def signal_id_for(fingerprint_: str, payload_id: str | None, first_seen_ms: int) -> str:
    """The payload's id when given; else the alert's fingerprint and when it was first seen.

    TradingView resends a failed delivery within seconds, byte-identical: those find the first delivery's id (see
    the ingress's recent index). The same alert firing again later is a new signal and gets a new id, so a
    strategy whose alert text never changes still trades every time.
    """
    if payload_id is not None:
        return payload_id
    return f"h-{fingerprint_[:24]}-{first_seen_ms}"


def _check_placeholders(payload: dict[str, Any], prefix: str = "", depth: int = 0) -> None:
    if depth > 5:
        raise InvalidAlert("the alert is nested too deeply")
    for key, value in payload.items():
        if isinstance(value, dict):
            _check_placeholders(value, f"{prefix}{str(key)[:40]}.", depth + 1)
        elif isinstance(value, str) and (found := _PLACEHOLDER.search(value)):
            raise InvalidAlert(f"'{prefix}{str(key)[:40]}' holds an unfilled TradingView placeholder ({found.group(0)[:60]})")


def _decimal(payload: dict[str, Any], key: str, *, positive: bool = True) -> Decimal | None:
    value = payload.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidAlert(f"'{key}' must be a number")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise InvalidAlert(f"'{key}' must be a number, not {str(value)[:40]!r}") from None
    if not number.is_finite():
        raise InvalidAlert(f"'{key}' must be a finite number")
    # By exponent, not by arithmetic: comparing a huge Decimal would itself overflow the context.
    if number != 0 and not _MIN_EXPONENT <= number.adjusted() < _MAX_EXPONENT:
        raise InvalidAlert(f"'{key}' is out of range")
    if positive and number <= 0:
        raise InvalidAlert(f"'{key}' must be greater than zero")
    return number


def _text(payload: dict[str, Any], key: str, max_length: int = 64) -> str | None:
    value = payload.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise InvalidAlert(f"'{key}' must be text")
    text = str(value).strip()
    if len(text) > max_length:
        raise InvalidAlert(f"'{key}' is longer than {max_length} characters")
    return text


def _bool(payload: dict[str, Any], key: str) -> bool:
    value = payload.get(key, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "false", "1", "0", "yes", "no"}:
        return value.strip().lower() in {"true", "1", "yes"}
    raise InvalidAlert(f"'{key}' must be true or false")


def parse_alert_time(value: Any) -> datetime | None:
    """`{{timenow}}` is ISO 8601 UTC; epoch seconds or milliseconds are accepted too."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = value / 1000 if value > 1e11 else value
        try:
            return datetime.fromtimestamp(seconds, timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise InvalidAlert("'timestamp' is not a time we can read (use {{timenow}})") from None
    if isinstance(value, str):
        text = value.strip()
        if text.replace(".", "", 1).isdigit():
            try:
                seconds = float(text)
            except ValueError:  # digits float() does not read, such as '²' (isdigit() is true for it)
                raise InvalidAlert(f"'timestamp' is not a time: {text[:40]!r} (use {{{{timenow}}}})") from None
            return parse_alert_time(seconds)
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidAlert(f"'timestamp' is not a time: {text[:40]!r} (use {{{{timenow}}}})") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    raise InvalidAlert("'timestamp' must be an ISO time or epoch seconds")


def build_signal(
    payload: dict[str, Any], *, token_name: str, received_at: datetime, signal_id: str | None = None,
    fingerprint_: str | None = None, resend_window_s: float | None = None,
) -> SignalReceivedV1:
    """Turn a native JSON alert (DESIGN.md) into the one normalised signal, or say what is wrong with it."""
    _check_placeholders(payload)
    raw_action = _text(payload, "action")
    if raw_action is None:
        raise InvalidAlert("'action' is missing (buy, sell, long, short, close_long, close_short, close, flat, reverse)")
    try:
        lowered = raw_action.lower()
        action = Action(ACTION_ALIASES.get(lowered, lowered))
    except ValueError:
        raise InvalidAlert(f"unknown action {raw_action[:32]!r} (buy, sell, long, short, close_long, close_short, close, flat, reverse)") from None

    raw_symbol = _text(payload, "symbol", 64)
    if raw_symbol is None:
        raise InvalidAlert("'symbol' is missing (e.g. BTCUSDT.P)")
    symbol = normalize_symbol(raw_symbol)

    if action is Action.REVERSE and _bool(payload, "reduce_only"):
        raise InvalidAlert("a 'reverse' opens the other side: it cannot be reduce_only")

    sizes = {name: _decimal(payload, name) for name in SIZE_FIELDS}
    given = [name for name, value in sizes.items() if value is not None]
    if len(given) > 1:
        raise InvalidAlert(f"give exactly one size, not {' and '.join(given)}")
    if not given and action.opens and action is not Action.REVERSE:  # a reverse may take the size it closes
        raise InvalidAlert("a size is missing: give one of qty (contracts), usdt (notional) or percent (of free margin)")
    if sizes["usdt"] is not None and not action.opens:
        raise InvalidAlert("'usdt' sizes an opening order; close by 'qty' or 'percent' (of the position), or give no size")
    if sizes["percent"] is not None and sizes["percent"] > 100:
        raise InvalidAlert("'percent' cannot be more than 100")

    raw_type = (_text(payload, "order_type") or "market").lower()
    try:
        order_type = OrderType(raw_type)
    except ValueError:
        raise InvalidAlert(f"'order_type' must be market or limit, not {raw_type[:20]!r}") from None
    price = _decimal(payload, "price")
    if order_type is OrderType.LIMIT and price is None:
        raise InvalidAlert("a limit order needs a 'price'")

    leverage_value = _decimal(payload, "leverage")
    if leverage_value is not None and (leverage_value != leverage_value.to_integral_value() or leverage_value > 150):
        raise InvalidAlert("'leverage' must be a whole number from 1 to 150")
    margin_mode = _text(payload, "margin_mode")
    if margin_mode is not None and margin_mode.lower() not in {"isolated", "cross"}:
        raise InvalidAlert("'margin_mode' must be isolated or cross")

    max_lag = _decimal(payload, "max_lag")
    payload_id = _text(payload, "id", 128)
    if payload_id is not None and not _ID_CHARS.match(payload_id):
        raise InvalidAlert("'id' may hold only letters, digits and . _ : - (at most 128)")

    market_position = _text(payload, "market_position", 16)
    if market_position is not None:
        market_position = market_position.lower()
        if market_position not in ("long", "short", "flat"):
            raise InvalidAlert("'market_position' must be long, short or flat ({{strategy.market_position}})")
    market_position_size = _decimal(payload, "market_position_size", positive=False)
    if market_position_size is not None and market_position_size < 0:
        raise InvalidAlert("'market_position_size' cannot be negative")

    account = _text(payload, "account", 32) or "default"
    if not _ACCOUNT_CHARS.match(account):
        raise InvalidAlert("'account' may hold only letters, digits, _ and - (at most 32)")

    fingerprint_ = fingerprint_ or fingerprint(token_name, payload)
    # Every field was checked and given its contract's type above, so pydantic need not check them again (this runs
    # on every alert); tests/unit/test_ingress_domain.py holds each built signal equal to its validated self.
    return SignalReceivedV1.model_construct(
        signal_id=signal_id or signal_id_for(fingerprint_, payload_id, int(received_at.timestamp() * 1000)),
        resend_key=fingerprint_ if payload_id is None and resend_window_s else None,
        resend_window_s=resend_window_s if payload_id is None and resend_window_s else None,
        account=account,
        token_name=token_name,
        symbol=symbol,
        action=action,
        order_type=order_type,
        price=price,
        qty=sizes["qty"],
        usdt=sizes["usdt"],
        percent=sizes["percent"],
        leverage=int(leverage_value) if leverage_value is not None else None,
        margin_mode=margin_mode.lower() if margin_mode else None,  # type: ignore[arg-type]
        tp=_decimal(payload, "tp"),
        sl=_decimal(payload, "sl"),
        tp_pct=_decimal(payload, "tp_pct"),
        sl_pct=_decimal(payload, "sl_pct"),
        reduce_only=_bool(payload, "reduce_only"),
        market_position=market_position,  # type: ignore[arg-type]
        market_position_size=market_position_size,
        strategy=_text(payload, "strategy", 128),
        alert_time=parse_alert_time(payload.get("timestamp")),
        max_lag_s=float(min(max_lag, Decimal(str(MAX_LAG_CAP_S)))) if max_lag is not None else MAX_LAG_DEFAULT_S,
        received_at=received_at,
    )
