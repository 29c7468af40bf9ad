"""The ingress's pure rules: symbols, tokens, sizes, placeholders, signal ids."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingress.domain import InvalidAlert, build_signal, fingerprint, match_token, normalize_symbol, signal_id_for
from shared.contracts import SignalReceivedV1, decode, encode
from shared.settings import parse_webhook_tokens

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("raw", ["BTCUSDT.P", "BINANCE:BTCUSDT.P", "BTC-USDT", "BTC/USDT:USDT", "btcusdt", "BTC/USDT", "BYBIT:BTCUSDT"])
def test_every_symbol_form_means_the_same_market(raw):
    assert normalize_symbol(raw) == "BTC/USDT:USDT"


@pytest.mark.parametrize("raw", ["BTCEUR", "BTC/USDC:USDC", "BTC/USDT:BTC", "B$C-USDT", "USDT"])
def test_symbols_that_are_not_usdt_perpetuals_are_refused(raw):
    with pytest.raises(InvalidAlert):
        normalize_symbol(raw)


def test_match_token_finds_the_right_name_and_refuses_near_misses():
    tokens = parse_webhook_tokens("a:first-secret,b:second-secret")
    assert match_token("second-secret", tokens).name == "b"
    assert match_token("second-secre", tokens) is None
    assert match_token("", tokens) is None
    assert match_token(None, tokens) is None


def test_signal_id_is_the_payload_id_or_the_fingerprint_and_first_sighting():
    alert = {"symbol": "BTCUSDT.P", "action": "buy", "qty": 1}
    fp = fingerprint("main", alert)
    assert signal_id_for(fp, "abc", 1) == "abc"
    assert signal_id_for(fp, None, 1) == f"h-{fp[:24]}-1" != signal_id_for(fp, None, 2)
    assert fp == fingerprint("main", dict(reversed(list(alert.items()))))  # key order does not matter
    assert fp != fingerprint("other", alert) and fp != fingerprint("main", {**alert, "qty": 2})


def test_the_strategys_claimed_position_is_read_and_checked():
    s = build_signal({"symbol": "BTCUSDT.P", "action": "buy", "qty": 1, "market_position": "Long", "market_position_size": "0"},
                     token_name="main", received_at=NOW)
    assert (s.market_position, s.market_position_size) == ("long", Decimal("0"))
    with pytest.raises(InvalidAlert, match="'market_position' must be long, short or flat"):
        build_signal({"symbol": "BTCUSDT.P", "action": "buy", "qty": 1, "market_position": "up"}, token_name="main", received_at=NOW)


def test_a_reverse_cannot_be_reduce_only():
    with pytest.raises(InvalidAlert, match="cannot be reduce_only"):
        build_signal({"symbol": "BTCUSDT.P", "action": "reverse", "reduce_only": True}, token_name="main", received_at=NOW)


def test_a_reverse_may_come_without_a_size():
    s = build_signal({"symbol": "BTCUSDT.P", "action": "reverse"}, token_name="main", received_at=NOW)
    assert s.action.value == "reverse" and (s.qty, s.usdt, s.percent) == (None, None, None)


def test_an_alert_without_an_id_carries_its_fingerprint_so_the_executor_knows_its_resends():
    alert = {"symbol": "BTCUSDT.P", "action": "buy", "qty": 1}
    plain = build_signal(alert, token_name="main", received_at=NOW, resend_window_s=120)
    assert plain.resend_key == fingerprint("main", alert) and plain.resend_window_s == 120
    keyed = build_signal({**alert, "id": "a-1"}, token_name="main", received_at=NOW, resend_window_s=120)
    assert keyed.resend_key is None and keyed.resend_window_s is None  # its id names every delivery alike
    assert build_signal(alert, token_name="main", received_at=NOW, resend_window_s=0).resend_key is None


def test_the_fingerprint_says_nothing_about_the_token():
    from services.ingress.formats import parse_body

    assert fingerprint("main", parse_body(b'{"token": "weak", "a": 1}').payload) == fingerprint("main", {"a": 1})


def signal(**payload):
    return build_signal(payload, token_name="main", received_at=NOW)


def test_a_full_native_alert_is_normalised():
    s = signal(symbol="ETHUSDT.P", action="LONG", usdt="250.5", leverage=5, margin_mode="Isolated", timestamp="2026-12-03T11:59:58Z",
               max_lag="30", strategy="trend", account="acct-1", id="x.1")
    assert (s.signal_id, s.symbol, s.action.value, s.usdt, s.leverage, s.margin_mode) == ("x.1", "ETH/USDT:USDT", "long", Decimal("250.5"), 5, "isolated")
    assert s.alert_time == datetime(2026, 12, 3, 11, 59, 58, tzinfo=timezone.utc) and s.max_lag_s == 30 and s.account == "acct-1"


def test_a_close_needs_no_size_and_max_lag_is_capped():
    s = signal(symbol="BTCUSDT", action="close_long", max_lag=100000)
    assert s.qty is None and s.max_lag_s == 600


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"symbol": "BTCUSDT", "action": "buy", "qty": "0"}, "'qty' must be greater than zero"),
        ({"symbol": "BTCUSDT", "action": "buy", "qty": "NaN"}, "finite"),
        ({"symbol": "BTCUSDT", "action": "buy", "qty": "1e999999999"}, "out of range"),
        ({"symbol": "BTCUSDT", "action": "buy", "qty": True}, "'qty' must be a number"),
        ({"symbol": "BTCUSDT", "action": "buy", "percent": 150}, "more than 100"),
        ({"symbol": "BTCUSDT", "action": "buy", "qty": 1, "order_type": "limit"}, "needs a 'price'"),
        ({"symbol": "BTCUSDT", "action": "buy", "qty": 1, "leverage": 2.5}, "whole number"),
        ({"symbol": "{{ticker}}", "action": "buy", "qty": 1}, "'symbol' holds an unfilled TradingView placeholder ({{ticker}})"),
        ({"symbol": "BTCUSDT", "action": "buy", "qty": 1, "timestamp": "yesterday"}, "'timestamp' is not a time"),
        ({"symbol": "BTCUSDT", "action": "buy", "qty": 1, "account": "a.b"}, "'account' may hold only"),
        ({"symbol": "BTCUSDT", "action": "buy", "qty": 1, "id": "a b"}, "'id' may hold only"),
        ({"symbol": "BTCUSDT", "action": "buy", "qty": 1, "id": "é" * 100}, "'id' may hold only"),
        ({"symbol": "BTCUSDT", "action": "buy", "qty": 1, "timestamp": 99999999999999999999}, "'timestamp' is not a time"),
        ({"symbol": "BTCUSDT", "action": "buy", "qty": 1, "timestamp": -1e15}, "'timestamp' is not a time"),
        ({"symbol": "BTCUSDT", "action": "close_long", "usdt": 100}, "'usdt' sizes an opening order"),
        ({"symbol": "BTCUSDT", "action": "buy", "qty": 1, "x": {"a": {"b": {"c": {"d": {"e": {"f": {}}}}}}}}, "nested too deeply"),
    ],
)
def test_bad_alerts_are_refused_with_the_reason(payload, reason):
    with pytest.raises(InvalidAlert) as error:
        signal(**payload)
    assert reason in str(error.value)


@settings(deadline=None)
@given(st.dictionaries(st.sampled_from(["symbol", "action", "qty", "usdt", "percent", "price", "order_type", "leverage", "timestamp",
                                         "max_lag", "id", "account", "reduce_only", "tp", "sl", "margin_mode"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=30),
                                 st.lists(st.integers(), max_size=2))))
def test_any_payload_becomes_a_signal_or_a_clear_refusal(payload):
    try:
        result = signal(**payload)
    except InvalidAlert as error:
        assert str(error)
    else:
        assert result.symbol.endswith("/USDT:USDT")


def _as_validated(built: SignalReceivedV1) -> None:
    """build_signal skips pydantic's checks (model_construct): what it builds must be what validation would give."""
    validated = SignalReceivedV1.model_validate(dict(built.__dict__))
    assert {k: (type(v), v) for k, v in built.__dict__.items()} == {k: (type(v), v) for k, v in validated.__dict__.items()}
    assert decode(built.TYPE, encode(built)) == validated


_numbers = st.one_of(st.integers(-5, 10**6), st.decimals(allow_nan=False, allow_infinity=False, places=4).map(str),
                     st.floats(0.0001, 1e6), st.just(""))


@settings(deadline=None, max_examples=300)
@given(st.fixed_dictionaries(
    {"symbol": st.sampled_from(["BTCUSDT", "ETHUSDT.P", "BINANCE:SOLUSDT.P", "BTC-USDT", "BTC/USDT:USDT"]),
     "action": st.sampled_from(["buy", "SELL", "long", "short", "close_long", "close_short", "close", "flat", "reverse", "exit"])},
    optional={"qty": _numbers, "usdt": _numbers, "percent": _numbers, "price": _numbers, "tp": _numbers, "sl": _numbers,
              "tp_pct": _numbers, "sl_pct": _numbers, "max_lag": _numbers, "leverage": st.integers(-1, 200),
              "order_type": st.sampled_from(["market", "LIMIT"]), "margin_mode": st.sampled_from(["isolated", "Cross"]),
              "timestamp": st.one_of(st.integers(1_600_000_000, 1_900_000_000), st.just("2026-12-03T11:59:58Z")),
              "reduce_only": st.booleans(), "strategy": st.text(max_size=10), "account": st.sampled_from(["default", "a-1"]),
              "id": st.from_regex(r"[a-z0-9.:_-]{1,20}", fullmatch=True),
              "market_position": st.sampled_from(["long", "Flat", "short"]), "market_position_size": _numbers},
))
def test_a_built_signal_is_exactly_what_validation_would_give(payload):
    try:
        built = signal(**payload)
    except InvalidAlert:
        return
    _as_validated(built)


def test_a_hostile_placeholder_is_refused_quickly_and_not_echoed_whole():
    import time

    started = time.perf_counter()
    with pytest.raises(InvalidAlert) as error:
        signal(symbol="BTCUSDT", action="buy", qty=1, strategy="{{" * 20000 + "x}}")
    assert time.perf_counter() - started < 0.5 and len(str(error.value)) < 200


def test_a_secret_or_the_beginning_of_one_is_redacted_from_a_reason():
    from shared.redaction import redact

    secret = "Zq8hT2x_5nR0pLk4wV9cYb1mJ6sEoA3uGdF7iNtH-Xe"  # as secrets.token_urlsafe(32) makes them: 43 characters
    quoted = f"unknown action {secret[:32]!r} (buy, sell, ...)"  # the reason quotes at most 32 characters
    assert redact(quoted, (secret,)) == "unknown action '***' (buy, sell, ...)"
    assert redact(f"a {secret} b", (secret,)) == "a *** b"
    assert redact("unknown action 'Zq8h' (buy)", (secret,)) == "unknown action 'Zq8h' (buy)"  # 4 characters tell nothing


def test_a_token_is_kept_out_of_the_signal_but_a_name_that_shares_a_few_letters_with_it_is_not_refused():
    """The alert is refused only when what the signal keeps (id, account, strategy, ...) holds the token or its
    first 12 characters: a strategy named like the start of a token is an ordinary alert, which a 400 would lose
    (TradingView does not resend a 4xx); a token in a field the signal drops goes nowhere."""
    from services.ingress.domain import secret_in_signal

    token = "tradingview-2024-Q7pW3kZx9"
    received = datetime(2026, 12, 4, tzinfo=timezone.utc)

    def signal(**fields) -> SignalReceivedV1:
        payload = {"symbol": "BTCUSDT.P", "action": "buy", "qty": "0.01", **fields}
        return build_signal(payload, token_name="main", received_at=received, fingerprint_="f" * 16)

    assert secret_in_signal(signal(strategy="TradingView Supertrend"), (token,)) is None
    assert secret_in_signal(signal(note=token), (token,)) is None  # dropped by the signal
    assert secret_in_signal(signal(id=token), (token,)) == "signal_id"
    assert secret_in_signal(signal(strategy=f"x {token[:12].upper()} y"), (token,)) == "strategy"
    assert secret_in_signal(signal(strategy="TradingView Supertrend"), ("tradingview",)) is None  # a short, weak token
