"""Fuzzing the ingress: its parsers as pure functions, then the running app over HTTP on the real broker and database.

The parsers (services/ingress/formats.py and domain.py, in the order the webhook calls them) either give a valid
normalised signal or refuse with their own error (UnreadableBody, InvalidAlert) and a reason a person can read:
never any other exception. Over HTTP, nothing anyone sends gets a 5xx; a refusal is a 4xx with a JSON reason; a valid
alert is accepted (200) and reaches the executor's queues.
"""

from __future__ import annotations

import itertools
import json
import re
from datetime import datetime, timezone
from decimal import Decimal
from urllib.parse import quote

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from services.ingress.domain import InvalidAlert, build_signal, fingerprint, match_token, secret_in_signal
from services.ingress.formats import TOKEN_KEYS, UnreadableBody, parse_body
from shared.contracts import Action, OrderType, SignalReceivedV1, decode, encode
from shared.redaction import redact
from shared.settings import parse_webhook_tokens
from tests.abuse.apps import OnLoop, answer, ingress_client, routed
from tests.abuse.secrets_scan import SECRETS, WEBHOOK_OTHER_SECRET, WEBHOOK_SECRET, WEBHOOK_TOKENS, SecretScan
from tests.support import drain_signals

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)
TOKENS = parse_webhook_tokens(WEBHOOK_TOKENS)
WEBHOOK_SECRETS = (WEBHOOK_SECRET, WEBHOOK_OTHER_SECRET)
SCAN = SecretScan(SECRETS)
WEBHOOK = "/webhook/tradingview"
REASON_MAX = 400  # a reason quotes at most a short piece of the alert

# ---------------------------------------------------------------------------------------------------------------------
# What the parsers are fed.

VALID_SYMBOLS = ["BTCUSDT.P", "BINANCE:BTCUSDT.P", "BTC-USDT", "BTC/USDT:USDT", "ethusdt", "BYBIT:SOLUSDT.P", "1000PEPEUSDT"]
OPENING = ["buy", "sell", "long", "short", "BUY", "enter-long", "enter_short"]
CLOSING = ["close_long", "close_short", "close", "flat", "exit-long", "exit_all", "Close"]
HOSTILE_TEXT = [
    "", " ", "NaN", "nan", "-NaN", "sNaN", "Infinity", "-Infinity", "inf", "1e999999", "-1e999999", "1e-999999",
    "-1", "0", "0.0", "-0", "00", "1e-30", "1E+30", "9" * 400, "0." + "0" * 50 + "1", "1_000", "0x10", " 1 ",
    "²", "١٢٣", "½", "𝟙", "٣.٥", "1,5", "1.2.3", "+1", "--1", "true", "false", "null", "[]", "{}",
    "{{close}}", "{{strategy.order.contracts}}", "{{ ticker }}", "{{", "}}", "{{}}", "{{" * 30 + "x", "{{plot_0}}",
    "BTC\n-USDT", "BTC\n/USDT", "BTCUSDT\n", "BTC\tUSDT", "BTC/USDT:BTC", "/USDT", "-USDT", "USDT", ":", "BINANCE:",
    "2026-12-03T12:00:00Z", "2026-13-45T99:00:00Z", "2026-12-03T12:00:00+25:00", "99999999999999999999", "-99999999999",
    "1700000000.5.5", "1e10", "é", "ß", "🚀", "\u0000", "\u202e", "\ufeff", "a" * 5000, "=", ";", "\r\n",
    WEBHOOK_SECRET, WEBHOOK_OTHER_SECRET, WEBHOOK_SECRET.lower(), f"x{WEBHOOK_SECRET}y", WEBHOOK_SECRET[:12],
]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.integers(-5, 200),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(HOSTILE_TEXT), st.text(max_size=40),
)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=10), inner, max_size=3)), max_leaves=8)
hostile = st.one_of(st.sampled_from(HOSTILE_TEXT), scalars, json_values)

NATIVE_KEYS = ["token", "secret", "passphrase", "id", "symbol", "action", "order_type", "price", "qty", "usdt", "percent",
               "leverage", "margin_mode", "tp", "sl", "tp_pct", "sl_pct", "reduce_only", "market_position",
               "market_position_size", "timestamp", "max_lag", "strategy", "account", "order", "tv_instrument"]
OCTOBOT_KEYS = ["EXCHANGE", "SYMBOL", "SIGNAL", "ORDER_TYPE", "VOLUME", "PRICE", "STOP_PRICE", "TAKE_PROFIT_PRICE",
                "REDUCE_ONLY", "LEVERAGE", "TAG", "TOKEN", "SECRET", "ID", "ACCOUNT", "MAX_LAG", "TIMESTAMP"]


def json_text(pairs: list[tuple[str, object]]) -> str:
    """A JSON object written pair by pair, so a key may appear twice (what a hand-edited alert can hold).
    Python's json writes NaN and Infinity bare, as a careless generator would: that is input too."""
    return "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs) + "}"


positive = st.one_of(st.decimals(min_value=Decimal("0.001"), max_value=Decimal("100000"), places=3).map(str),
                     st.integers(1, 1000), st.floats(0.001, 1000))
percent = st.one_of(st.integers(1, 100), st.decimals(min_value=Decimal("0.1"), max_value=Decimal("100"), places=1).map(str))


@st.composite
def valid_native(draw) -> list[tuple[str, object]]:
    """A native alert that is valid (as DESIGN.md describes it), as key/value pairs."""
    action = draw(st.sampled_from(OPENING + CLOSING))
    pairs: list[tuple[str, object]] = [(draw(st.sampled_from(TOKEN_KEYS)), WEBHOOK_SECRET),
                                       ("symbol", draw(st.sampled_from(VALID_SYMBOLS))), ("action", action)]
    size = draw(st.sampled_from(["qty", "usdt", "percent"] if action in OPENING else ["qty", "percent", None]))
    if size == "percent":
        pairs.append(("percent", draw(percent)))
    elif size:
        pairs.append((size, draw(positive)))
    optional = draw(st.fixed_dictionaries({}, optional={
        "order_type": st.sampled_from(["market", "MARKET"]), "leverage": st.integers(1, 150).map(draw(st.sampled_from([int, str]))),
        "margin_mode": st.sampled_from(["isolated", "cross", "Cross"]), "tp": positive, "sl": positive,
        "tp_pct": positive, "sl_pct": positive, "reduce_only": st.sampled_from([True, False, "true", "no"]),
        "market_position": st.sampled_from(["long", "short", "flat", "Flat"]), "market_position_size": st.sampled_from([0, "0", "1.5"]),
        "timestamp": st.sampled_from(["2026-12-03T11:59:58Z", 1_790_000_000, "1790000000123", "2026-12-03T11:59:58"]),
        "max_lag": st.sampled_from(["300", 30, 5000]), "strategy": st.text(st.characters(codec="utf-8", exclude_characters="{}"), max_size=20),
        "account": st.sampled_from(["default", "acct-2", "A_1"]), "note": st.text(max_size=10),
    }))
    if draw(st.booleans()):
        optional.update(order_type="limit", price=draw(positive))
    return pairs + list(optional.items())


@st.composite
def mutated(draw, base, keys: list[str]) -> list[tuple[str, object]]:
    """`base` with up to three mutations: a value made hostile, a key dropped, a key duplicated, a key misspelt."""
    pairs = list(base)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["set", "set", "drop", "duplicate", "case"]))
        if kind == "set" or not pairs:
            key = draw(st.one_of(st.sampled_from(keys), st.text(max_size=12)))
            value = draw(hostile)
            pairs = [(k, v) for k, v in pairs if k != key] + [(key, value)]
        elif kind == "drop":
            del pairs[draw(st.integers(0, len(pairs) - 1))]
        elif kind == "duplicate":
            key = pairs[draw(st.integers(0, len(pairs) - 1))][0]
            pairs.append((key, draw(hostile)))
        else:
            index = draw(st.integers(0, len(pairs) - 1))
            key, value = pairs[index]
            pairs[index] = (key.upper() if key.islower() else key.lower(), value)
    return pairs


@st.composite
def valid_three_commas(draw) -> dict:
    action = draw(st.sampled_from(["buy", "sell", "enter_long", "exit_long", "close"]))
    document = {"secret": WEBHOOK_SECRET, "timestamp": "2026-12-03T11:59:58Z", "max_lag": "300", "trigger_price": "60000",
                "tv_exchange": "BINANCE", "tv_instrument": draw(st.sampled_from(VALID_SYMBOLS)), "action": action,
                "bot_uuid": "0b1c6a3e-1234"}
    if action in ("buy", "sell", "enter_long") or draw(st.booleans()):
        currency = draw(st.sampled_from(["base", "quote", "margin_percent", "position_percent", "BASE"]))
        amount = draw(percent if currency.endswith("percent") else positive)
        if currency == "quote" and action not in ("buy", "sell", "enter_long"):
            currency = "base"
        document["order"] = {"amount": amount, "currency_type": currency}
    return document


@st.composite
def mutated_three_commas(draw) -> str:
    document = draw(valid_three_commas())
    pairs = draw(mutated(list(document.items()), ["secret", "tv_instrument", "action", "order", "timestamp", "max_lag", "id",
                                                  "strategy", "bot_uuid", "symbol"]))
    if draw(st.booleans()):  # reach into the order: its amount and currency type
        order = dict(document.get("order") or {"amount": "1"})
        order[draw(st.sampled_from(["amount", "currency_type", "other"]))] = draw(hostile)
        pairs.append(("order", order))
    return json_text(pairs)


@st.composite
def valid_octobot(draw) -> list[tuple[str, str]]:
    signal = draw(st.sampled_from(["BUY", "SELL", "buy"]))
    pairs = [("EXCHANGE", "binance"), ("SYMBOL", draw(st.sampled_from(VALID_SYMBOLS))), ("SIGNAL", signal),
             ("VOLUME", draw(st.one_of(positive.map(str), percent.map(lambda p: f"{p}%")))), ("TOKEN", WEBHOOK_SECRET)]
    extra = draw(st.fixed_dictionaries({}, optional={
        "LEVERAGE": st.integers(1, 125).map(str), "TAG": st.from_regex(r"[a-z0-9 ]{1,12}", fullmatch=True),
        "REDUCE_ONLY": st.sampled_from(["true", "false"]), "STOP_PRICE": positive.map(str), "TAKE_PROFIT_PRICE": positive.map(str),
        "PRICE": positive.map(str),
    }))
    if "PRICE" in extra and draw(st.booleans()):
        extra["ORDER_TYPE"] = "LIMIT"
    return pairs + list(extra.items())


def octobot_text(pairs: list[tuple[str, str]], separator: str) -> str:
    return separator.join(f"{k}={v}" for k, v in pairs)


@st.composite
def mutated_octobot(draw) -> str:
    pairs = draw(mutated(draw(valid_octobot()), OCTOBOT_KEYS))
    pairs = [(str(k), v if isinstance(v, str) else json.dumps(v)) for k, v in pairs]
    text = octobot_text(pairs, draw(st.sampled_from(["\n", ";", "\r\n", " ; ", "\n\n"])))
    if draw(st.booleans()):  # a line that is not KEY=VALUE, or a BOM, or stray separators
        text = draw(st.sampled_from(["", "\ufeff", "=\n", ";;", "  "])) + text + draw(st.sampled_from(["", "\nnonsense", ";=x", "\n"]))
    return text


def native_body(pairs: list[tuple[str, object]]) -> str:
    return json_text(pairs)


SECRET_VARIANTS = [WEBHOOK_SECRET, WEBHOOK_OTHER_SECRET, WEBHOOK_SECRET.lower(), WEBHOOK_SECRET.upper(), f"my-{WEBHOOK_SECRET}",
                   WEBHOOK_SECRET[:12], f"{WEBHOOK_OTHER_SECRET}.x"]


@st.composite
def secret_in_a_field(draw) -> bytes:
    """A valid alert whose token was also pasted into another field (or a key): it must never come back out."""
    secret = draw(st.sampled_from(SECRET_VARIANTS))
    kind = draw(st.sampled_from(["native", "octobot", "3commas"]))
    if kind == "native":
        pairs = draw(valid_native())
        if draw(st.booleans()):
            pairs.append((secret, 1))
        else:
            pairs.append((draw(st.sampled_from(NATIVE_KEYS[3:])), secret))
        return native_body(pairs).encode()
    if kind == "octobot":
        pairs = draw(valid_octobot()) + [(draw(st.sampled_from(OCTOBOT_KEYS + [secret])), secret)]
        return octobot_text(pairs, "\n").encode()
    document = draw(valid_three_commas())
    document[draw(st.sampled_from(["tv_instrument", "action", "id", "strategy", "bot_uuid", "max_lag", "timestamp"]))] = secret
    return orjson.dumps(document)


any_body = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
    st.dictionaries(st.text(max_size=12), json_values, max_size=6).map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    valid_native().flatmap(lambda base: mutated(base, NATIVE_KEYS)).map(lambda p: native_body(p).encode()),
    mutated_three_commas().map(str.encode),
    mutated_octobot().map(lambda t: t.encode("utf-8", "surrogatepass")),
    secret_in_a_field(),
)


# ---------------------------------------------------------------------------------------------------------------------
# (a) The parsers as pure functions.

def parse(raw: bytes) -> SignalReceivedV1 | None:
    """What the webhook does with a body, without I/O: read it, find its token, fingerprint it, build the signal.
    Returns the signal, or None after checking the refusal is the parsers' own, with a reason."""
    try:
        parsed = parse_body(raw)
    except UnreadableBody as error:
        assert_reason(error)
        return None
    assert parsed.format in ("native", "3commas", "octobot")
    assert isinstance(parsed.payload, dict) and all(isinstance(k, str) for k in parsed.payload)
    assert parsed.token is None or isinstance(parsed.token, str)
    if parsed.format != "octobot":
        assert not set(TOKEN_KEYS) & set(parsed.payload), "a token key was left in the payload"
    match_token(parsed.token, TOKENS)
    fingerprint_ = fingerprint("main", parsed.payload)
    try:
        signal = build_signal(parsed.payload, token_name="main", received_at=NOW, fingerprint_=fingerprint_, resend_window_s=120.0)
    except InvalidAlert as error:
        assert_reason(error)
        reason = redact(str(error), WEBHOOK_SECRETS)
        assert not SCAN.leaks_in(reason), f"the reason given holds a token: {reason!r}"
        return None
    if secret_in_signal(signal, WEBHOOK_SECRETS) is not None:
        return None  # the webhook refuses a valid alert whose signal would carry its token
    assert_valid_signal(signal)
    assert not SCAN.leaks_in(signal.model_dump_json()), f"the signal holds a token: {signal!r}"
    return signal


def assert_reason(error: Exception) -> None:
    reason = str(error)
    assert reason.strip(), f"{type(error).__name__} without a reason"
    assert len(reason) <= REASON_MAX, f"a reason of {len(reason)} characters: {reason[:100]}..."


_SYMBOL = re.compile(r"[A-Z0-9]{1,20}/USDT:USDT")
_ACCOUNT = re.compile(r"[A-Za-z0-9_-]{1,32}")
_SIGNAL_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,200}")
_PLACEHOLDER = re.compile(r"\{\{[^{}]*\}\}")


def assert_valid_signal(signal: SignalReceivedV1) -> None:
    """What the executor may rely on in every signal the ingress publishes."""
    assert isinstance(signal, SignalReceivedV1)
    # Built without pydantic's checks (model_construct): it must be exactly what validation gives, and survive the wire.
    validated = SignalReceivedV1.model_validate(dict(signal.__dict__))
    assert {k: (type(v), v) for k, v in signal.__dict__.items()} == {k: (type(v), v) for k, v in validated.__dict__.items()}
    assert decode(signal.TYPE, encode(signal)) == validated
    assert _SYMBOL.fullmatch(signal.symbol), f"symbol {signal.symbol!r}"
    assert _ACCOUNT.fullmatch(signal.account), f"account {signal.account!r}"
    assert _SIGNAL_ID.fullmatch(signal.signal_id), f"signal_id {signal.signal_id!r}"
    sizes = [v for v in (signal.qty, signal.usdt, signal.percent) if v is not None]
    assert len(sizes) <= 1
    if signal.action.opens and signal.action is not Action.REVERSE:
        assert sizes, "an opening signal without a size"
    for name in ("qty", "usdt", "percent", "price", "tp", "sl", "tp_pct", "sl_pct"):
        value = getattr(signal, name)
        assert value is None or (isinstance(value, Decimal) and value.is_finite() and value > 0), (name, value)
    assert signal.percent is None or signal.percent <= 100
    assert signal.usdt is None or signal.action.opens
    assert signal.market_position_size is None or (signal.market_position_size.is_finite() and signal.market_position_size >= 0)
    assert signal.leverage is None or 1 <= signal.leverage <= 150
    assert signal.order_type is OrderType.MARKET or signal.price is not None
    assert 0 < signal.max_lag_s <= 600
    assert signal.alert_time is None or signal.alert_time.tzinfo is not None
    assert signal.strategy is None or (len(signal.strategy) <= 128 and not _PLACEHOLDER.search(signal.strategy))
    signal.routing_key()


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.binary(max_size=2000))
@example(b"\xff\xfe{}")
@example(b"\xef\xbb\xbf{}")  # a UTF-8 BOM before the JSON
def test_arbitrary_bytes_are_read_or_refused_with_a_reason(raw):
    parse(raw)


@FUZZ
@given(st.dictionaries(st.one_of(st.sampled_from(NATIVE_KEYS), st.text(max_size=12)), json_values, max_size=8))
def test_arbitrary_json_objects_are_read_or_refused_with_a_reason(document):
    parse(json.dumps(document).encode())


# Regression, a bug this suite found: `'²'.isdigit()` is true but float('²') raises ValueError, which escaped the parser as a 500.
@example([("token", WEBHOOK_SECRET), ("symbol", "BTCUSDT.P"), ("action", "buy"), ("qty", 1), ("timestamp", "²")])
# Regression, a bug this suite found: `$` matches before a trailing newline, so a symbol 'BTC\n-USDT' became 'BTC\n/USDT:USDT'.
@example([("token", WEBHOOK_SECRET), ("symbol", "BTC\n-USDT"), ("action", "buy"), ("qty", 1)])
@example([("token", WEBHOOK_SECRET), ("symbol", "BTCUSDT"), ("action", "buy"), ("qty", 1), ("qty", "NaN")])  # duplicated
@FUZZ
@given(valid_native().flatmap(lambda base: mutated(base, NATIVE_KEYS)))
def test_near_valid_native_alerts_are_read_or_refused_with_a_reason(pairs):
    parse(native_body(pairs).encode())


# Regression, a bug this suite found: the reason quoted `order_type` lowercased, so the redaction (by exact case) let the token out.
@example(orjson.dumps({"token": WEBHOOK_SECRET, "symbol": "BTCUSDT", "action": "buy", "qty": 1, "order_type": WEBHOOK_SECRET}))
# Regression, a bug this suite found: a token in `id`, `account` or `strategy` was accepted into the signal (stored, logged, shown).
@example(orjson.dumps({"token": WEBHOOK_SECRET, "symbol": "BTCUSDT", "action": "buy", "qty": 1, "id": WEBHOOK_OTHER_SECRET}))
@example(orjson.dumps({"token": WEBHOOK_SECRET, "symbol": "BTCUSDT", "action": "buy", "qty": 1, "strategy": f"s {WEBHOOK_SECRET}"}))
@example(f"SYMBOL=BTCUSDT\nSIGNAL=BUY\nVOLUME=1\n{WEBHOOK_SECRET}=1\n{WEBHOOK_SECRET}=2\nTOKEN={WEBHOOK_SECRET}".encode())
@FUZZ
@given(secret_in_a_field())
def test_a_token_pasted_into_another_field_never_comes_back_out(raw):
    parse(raw)


@FUZZ
@given(mutated_three_commas())
def test_near_valid_three_commas_alerts_are_read_or_refused_with_a_reason(text):
    parse(text.encode())


@FUZZ
@given(mutated_octobot())
def test_near_valid_octobot_alerts_are_read_or_refused_with_a_reason(text):
    parse(text.encode("utf-8", "surrogatepass"))


@settings(FUZZ, max_examples=100)
@given(st.one_of(
    valid_native().map(lambda pairs: native_body(pairs).encode()),
    valid_three_commas().map(lambda d: orjson.dumps(d)),
    st.tuples(valid_octobot(), st.sampled_from(["\n", ";"])).map(lambda t: octobot_text(*t).encode()),
))
def test_every_valid_alert_of_every_format_becomes_a_signal(raw):
    assert parse(raw) is not None, raw


# ---------------------------------------------------------------------------------------------------------------------
# (b) The running ingress over HTTP, on the real broker and database: one app per test, many requests.

CONTENT_TYPES = ["application/json", "text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded",
                 "multipart/form-data; boundary=x", "application/octet-stream", "", "application/json; charset=latin-1"]
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
path_tokens = st.one_of(st.sampled_from([WEBHOOK_SECRET, WEBHOOK_OTHER_SECRET, "wrong", WEBHOOK_SECRET[:-1], WEBHOOK_SECRET + "x",
                                         WEBHOOK_SECRET.lower(), "%00", "%ED%A0%80", "%FF", "..", "{{token}}"]),
                        st.text(min_size=1, max_size=30).map(lambda t: quote(t, safe="")))
requests = st.fixed_dictionaries({
    "body": st.one_of(any_body, st.integers(64 * 1024 - 2, 64 * 1024 + 2).map(lambda n: b"{" + b" " * (n - 2) + b"}")),
    "content_type": st.one_of(st.sampled_from(CONTENT_TYPES), header_text),
    "path": st.one_of(st.just(WEBHOOK), path_tokens.map(lambda t: f"{WEBHOOK}/{t}")),
})
HTTP_FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
REFUSALS = {400, 401, 403, 408, 409, 413, 429}


async def _check_answer(scan, client, request: dict) -> tuple[int, dict | None]:
    status, text, body = await answer(scan, client, "POST", request["path"], data=request["body"],
                                      headers={"Content-Type": request["content_type"]})
    assert status < 500, (status, text)
    if not await routed(client, request["path"]):
        # A path that is no webhook route at all ('/webhook/tradingview/..' is '/webhook' once normalised): aiohttp's
        # router answers it, before any of our code runs.
        assert status == 404, (status, text)
        return status, None
    assert status == 200 or status in REFUSALS, (status, text)
    assert isinstance(body, dict), f"not a JSON object: {text[:200]!r}"
    if status == 200:
        assert body["status"] in ("accepted", "duplicate") and body["signal_id"], body
    else:
        assert body["status"] == "rejected" and isinstance(body["reason"], str) and body["reason"].strip(), body
    return status, body


async def test_nothing_sent_to_the_webhook_gets_a_5xx_and_every_refusal_says_why(
        amqp_url, mongo_uri, mongo_db_name, mongo_db, secret_scan):
    outcomes: list[int] = []
    accepted: set[str] = set()
    async with ingress_client(amqp_url, mongo_uri, mongo_db_name) as client:
        on_loop = OnLoop()

        @HTTP_FUZZ
        @given(request=requests)
        @example(request={"body": orjson.dumps({"token": WEBHOOK_SECRET, "symbol": "BTCUSDT", "action": "buy", "qty": 1,
                                                 "timestamp": "²"}), "content_type": "text/plain", "path": WEBHOOK})
        @example(request={"body": orjson.dumps({"token": WEBHOOK_SECRET, "symbol": "BTCUSDT", "action": "buy", "qty": 1,
                                                 "id": WEBHOOK_OTHER_SECRET}), "content_type": "application/json", "path": WEBHOOK})
        @example(request={"body": b"{" + b" " * (64 * 1024) + b"}", "content_type": "application/json", "path": WEBHOOK})
        @example(request={"body": orjson.dumps({"token": WEBHOOK_SECRET, "symbol": "BTCUSDT", "action": "buy", "qty": 1,
                                                 "order_type": WEBHOOK_SECRET}), "content_type": "text/plain", "path": WEBHOOK})
        def one(request):
            status, body = on_loop(_check_answer(secret_scan, client, request))
            outcomes.append(status)
            if status == 200:
                accepted.add(body["signal_id"])

        await on_loop.examples(one)
        await _everything_accepted_was_queued(amqp_url, accepted, secret_scan)
    assert len(set(outcomes)) >= 3, f"the fuzzing reached too few outcomes: {sorted(set(outcomes))}"
    await secret_scan.add_database(mongo_db)


_unique = itertools.count()


@st.composite
def valid_requests(draw) -> dict:
    """A valid alert of any format, with the token in the body or the path, under any content type. Each one is made
    unique when it is sent (its id), so that each must be accepted, not answered as a duplicate."""
    kind = draw(st.sampled_from(["native", "json-as-text", "3commas", "octobot"]))
    in_path = draw(st.booleans())
    if kind in ("native", "json-as-text"):
        pairs = [(k, v) for k, v in draw(valid_native()) if k not in TOKEN_KEYS]
        make = lambda unique: native_body(pairs + [("id", unique)] + ([] if in_path else [("token", WEBHOOK_OTHER_SECRET)]))  # noqa: E731
        content_type = "application/json" if kind == "native" else "text/plain"
    elif kind == "3commas":
        document = {k: v for k, v in draw(valid_three_commas()).items() if k != "secret"}
        make = lambda unique: json.dumps({**document, "id": unique, **({} if in_path else {"secret": WEBHOOK_OTHER_SECRET})})  # noqa: E731
        content_type = draw(st.sampled_from(["application/json", "text/plain"]))
    else:
        pairs = [(k, v) for k, v in draw(valid_octobot()) if k != "TOKEN"]
        separator = draw(st.sampled_from(["\n", ";"]))
        make = lambda unique: octobot_text(pairs + [("ID", unique)] + ([] if in_path else [("TOKEN", WEBHOOK_OTHER_SECRET)]), separator)  # noqa: E731
        content_type = draw(st.sampled_from(["text/plain", "application/json", draw(header_text)]))
    return {"make": make, "content_type": content_type,
            "path": f"{WEBHOOK}/{WEBHOOK_OTHER_SECRET}" if in_path else WEBHOOK, "kind": kind}


async def test_every_valid_alert_is_accepted_and_queued(amqp_url, mongo_uri, mongo_db_name, mongo_db, secret_scan):
    accepted: set[str] = set()
    async with ingress_client(amqp_url, mongo_uri, mongo_db_name) as client:
        on_loop = OnLoop()

        @HTTP_FUZZ
        @given(request=valid_requests())
        def one(request):
            unique = f"fz-{next(_unique)}-{mongo_db_name[-6:]}"
            body = request["make"](unique)
            status, text, answer_body = on_loop(answer(secret_scan, client, "POST", request["path"], data=body.encode(),
                                                       headers={"Content-Type": request["content_type"]}))
            assert status == 200 and answer_body == {"status": "accepted", "signal_id": unique}, (body, text)
            accepted.add(unique)

        await on_loop.examples(one)
        await _everything_accepted_was_queued(amqp_url, accepted, secret_scan)
    await secret_scan.add_database(mongo_db)


async def _everything_accepted_was_queued(amqp_url: str, accepted: set[str], scan) -> None:
    """Nothing accepted is lost (DESIGN.md rule 1): every signal answered 200 waits in the executor's queues."""
    queued = await drain_signals(amqp_url)
    scan.add_messages("signals queued for the executor", queued)
    for signal in queued:
        assert_valid_signal(signal)
    missing = accepted - {s.signal_id for s in queued}
    assert not missing, f"{len(missing)} accepted signals are not in the queues: {sorted(missing)[:5]}"
