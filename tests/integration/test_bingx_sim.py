"""The BingX simulator driven by the real ccxt 4.5.90 client, in sandbox and live mode, over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import aiohttp
import ccxt.async_support as ccxt
import pytest

from tests.bingx_sim_support import connected_sim, make_ccxt, running_sim

BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"


@pytest.fixture(params=[True, False], ids=["sandbox", "live"])
async def venue(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, ccxt.bingx]]:
    async with connected_sim(sandbox=request.param) as connected:
        yield connected


@pytest.fixture
async def sim(venue: tuple[str, ccxt.bingx]) -> AsyncIterator[tuple[str, ccxt.bingx]]:
    """Every call in both of ccxt's URL modes: sandbox (VST demo URLs) and live (with the extra market requests)."""
    yield venue


async def admin(base_url: str, method: str, path: str, body: object = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, f"{base_url}{path}", json=body) as response:
            return response.status, await response.json()


def dec(value: float | None) -> Decimal:
    assert value is not None
    return Decimal(str(value))


async def test_markets_ticker_time_and_empty_account(venue: tuple[str, ccxt.bingx]) -> None:
    _, exchange = venue
    btc = exchange.market(BTC)
    assert (btc["id"], btc["type"], btc["settle"], btc["linear"], btc["active"]) == ("BTC-USDT", "swap", "USDT", True, True)
    assert btc["precision"] == {"amount": 0.0001, "price": 0.1}
    assert btc["limits"]["amount"]["min"] == 0.0001 and btc["limits"]["cost"]["min"] == 2
    assert {ETH, "SOL/USDT:USDT"} <= set(exchange.markets)
    ticker = await exchange.fetch_ticker(BTC)
    assert (ticker["symbol"], ticker["last"]) == (BTC, 60000)
    assert abs(await exchange.fetch_time() - exchange.milliseconds()) < 5000
    balance = await exchange.fetch_balance()
    assert balance["USDT"] == {"free": 10000, "used": 0, "total": 10000}
    assert (await exchange.fetch_position_mode())["hedged"] is False
    assert await exchange.fetch_positions() == []


async def test_long_round_trip_with_exact_accounting(venue: tuple[str, ccxt.bingx]) -> None:
    base_url, exchange = venue
    bought = await exchange.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "Sig-1"})
    assert (bought["status"], bought["filled"], bought["average"]) == ("closed", 0.01, 60000)
    assert bought["clientOrderId"] == "sig-1"  # BingX lower-cases client ids
    assert int(bought["id"]) > 2**53
    [position] = await exchange.fetch_positions([BTC])
    assert (position["symbol"], position["side"], position["contracts"], position["entryPrice"]) == (BTC, "long", 0.01, 60000)
    assert (position["marginMode"], position["leverage"], position["initialMargin"]) == ("cross", 5, 120)
    balance = await exchange.fetch_balance()
    assert (dec(balance["USDT"]["used"]), dec(balance["USDT"]["total"])) == (Decimal("120"), Decimal("9999.7"))

    status, _ = await admin(base_url, "POST", "/_sim/prices", {"BTC-USDT": "61000"})
    assert status == 200
    [position] = await exchange.fetch_positions([BTC])
    assert (position["unrealizedPnl"], position["markPrice"]) == (10, 61000)

    closed = await exchange.create_order(BTC, "market", "sell", 0.01, None, {"reduceOnly": True})
    assert (closed["status"], closed["reduceOnly"], closed["average"]) == ("closed", True, 61000)
    assert await exchange.fetch_positions([BTC]) == []
    balance = await exchange.fetch_balance()
    # 10000 - 0.3 (fee at 60000) - 0.305 (fee at 61000) + 10 (PnL) = 10009.395, to the last digit.
    assert dec(balance["USDT"]["total"]) == dec(balance["USDT"]["free"]) == Decimal("10009.395")
    _, state = await admin(base_url, "GET", "/_sim/state")
    assert state["balances"]["USDT"]["balance"] == "10009.395"
    assert (state["balances"]["USDT"]["fees"], state["balances"]["USDT"]["realisedPnl"]) == ("0.605", "10")
    assert [f["commission"] for f in state["fills"]] == ["-0.3", "-0.305"]
    fetched = await exchange.fetch_order(closed["id"], BTC)
    assert (fetched["status"], fetched["fee"]["cost"], fetched["timestamp"] is not None) == ("closed", 0.305, True)


async def test_sell_opens_a_short(sim: tuple[str, ccxt.bingx]) -> None:
    _, exchange = sim
    await exchange.create_order(ETH, "market", "sell", 0.5)
    [position] = await exchange.fetch_positions([ETH])
    assert (position["side"], position["contracts"], position["entryPrice"]) == ("short", 0.5, 3000)
    assert position["liquidationPrice"] is not None and position["liquidationPrice"] > 3000


async def test_duplicate_client_id_and_lookup_by_client_id(sim: tuple[str, ccxt.bingx]) -> None:
    _, exchange = sim
    placed = await exchange.create_order(BTC, "market", "buy", 0.001, None, {"clientOrderId": "tv-abc"})
    with pytest.raises(ccxt.DuplicateOrderId):
        await exchange.create_order(BTC, "market", "buy", 0.001, None, {"clientOrderId": "TV-ABC"})
    # After a crash the executor asks by client id before it ever sends again.
    response = await exchange.swapV2PrivateGetTradeOrder({"symbol": "BTC-USDT", "clientOrderId": "tv-abc"})
    found = exchange.parse_order(response["data"]["order"])
    assert (found["id"], found["status"], found["clientOrderId"], found["filled"]) == (placed["id"], "closed", "tv-abc", 0.001)
    assert response["data"]["order"]["orderId"] == int(placed["id"])  # a bare JSON number, kept exact
    with pytest.raises(ccxt.OrderNotFound):
        await exchange.swapV2PrivateGetTradeOrder({"symbol": "BTC-USDT", "clientOrderId": "never-sent"})
    with pytest.raises(ccxt.OrderNotFound):
        await exchange.fetch_order("1900000000000000000", BTC)


async def test_authentication_failures() -> None:
    async with running_sim(api_key="k", api_secret="s") as base_url:
        for key, secret in (("k", "wrong"), ("someone-else", "s")):
            exchange = make_ccxt(base_url, key, secret, sandbox=True)
            try:
                await exchange.fetch_ticker(BTC)  # public: no key needed
                with pytest.raises(ccxt.AuthenticationError):
                    await exchange.fetch_balance()
            finally:
                await exchange.close()
        exchange = make_ccxt(base_url, "k", "s", sandbox=False)
        try:
            with pytest.raises(ccxt.AuthenticationError):  # live load_markets signs its wallet request
                exchange.secret = "wrong"
                await exchange.load_markets()
        finally:
            await exchange.close()


async def test_stale_timestamp_surfaces_as_bad_symbol(sim: tuple[str, ccxt.bingx]) -> None:
    _, exchange = sim
    real_milliseconds = exchange.milliseconds
    exchange.milliseconds = lambda: real_milliseconds() - 10_000
    with pytest.raises(ccxt.BadSymbol, match="timestamp"):
        await exchange.fetch_balance()


async def test_order_refusals_map_to_ccxt_errors(sim: tuple[str, ccxt.bingx]) -> None:
    base_url, exchange = sim
    with pytest.raises(ccxt.InsufficientFunds):
        await exchange.create_order(BTC, "market", "buy", 1)  # 60000 notional needs 12000 at 5x
    with pytest.raises(ccxt.InvalidOrder):
        await exchange.create_order(BTC, "market", "sell", 0.01, None, {"reduceOnly": True})  # no position
    await admin(base_url, "POST", "/_sim/prices", {"BTC-USDT": "10000"})
    with pytest.raises(ccxt.InvalidOrder, match="minimum"):
        await exchange.create_order(BTC, "market", "buy", 0.0001)  # 1 USDT, under the 2 USDT minimum
    with pytest.raises(ccxt.BadRequest):
        await exchange.create_order(BTC, "market", "buy", 0.01, None, {"positionSide": "LONG"})  # one-way
    with pytest.raises(ccxt.BadSymbol):
        await exchange.swapV2PrivatePostTradeOrder({"symbol": "NOPE-USDT", "side": "BUY", "type": "MARKET",
                                                    "quantity": 1, "positionSide": "BOTH"})
    _, state = await admin(base_url, "GET", "/_sim/state")
    assert state["orders"] == [] and state["balances"]["USDT"]["balance"] == "10000"


async def test_hedge_mode(sim: tuple[str, ccxt.bingx]) -> None:
    _, exchange = sim
    await exchange.set_position_mode(True)
    assert (await exchange.fetch_position_mode())["hedged"] is True
    with pytest.raises(ccxt.BadRequest):
        await exchange.create_order(BTC, "market", "buy", 0.01)  # positionSide BOTH in hedge mode
    with pytest.raises(ccxt.BadRequest):
        await exchange.create_order(BTC, "market", "buy", 0.01, None, {"positionSide": "LONG", "reduceOnly": True})
    await exchange.set_leverage(10, BTC, {"side": "LONG"})
    await exchange.create_order(BTC, "market", "buy", 0.01, None, {"hedged": True})
    await exchange.create_order(BTC, "market", "sell", 0.02, None, {"hedged": True})
    positions = {p["side"]: p for p in await exchange.fetch_positions([BTC])}
    assert (positions["long"]["contracts"], positions["long"]["leverage"]) == (0.01, 10)
    assert (positions["short"]["contracts"], positions["short"]["leverage"]) == (0.02, 5)
    with pytest.raises(ccxt.BadRequest):
        await exchange.set_position_mode(False)  # positions are open
    await exchange.create_order(BTC, "market", "sell", 0.01, None, {"hedged": True, "reduceOnly": True})
    assert [p["side"] for p in await exchange.fetch_positions([BTC])] == ["short"]
    await exchange.close_position(BTC)
    assert await exchange.fetch_positions() == []
    await exchange.set_position_mode(False)


async def test_leverage_and_margin_mode(sim: tuple[str, ccxt.bingx]) -> None:
    _, exchange = sim
    await exchange.set_leverage(20, BTC, {"side": "BOTH"})
    leverage = await exchange.fetch_leverage(BTC)
    assert (leverage["longLeverage"], leverage["shortLeverage"]) == (20, 20)
    with pytest.raises(ccxt.BadRequest):
        await exchange.set_leverage(20, BTC, {"side": "LONG"})  # one-way mode wants BOTH
    with pytest.raises(ccxt.OperationFailed):
        await exchange.swapV2PrivatePostTradeLeverage({"symbol": "NOPE-USDT", "side": "BOTH", "leverage": 5})
    await exchange.set_margin_mode("isolated", BTC)
    assert (await exchange.fetch_margin_mode(BTC))["marginMode"] == "isolated"
    await exchange.create_order(BTC, "market", "buy", 0.01)
    [position] = await exchange.fetch_positions([BTC])
    assert (position["marginMode"], position["initialMargin"], position["collateral"]) == ("isolated", 30, 30)
    with pytest.raises(ccxt.BadRequest):
        await exchange.set_margin_mode("cross", BTC)  # a position is open


async def test_limit_orders_rest_and_cancel(sim: tuple[str, ccxt.bingx]) -> None:
    _, exchange = sim
    resting = await exchange.create_order(BTC, "limit", "buy", 0.01, 50000, {"clientOrderId": "lim-1"})
    assert resting["status"] == "open"
    [listed] = await exchange.fetch_open_orders(BTC)
    assert (listed["id"], listed["price"], listed["amount"], listed["filled"]) == (resting["id"], 50000, 0.01, 0)
    assert (await exchange.fetch_balance())["USDT"]["used"] == 0  # frozen margin is not position margin
    cancelled = await exchange.cancel_order("", BTC, {"clientOrderId": "lim-1"})
    assert cancelled["status"] == "canceled"
    with pytest.raises(ccxt.ExchangeError) as caught:
        await exchange.cancel_order(resting["id"], BTC)  # 80018: already cancelled
    assert not isinstance(caught.value, ccxt.OrderNotFound)
    with pytest.raises(ccxt.ExchangeError):
        await exchange.cancel_order("1900000000000000000", BTC)  # 109414
    second = await exchange.create_order(BTC, "limit", "sell", 0.01, 70000)
    assert [o["id"] for o in await exchange.cancel_all_orders(BTC)] == [second["id"]]
    assert await exchange.fetch_open_orders(BTC) == []
    assert {o["status"] for o in await exchange.fetch_canceled_orders(BTC)} == {"canceled"}


async def test_attached_stop_loss_is_an_open_order_until_the_position_closes(sim: tuple[str, ccxt.bingx]) -> None:
    _, exchange = sim
    await exchange.create_order(BTC, "market", "buy", 0.01, None,
                                {"stopLoss": {"triggerPrice": 55000.05}, "takeProfit": {"triggerPrice": 70000}})
    stops = {o["info"]["type"]: o for o in await exchange.fetch_open_orders(BTC)}
    assert set(stops) == {"STOP_MARKET", "TAKE_PROFIT_MARKET"}
    assert (stops["STOP_MARKET"]["stopLossPrice"], stops["STOP_MARKET"]["side"]) == (55000.1, "sell")
    assert (stops["TAKE_PROFIT_MARKET"]["takeProfitPrice"], stops["TAKE_PROFIT_MARKET"]["amount"]) == (70000, 0.01)
    await exchange.close_all_positions()
    assert await exchange.fetch_open_orders(BTC) == []
    assert {o["status"] for o in await exchange.fetch_closed_orders(BTC)} == {"closed"}


async def test_my_trades(sim: tuple[str, ccxt.bingx]) -> None:
    _, exchange = sim
    placed = await exchange.create_order(BTC, "market", "buy", 0.002)
    [trade] = await exchange.fetch_my_trades(BTC)
    assert (trade["order"], trade["amount"], trade["price"], trade["fee"]["cost"]) == (placed["id"], 0.002, 60000, 0.06)


async def test_admin_api_and_health() -> None:
    async with running_sim(balance="500", prices={"DOGE-USDT": "0.1"}) as base_url:
        assert await admin(base_url, "GET", "/healthz") == (200, {"status": "ok"})
        status, state = await admin(base_url, "GET", "/_sim/state")
        assert state["prices"]["DOGE-USDT"] == "0.100000" and state["balances"]["USDT"]["availableMargin"] == "500"
        assert (await admin(base_url, "POST", "/_sim/prices", {"BTC-USDT": "abc"}))[0] == 400
        assert (await admin(base_url, "POST", "/_sim/prices", {"btc": "1"}))[0] == 400
        exchange = make_ccxt(base_url, "k", "s", sandbox=True)
        try:
            await exchange.create_order("DOGE/USDT:USDT", "market", "buy", 100)
            status, state = await admin(base_url, "POST", "/_sim/reset")
            assert status == 200 and state["positions"] == [] and state["orders"] == []
            assert state["balances"]["USDT"]["balance"] == "500"
            assert await exchange.fetch_positions() == []
        finally:
            await exchange.close()
        status, body = await admin(base_url, "GET", "/openApi/swap/v9/nothing")
        assert status == 404 and body["code"] == 100400


async def test_reference_vector_over_http() -> None:
    """§3's balance request, byte for byte, against a simulator whose clock stands at the vector's timestamp."""
    async with running_sim(api_key="testkey", api_secret="testsecret", clock=lambda: 1_700_000_000.0) as base_url:
        url = (f"{base_url}/openApi/swap/v3/user/balance?timestamp=1700000000000"
               "&signature=dd273985d88b32eaeeb19cafcc2dbaa9ac658e274cd4095d474395560c4b09b7")
        async with aiohttp.ClientSession() as session:
            async with session.get(url, headers={"X-BX-APIKEY": "testkey"}) as response:
                body = await response.json()
            async with session.get(url.replace("dd27", "ee27"), headers={"X-BX-APIKEY": "testkey"}) as response:
                refused = await response.json()
    assert (body["code"], body["data"][0]["asset"], body["timestamp"]) == (0, "USDT", 1700000000000)
    assert (refused["code"], refused["msg"]) == (100001, "Signature verification failed due to signature mismatch")


async def test_fetch_position_of_one_symbol(sim: tuple[str, ccxt.bingx]) -> None:
    _, exchange = sim
    await exchange.create_order(BTC, "market", "buy", 0.01)
    position = await exchange.fetch_position(BTC)
    assert position["symbol"] == BTC and position["side"] == "long" and position["contracts"] == 0.01
    assert position["entryPrice"] == 60000
