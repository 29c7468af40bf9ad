"""Price moves set through /_sim/prices trigger fills, stops and liquidations that real ccxt then sees."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import ccxt.async_support as ccxt
import pytest

from tests.bingx_sim_support import connected_sim

BTC = "BTC/USDT:USDT"


@pytest.fixture(params=[True, False], ids=["sandbox", "live"])
async def sim(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, ccxt.bingx]]:
    async with connected_sim(sandbox=request.param) as connected:
        yield connected


async def move(base_url: str, price: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base_url}/_sim/prices", json={"BTC-USDT": price}) as response:
            assert response.status == 200


async def state(base_url: str) -> dict:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base_url}/_sim/state") as response:
            return await response.json()


async def test_a_resting_limit_fills_as_a_maker_when_the_price_crosses(sim: tuple[str, ccxt.bingx]) -> None:
    base_url, exchange = sim
    placed = await exchange.create_order(BTC, "limit", "buy", 0.01, 59000)
    await move(base_url, "58500")
    filled = await exchange.fetch_order(placed["id"], BTC)
    assert (filled["status"], filled["filled"], filled["average"]) == ("closed", 0.01, 59000)
    assert filled["fee"]["cost"] == 0.118  # the maker fee, 0.0002
    [position] = await exchange.fetch_positions([BTC])
    assert (position["side"], position["contracts"], position["entryPrice"]) == ("long", 0.01, 59000)
    assert await exchange.fetch_open_orders(BTC) == []


async def test_an_attached_stop_loss_closes_the_position(sim: tuple[str, ccxt.bingx]) -> None:
    base_url, exchange = sim
    await exchange.create_order(BTC, "market", "buy", 0.01, None,
                                {"stopLoss": {"triggerPrice": 55000}, "takeProfit": {"triggerPrice": 70000}})
    await move(base_url, "54000")
    assert await exchange.fetch_positions([BTC]) == []
    assert await exchange.fetch_open_orders(BTC) == []
    fired = [o for o in await exchange.fetch_closed_orders(BTC) if o["info"]["type"] == "STOP_MARKET"]
    assert [(o["side"], o["filled"], o["average"], o["reduceOnly"]) for o in fired] == [("sell", 0.01, 54000, True)]
    assert {o["status"] for o in await exchange.fetch_canceled_orders(BTC)} == {"canceled"}  # the take-profit


async def test_liquidation_closes_the_position_and_is_in_the_state(sim: tuple[str, ccxt.bingx]) -> None:
    base_url, exchange = sim
    await exchange.set_margin_mode("isolated", BTC)
    await exchange.create_order(BTC, "market", "buy", 0.1)
    [position] = await exchange.fetch_positions([BTC])
    assert position["liquidationPrice"] == 48192.8
    await move(base_url, "48000")
    assert await exchange.fetch_positions([BTC]) == []
    balance = await exchange.fetch_balance()
    assert balance["USDT"]["total"] == 10000 - 3 - 1200
    trades = await exchange.fetch_my_trades(BTC)
    assert trades[-1]["info"]["liquidatedPrice"] == "48000.0"
    [liquidation] = (await state(base_url))["liquidations"]
    assert (liquidation["lost"], liquidation["positionSide"], liquidation["markPrice"]) == ("1200", "LONG", "48000.0")
