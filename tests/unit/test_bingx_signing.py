"""The simulator's signature checks against the reference §3 vectors and BingX's error codes, in their order."""

from __future__ import annotations

from urllib.parse import quote, urlencode

import pytest

from services.bingx_sim.engine import BingxError
from services.bingx_sim.signing import parse_query, sign, split_query, verify

KEY, SECRET, TS = "testkey", "testsecret", 1700000000000

ORDER_SIGNED = (
    'positionSide=LONG&quantity=0.01&reduceOnly=true&side=BUY&stopLoss={"stopPrice":55000.1,"workingType":'
    '"MARK_PRICE","type":"STOP_MARKET","quantity":0.01}&symbol=BTC-USDT&timestamp=1700000000000&type=MARKET'
)
ORDER_SIGNATURE = "6d00a9813180c6a034d6aee12bc515e8dac58bc7c49aab31a54802686d6e3256"
BALANCE_SIGNATURE = "dd273985d88b32eaeeb19cafcc2dbaa9ac658e274cd4095d474395560c4b09b7"


def wire(params: dict[str, str], secret: str = SECRET) -> str:
    """A query as ccxt puts it on the wire: percent-encoded with quote, signature (of the raw form) last."""
    raw = "&".join(f"{k}={v}" for k, v in params.items())
    return urlencode(params, quote_via=quote) + "&signature=" + sign(secret, raw)


def error_code(raw_query: str, key: str | None = KEY, now: int = TS) -> int | None:
    try:
        verify(raw_query, key, KEY, SECRET, now)
    except BingxError as error:
        return error.code
    return None


def test_balance_vector_verifies() -> None:
    raw = f"timestamp={TS}&signature={BALANCE_SIGNATURE}"
    assert sign(SECRET, f"timestamp={TS}") == BALANCE_SIGNATURE
    assert error_code(raw) is None


def test_order_vector_verifies_in_its_url_encoded_wire_form() -> None:
    assert sign(SECRET, ORDER_SIGNED) == ORDER_SIGNATURE
    params = dict(part.split("=", 1) for part in ORDER_SIGNED.split("&"))
    raw = urlencode(params, quote_via=quote) + "&signature=" + ORDER_SIGNATURE
    assert "stopLoss=%7B%22stopPrice%22%3A55000.1%2C" in raw
    assert split_query(raw) == (ORDER_SIGNED, ORDER_SIGNATURE)
    assert error_code(raw) is None
    assert parse_query(raw)["stopLoss"].startswith('{"stopPrice":55000.1,')


def test_signing_the_percent_encoded_form_does_not_verify() -> None:
    params = dict(part.split("=", 1) for part in ORDER_SIGNED.split("&"))
    encoded = urlencode(params, quote_via=quote)
    assert error_code(f"{encoded}&signature={sign(SECRET, encoded)}") == 100001


def test_parameters_are_verified_in_arrival_order_without_resorting() -> None:
    unsorted = {"symbol": "BTC-USDT", "timestamp": str(TS), "recvWindow": "5000"}
    assert error_code(wire(unsorted)) is None
    # The same parameters signed in another order than they are sent do not verify.
    resorted = "recvWindow=5000&symbol=BTC-USDT&timestamp=1700000000000"
    assert error_code(urlencode(unsorted) + "&signature=" + sign(SECRET, resorted)) == 100001


def test_a_space_sent_as_percent_20_is_decoded_before_verifying() -> None:
    params = {"note": "a b", "timestamp": str(TS)}
    raw = wire(params)
    assert "note=a%20b" in raw
    assert error_code(raw) is None
    assert parse_query(raw)["note"] == "a b"


def test_uppercase_hex_signature_is_accepted() -> None:
    assert error_code(f"timestamp={TS}&signature={BALANCE_SIGNATURE.upper()}") is None


@pytest.mark.parametrize(
    ("raw", "key", "now", "code"),
    [
        (f"timestamp={TS}&signature={BALANCE_SIGNATURE}", None, TS, 100413),
        (f"timestamp={TS}&signature={BALANCE_SIGNATURE}", "otherkey", TS, 100413),
        # The key is checked before anything else, even when the signature is missing too.
        (f"timestamp={TS}", None, TS, 100413),
        (f"timestamp={TS}", KEY, TS, 100412),
        (f"timestamp={TS}&signature=", KEY, TS, 100412),
        (f"timestamp={TS}&signature={'0' * 64}", KEY, TS, 100001),
        (f"timestamp={TS + 1}&signature={BALANCE_SIGNATURE}", KEY, TS, 100001),
        (f"timestamp={TS}&signature={BALANCE_SIGNATURE}", KEY, TS + 5000, None),
        (f"timestamp={TS}&signature={BALANCE_SIGNATURE}", KEY, TS - 5000, None),
        (f"timestamp={TS}&signature={BALANCE_SIGNATURE}", KEY, TS + 5001, 100421),
        (f"timestamp={TS}&signature={BALANCE_SIGNATURE}", KEY, TS - 60000, 100421),
    ],
)
def test_errors_come_in_bingx_order(raw: str, key: str | None, now: int, code: int | None) -> None:
    assert error_code(raw, key, now) == code


def test_missing_timestamp_is_100421_once_the_signature_matches() -> None:
    assert error_code(wire({"symbol": "BTC-USDT"})) == 100421
    assert error_code(wire({"symbol": "BTC-USDT", "timestamp": "soon"})) == 100421


def test_recv_window_widens_the_window_up_to_a_cap() -> None:
    ten_seconds_old = wire({"recvWindow": "20000", "timestamp": str(TS - 10000)})
    assert error_code(ten_seconds_old) is None
    two_minutes_old = wire({"recvWindow": "999999999", "timestamp": str(TS - 120000)})
    assert error_code(two_minutes_old) == 100421


def test_error_messages_are_bingx_s() -> None:
    with pytest.raises(BingxError) as caught:
        verify(f"timestamp={TS}&signature={'0' * 64}", KEY, KEY, SECRET, TS)
    assert caught.value.msg == "Signature verification failed due to signature mismatch"
    with pytest.raises(BingxError) as caught:
        verify(wire({"symbol": "BTC-USDT"}), KEY, KEY, SECRET, TS)
    assert caught.value.msg == "Null timestamp or timestamp mismatch"
