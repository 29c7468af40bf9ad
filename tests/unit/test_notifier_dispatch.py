"""The notifier's pure parts: splitting on Telegram's limit, routing by kind, the token bucket, NOTIFY_EVENTS."""

from __future__ import annotations

from html import escape, unescape

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.notifier.dispatch import Route, TokenBucket, route_of, split_message
from services.notifier.settings import NotifierSettings
from shared.contracts import KillSwitchMode, KillSwitchTripV1, utcnow


@settings(deadline=None, max_examples=200)
@given(st.lists(st.text(alphabet=st.sampled_from("ab >/;\u00e9"), max_size=300), max_size=60), st.integers(20, 200))
def test_split_keeps_every_character_in_order_and_each_part_within_the_limit(lines, limit):
    text = escape("\n".join(lines), quote=False)  # as render() makes it: every value escaped
    parts = split_message(text, limit)
    assert all(len(part) <= limit for part in parts)
    assert unescape("".join(parts)).replace("\n", "").replace(" ", "") == unescape(text).replace("\n", "").replace(" ", "")


def test_split_cuts_on_line_breaks_and_never_inside_a_tag_or_an_entity():
    text = "\n".join(f"<b>line {n}</b> with some words &amp; more" for n in range(400))
    parts = split_message(text)
    assert len(parts) > 1 and all(len(p) <= 4096 for p in parts)
    assert all(p.count("<b>") == p.count("</b>") for p in parts)  # whole lines only
    long_line = "<b>" + "x &amp; " * 1500 + "</b> <code>" + "y" * 50 + "</code>"  # one line of about 12,000 characters
    pieces = split_message(long_line)
    assert len(pieces) >= 3 and all(len(p) <= 4096 for p in pieces)
    assert all("<" not in p and p.count("&") == p.count("&amp;") for p in pieces)  # plain text, whole entities
    assert unescape("".join(pieces)).replace(" ", "") == ("x&" * 1500 + "y" * 50)


def test_a_sev1_trip_goes_whatever_the_routing_says():
    routes = {"trip": Route.OFF}
    sev1 = KillSwitchTripV1(trip_id="1", mode=KillSwitchMode.HALTED, reason="r", actor="executor", severity="SEV1", tripped_at=utcnow())
    assert route_of(sev1, routes) is Route.ON
    assert route_of(sev1.model_copy(update={"severity": "SEV2"}), routes) is Route.OFF


def test_the_bucket_allows_its_burst_then_its_rate():
    bucket = TokenBucket(rate=2.0, burst=2.0)
    now = bucket.updated
    assert bucket.wait(now) == 0
    bucket.take(now)
    bucket.take(now)
    assert bucket.wait(now) == pytest.approx(0.5)
    assert bucket.wait(now + 0.5) == 0


def test_notify_events_is_read_and_checked(monkeypatch):
    for name in ("TELEGRAM_API_ID", "TELEGRAM_API_HASH", "TELEGRAM_BOT_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    base = {"amqp_url": "amqp://guest:guest@127.0.0.1/", "mongo_uri": "mongodb://127.0.0.1/"}
    assert NotifierSettings(**base, notify_events="Skipped=silent, placed=OFF").notify_events == {"skipped": "silent", "placed": "off"}
    with pytest.raises(ValueError, match="unknown event kind 'sold'"):
        NotifierSettings(**base, notify_events="sold=off")
    with pytest.raises(ValueError, match="must be on, silent or off"):
        NotifierSettings(**base, notify_events="placed=loud")
