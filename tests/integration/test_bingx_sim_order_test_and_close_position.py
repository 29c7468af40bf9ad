"""POST trade/order/test (checks as a real order, places nothing) and POST v1/trade/closePosition, via real ccxt."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import ccxt.async_support as ccxt
import pytest

from tests.bingx_sim_support import connected_sim

BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"


@pytest.fixture(params=[True, False], ids=["sandbox", "live"])
async def sim(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, ccxt.bingx]]:
    async with connected_sim(sandbox=request.param) as connected:
        yield connected


async def state(base_url: str) -> dict:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base_url}/_sim/state") as response:
            return await response.json()


async def test_a_test_order_answers_like_a_real_one_and_places_nothing(sim: tuple[str, ccxt.bingx]) -> None:
    base_url, exchange = sim
    before = await state(base_url)
    tested = await exchange.create_order(BTC, "market", "buy", 0.01, None,
                                         {"test": True, "clientOrderId": "Try-1", "stopLoss": {"triggerPrice": 55000}})
    assert (tested["symbol"], tested["side"], tested["type"], tested["amount"]) == (BTC, "buy", "market", 0.01)
    assert tested["id"] and tested["clientOrderId"] == "try-1" and tested["stopLossPrice"] == 55000
    limit = await exchange.create_order(BTC, "limit", "sell", 0.01, 65000, {"test": True})
    assert (limit["price"], limit["status"]) == (65000, "open")
    after = await state(base_url)
    assert {k: after[k] for k in ("balances", "positions", "orders", "fills")} == \
        {k: before[k] for k in ("balances", "positions", "orders", "fills")}
    with pytest.raises(ccxt.OrderNotFound):
        await exchange.fetch_order(tested["id"], BTC)
    # The client id was not taken: a real order may use it, and gets an id no test answer showed.
    real = await exchange.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "Try-1"})
    assert real["id"] not in (tested["id"], limit["id"])


@pytest.mark.parametrize(("params", "error"), [
    ({"positionSide": "LONG"}, ccxt.BadRequest),  # one-way mode: 109400
    ({"stopLoss": {"triggerPrice": 61000}}, ccxt.ExchangeError),  # 110411
    ({"reduceOnly": True}, ccxt.InvalidOrder),  # 101205, no position to close
])
async def test_a_test_order_is_refused_exactly_as_a_real_one(sim: tuple[str, ccxt.bingx], params: dict,
                                                             error: type[Exception]) -> None:
    _, exchange = sim
    for test in (True, False):
        with pytest.raises(error) as raised:
            await exchange.create_order(BTC, "market", "buy", 0.01, None, {**params, "test": test})
        assert type(raised.value) is error


async def test_a_test_order_checks_margin_and_minimums(sim: tuple[str, ccxt.bingx]) -> None:
    _, exchange = sim
    with pytest.raises(ccxt.InsufficientFunds):
        await exchange.create_order(BTC, "market", "buy", 5, None, {"test": True})
    with pytest.raises(ccxt.InvalidOrder, match="101400"):  # 0.01 SOL at 150 is below the 2 USDT minimum
        await exchange.create_order("SOL/USDT:USDT", "market", "buy", 0.01, None, {"test": True})


async def test_close_position_by_id_closes_that_position_only(sim: tuple[str, ccxt.bingx]) -> None:
    base_url, exchange = sim
    await exchange.create_order(BTC, "market", "buy", 0.01)
    await exchange.create_order(ETH, "market", "sell", 0.5)
    [btc] = await exchange.fetch_positions([BTC])
    closed = await exchange.close_position(BTC, None, {"positionId": btc["id"]})
    assert closed["id"] is not None
    assert (closed["side"], closed["type"], closed["amount"]) == ("sell", "market", 0.01)
    assert closed["info"]["positionId"] == btc["id"] and closed["info"]["positionSide"] == "BOTH"
    assert closed["info"]["side"] == "Ask"
    assert await exchange.fetch_positions([BTC]) == []
    assert [p["side"] for p in await exchange.fetch_positions([ETH])] == ["short"]
    order = await exchange.fetch_order(closed["id"], BTC)
    assert (order["status"], order["filled"], order["side"]) == ("closed", 0.01, "sell")
    [eth] = await exchange.fetch_positions([ETH])
    bought = await exchange.close_position(ETH, None, {"positionId": eth["id"]})
    assert (bought["side"], bought["info"]["side"], bought["amount"]) == ("buy", "Bid", 0.5)
    assert (await state(base_url))["positions"] == []


async def test_close_position_in_hedge_mode_and_of_an_unknown_id(sim: tuple[str, ccxt.bingx]) -> None:
    _, exchange = sim
    with pytest.raises(ccxt.OrderNotFound):  # 80017 "position not exist"
        await exchange.close_position(BTC, None, {"positionId": "1234"})
    await exchange.set_position_mode(True)
    await exchange.create_order(BTC, "market", "buy", 0.02, None, {"positionSide": "LONG"})
    await exchange.create_order(BTC, "market", "sell", 0.01, None, {"positionSide": "SHORT"})
    short = next(p for p in await exchange.fetch_positions([BTC]) if p["side"] == "short")
    closed = await exchange.close_position(BTC, None, {"positionId": short["id"]})
    assert (closed["info"]["positionSide"], closed["side"], closed["amount"]) == ("SHORT", "buy", 0.01)
    assert [(p["side"], p["contracts"]) for p in await exchange.fetch_positions([BTC])] == [("long", 0.02)]
