"""Message contracts on the wire: readers tolerate fields a newer writer added (DESIGN: contracts)."""

from __future__ import annotations

from decimal import Decimal

import orjson

from shared.contracts import SignalReceivedV1, decode, encode, utcnow


def test_a_signal_with_an_unknown_field_is_still_read():
    written = SignalReceivedV1(signal_id="sig-1", token_name="main", symbol="BTC/USDT:USDT", action="buy",
                               qty=Decimal("0.01"), received_at=utcnow())
    body = orjson.loads(encode(written))
    body["added_in_a_later_release"] = {"anything": [1, 2]}
    read = decode("SignalReceivedV1", orjson.dumps(body))
    assert read == written
    assert not hasattr(read, "added_in_a_later_release")
