"""The ingress's pure guards and format readers."""

from __future__ import annotations

import pytest

from services.ingress.formats import UnreadableBody, parse_body
from services.ingress.guards import RateLimiter, client_address, parse_networks, parse_scopes, source_allowed

PROXIES = parse_networks("10.0.0.0/8")


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("203.0.113.5", "52.89.214.238", "203.0.113.5"),  # untrusted peer: its header is ignored
        ("10.1.1.1", "52.89.214.238", "52.89.214.238"),
        ("10.1.1.1", "1.1.1.1, 52.89.214.238, 10.2.2.2", "52.89.214.238"),  # nearest untrusted hop
        ("10.1.1.1", "garbage", None),
        ("10.1.1.1", None, "10.1.1.1"),
        ("::ffff:10.1.1.1", "52.89.214.238", "52.89.214.238"),
    ],
)
def test_client_address(peer, xff, expected):
    assert client_address(peer, xff, PROXIES) == expected


def test_allowlist_with_the_tradingview_preset():
    allowed = parse_networks("tradingview, 192.0.2.0/24", presets={"tradingview": ["52.89.214.238"]})
    assert source_allowed("52.89.214.238", allowed) and source_allowed("192.0.2.77", allowed)
    assert not source_allowed("52.89.214.239", allowed) and not source_allowed(None, allowed)
    assert source_allowed("anything", ())
    with pytest.raises(ValueError, match="not an IP address"):
        parse_networks("example.com")


def test_rate_limiter_refills_with_time_and_forgets_idle_keys():
    now = [0.0]
    limiter = RateLimiter(2, clock=lambda: now[0], max_keys=2)
    # A burst of five: a close and an open fired together both pass.
    assert [limiter.allow("a") for _ in range(6)] == [True] * 5 + [False]
    now[0] += 0.5
    assert limiter.allow("a") and not limiter.allow("a")
    limiter.allow("b"), limiter.allow("c")
    assert len(limiter._buckets) == 2
    assert RateLimiter(0).allow("x")


def test_scopes_parse():
    assert parse_scopes("main=BTCUSDT.P|ETHUSDT.P, b=SOL") == {"main": ("BTCUSDT.P", "ETHUSDT.P"), "b": ("SOL",)}
    with pytest.raises(ValueError):
        parse_scopes("main")


@pytest.mark.parametrize(
    ("raw", "fmt", "payload", "token"),
    [
        (b'{"token": "t", "symbol": "X"}', "native", {"symbol": "X"}, "t"),
        (b'  {"secret": "t", "tv_instrument": "X", "action": "buy", "order": {"amount": "1"}}', "3commas",
         {"symbol": "X", "action": "buy", "qty": "1"}, "t"),
        (b"SYMBOL=X\r\nSIGNAL=SELL\r\nVOLUME=1\r\nTOKEN=t", "octobot", {"symbol": "X", "action": "sell", "qty": "1"}, "t"),
        (b"SYMBOL=X;PRICE=5;SIGNAL=BUY", "octobot", {"symbol": "X", "action": "buy"}, None),
        (b'{"token": 5}', "native", {}, "\x00"),
    ],
)
def test_formats(raw, fmt, payload, token):
    parsed = parse_body(raw)
    assert (parsed.format, parsed.payload, parsed.token) == (fmt, payload, token)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [(b"", "empty"), (b"\xff\xfe", "not UTF-8"), (b"SIGNAL=CANCEL;SYMBOL=X", "CANCEL is not supported"),
     (b'{"order": {"amount": 1, "currency_type": "lots"}}', "currency_type"),
     (b"SYMBOL=BTCUSDT.P;SIGNAL=BUY;VOLUME=1;VOLUME=2", "VOLUME is given twice"),  # which size was meant?
     (b'{"symbol": "BTCUSDT.P", "qty": {{strategy.order.contracts}}}', r"placeholder \{\{strategy.order.contracts\}\} unfilled"),
     (b"{{strategy.order.alert_message}}", r"placeholder \{\{strategy.order.alert_message\}\} unfilled")],
)
def test_unreadable_bodies(raw, reason):
    with pytest.raises(UnreadableBody, match=reason):
        parse_body(raw)
