"""Contract: every error code of reference §8 the simulator can produce, driven through real ccxt, raises the ccxt
exception class §8 lists. Codes the simulator produces on its own are reached by the request that causes them;
the rest (and the non-JSON HTTP statuses) through the fault API."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import ccxt.async_support as ccxt
import pytest

from tests.bingx_sim_support import connected_sim, make_ccxt

BTC = "BTC/USDT:USDT"
SOL = "SOL/USDT:USDT"
BALANCE = "/openApi/swap/v3/user/balance"


@dataclass
class Venue:
    base_url: str
    exchange: ccxt.bingx
    sandbox: bool

    async def admin(self, path: str, body: object) -> None:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{self.base_url}{path}", json=body) as response:
                assert response.status == 200, await response.text()

    async def other_client(self, api_key: str, secret: str) -> None:
        client = make_ccxt(self.base_url, api_key, secret, sandbox=self.sandbox)
        try:
            await client.fetch_balance()
        finally:
            await client.close()


@pytest.fixture(params=[True, False], ids=["sandbox", "live"])
async def venue(request: pytest.FixtureRequest) -> AsyncIterator[Venue]:
    """Every code in both of ccxt's URL modes: sandbox (VST demo URLs) and live (urls['api'] at the simulator)."""
    async with connected_sim(sandbox=request.param) as (base_url, exchange):
        yield Venue(base_url, exchange, request.param)


Scenario = Callable[[Venue], Awaitable[object]]


async def bad_signature(v: Venue) -> object:
    return await v.other_client("k", "not-the-secret")


async def unknown_key(v: Venue) -> object:
    return await v.other_client("nobody", "s")


async def stale_timestamp(v: Venue) -> object:
    v.exchange.nonce = lambda: int((time.time() - 3600) * 1000)
    return await v.exchange.fetch_balance()


async def insufficient_margin(v: Venue) -> object:
    return await v.exchange.create_order(BTC, "market", "buy", 5)


async def unknown_order(v: Venue) -> object:
    return await v.exchange.fetch_order("1234567", BTC)


async def unknown_position(v: Venue) -> object:
    return await v.exchange.close_position(BTC, None, {"positionId": "1234567"})


async def cancel_unknown_order(v: Venue) -> object:
    return await v.exchange.cancel_order("1234567", BTC)


async def cancel_filled_order(v: Venue) -> object:
    filled = await v.exchange.create_order(BTC, "market", "buy", 0.01)
    return await v.exchange.cancel_order(filled["id"], BTC)


async def repeated_client_id(v: Venue) -> object:
    await v.exchange.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "Same-1"})
    return await v.exchange.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "same-1"})


async def below_minimum(v: Venue) -> object:
    return await v.exchange.create_order(SOL, "market", "buy", 0.01)  # 1.5 USDT, under the 2 USDT minimum


async def nothing_to_close(v: Venue) -> object:
    return await v.exchange.create_order(BTC, "market", "sell", 0.01, None, {"reduceOnly": True})


async def hedge_side_in_one_way_mode(v: Venue) -> object:
    return await v.exchange.create_order(BTC, "market", "buy", 0.01, None, {"positionSide": "LONG"})


async def invalid_parameter(v: Venue) -> object:
    return await v.exchange.swap_v1_private_post_positionside_dual({"dualSidePosition": "maybe"})


async def unknown_symbol(v: Venue) -> object:
    return await v.exchange.swap_v2_public_get_quote_ticker({"symbol": "NOPE-USDT"})


async def leverage_of_unknown_symbol(v: Venue) -> object:
    return await v.exchange.swap_v2_private_post_trade_leverage({"symbol": "NOPE-USDT", "side": "BOTH",
                                                                 "leverage": 5})


async def rate_limited(v: Venue) -> object:
    await v.admin("/_sim/rate_limit", {"enabled": True, "per_second": 1})
    await v.exchange.fetch_balance()
    return await v.exchange.fetch_balance()


async def reduce_only_would_open(v: Venue) -> object:
    await v.exchange.create_order(BTC, "market", "buy", 0.01)
    return await v.exchange.create_order(BTC, "market", "buy", 0.01, None, {"reduceOnly": True})


async def post_only_would_take(v: Venue) -> object:
    return await v.exchange.create_order(BTC, "limit", "buy", 0.01, 61000, {"postOnly": True})


async def duplicate_position_stop_loss(v: Venue) -> object:
    await v.exchange.create_order(BTC, "market", "buy", 0.01)
    await v.exchange.create_order(BTC, "market", "sell", 0.01, None, {"stopLossPrice": 55000, "closePosition": True})
    return await v.exchange.create_order(BTC, "market", "sell", 0.01, None,
                                         {"stopLossPrice": 54000, "closePosition": True})


async def duplicate_position_take_profit(v: Venue) -> object:
    await v.exchange.create_order(BTC, "market", "buy", 0.01)
    await v.exchange.create_order(BTC, "market", "sell", 0.01, None, {"takeProfitPrice": 65000, "closePosition": True})
    return await v.exchange.create_order(BTC, "market", "sell", 0.01, None,
                                         {"takeProfitPrice": 66000, "closePosition": True})


async def stop_loss_on_the_wrong_side(v: Venue) -> object:
    return await v.exchange.create_order(BTC, "market", "buy", 0.01, None, {"stopLoss": {"triggerPrice": 61000}})


async def take_profit_on_the_wrong_side(v: Venue) -> object:
    return await v.exchange.create_order(BTC, "market", "buy", 0.01, None, {"takeProfit": {"triggerPrice": 59000}})


async def trigger_at_the_price(v: Venue) -> object:
    return await v.exchange.create_order(BTC, "market", "buy", 0.01, None, {"stopLoss": {"triggerPrice": 60000}})


# (code, scenario, the exact ccxt class of §8)
PRODUCED: list[tuple[int, Scenario, type[Exception]]] = [
    (100001, bad_signature, ccxt.AuthenticationError),
    (100413, unknown_key, ccxt.AuthenticationError),
    (100421, stale_timestamp, ccxt.BadSymbol),  # ccxt's mis-map, kept as §8 says
    (101204, insufficient_margin, ccxt.InsufficientFunds),
    (80016, unknown_order, ccxt.OrderNotFound),
    (80017, unknown_position, ccxt.OrderNotFound),
    (109414, cancel_unknown_order, ccxt.ExchangeError),
    (80018, cancel_filled_order, ccxt.ExchangeError),
    (101481, repeated_client_id, ccxt.DuplicateOrderId),
    (101400, below_minimum, ccxt.InvalidOrder),
    (101205, nothing_to_close, ccxt.InvalidOrder),
    (109400, hedge_side_in_one_way_mode, ccxt.BadRequest),
    (80014, invalid_parameter, ccxt.BadRequest),
    (109425, unknown_symbol, ccxt.BadSymbol),
    (109500, leverage_of_unknown_symbol, ccxt.OperationFailed),
    (100410, rate_limited, ccxt.OperationFailed),  # even with HTTP 429, the JSON body wins
    (101290, reduce_only_would_open, ccxt.ExchangeError),
    (101215, post_only_would_take, ccxt.ExchangeError),
    (110406, duplicate_position_stop_loss, ccxt.ExchangeError),
    (110407, duplicate_position_take_profit, ccxt.ExchangeError),
    (110411, stop_loss_on_the_wrong_side, ccxt.ExchangeError),
    (110412, take_profit_on_the_wrong_side, ccxt.ExchangeError),
    (110413, trigger_at_the_price, ccxt.ExchangeError),
]


@pytest.mark.parametrize(("code", "scenario", "error"), PRODUCED, ids=[f"{c}-{s.__name__}" for c, s, _ in PRODUCED])
async def test_an_error_the_simulator_produces_raises_the_ccxt_class_of_the_reference(
        venue: Venue, code: int, scenario: Scenario, error: type[Exception]) -> None:
    with pytest.raises(ccxt.BaseError) as raised:
        await scenario(venue)
    assert type(raised.value) is error, raised.value
    assert f'"code": {code},' in str(raised.value) or f'"code":{code},' in str(raised.value), raised.value


# Codes only a fault produces: (code, msg BingX sends, the exact ccxt class of §8).
FAULT_ONLY: list[tuple[int, str, type[Exception]]] = [
    (100412, "Null signature", ccxt.AuthenticationError),
    (100419, "IP does not match IP whitelist", ccxt.PermissionDenied),
    (100004, "Permission denied as the API key was created without the permission", ccxt.PermissionDenied),
    (100414, "risk control check fail", ccxt.AccountSuspended),
    (80012, "The current system is busy, please try again later", ccxt.InsufficientFunds),
    (80001, "margin is not enough", ccxt.BadRequest),
    (109421, "order not exist", ccxt.OrderNotFound),
    (109201, "The same order number is only allowed to be submitted once within 1 second.", ccxt.DuplicateOrderId),
    (110425, "The order's minimum nominal value must be greater than 2u", ccxt.InvalidOrder),
    (100400, "Invalid parameters", ccxt.BadRequest),
    (100204, "Invalid parameters", ccxt.BadRequest),
    (109418, "BTC-USDT is offline", ccxt.BadSymbol),
    (100490, "BTC-USDT is restricted", ccxt.BadSymbol),
    (100500, "The current system is busy, please try again later", ccxt.OperationFailed),
    (110500, "The current system is busy, please try again later", ccxt.OperationFailed),
    (80020, "risk forbidden", ccxt.ExchangeError),
    (101209, "The maximum position value for this leverage is exceeded", ccxt.ExchangeError),
    (101211, "The order price is out of the allowed range", ccxt.ExchangeError),
]


@pytest.mark.parametrize(("code", "msg", "error"), FAULT_ONLY, ids=[str(c) for c, _, _ in FAULT_ONLY])
async def test_an_injected_error_code_raises_the_ccxt_class_of_the_reference(
        venue: Venue, code: int, msg: str, error: type[Exception]) -> None:
    await venue.admin("/_sim/faults", {"kind": "error", "code": code, "msg": msg, "path": BALANCE})
    with pytest.raises(ccxt.BaseError) as raised:
        await venue.exchange.fetch_balance()
    assert type(raised.value) is error, raised.value
    assert str(code) in str(raised.value)


# Non-JSON bodies fall back to the HTTP status (§8).
STATUSES: list[tuple[int, type[Exception]]] = [
    (429, ccxt.RateLimitExceeded), (418, ccxt.DDoSProtection), (403, ccxt.ExchangeNotAvailable),
    (400, ccxt.ExchangeNotAvailable), (500, ccxt.ExchangeNotAvailable), (502, ccxt.ExchangeNotAvailable),
    (503, ccxt.ExchangeNotAvailable), (504, ccxt.RequestTimeout), (401, ccxt.AuthenticationError),
]


@pytest.mark.parametrize(("status", "error"), STATUSES, ids=[str(s) for s, _ in STATUSES])
async def test_a_non_json_answer_raises_the_ccxt_class_of_its_http_status(
        venue: Venue, status: int, error: type[Exception]) -> None:
    await venue.admin("/_sim/faults", {"kind": "http", "status": status, "body": "<html>oops</html>",
                                       "path": BALANCE})
    with pytest.raises(ccxt.BaseError) as raised:
        await venue.exchange.fetch_balance()
    assert type(raised.value) is error, raised.value
