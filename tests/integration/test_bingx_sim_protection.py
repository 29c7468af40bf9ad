"""BingX's checks on stop-loss and take-profit, through real ccxt: wrong-side triggers and duplicate position TP/SL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import ccxt.async_support as ccxt
import pytest

from tests.bingx_sim_support import connected_sim

BTC = "BTC/USDT:USDT"


@pytest.fixture(params=[True, False], ids=["sandbox", "live"])
async def exchange(request: pytest.FixtureRequest) -> AsyncIterator[ccxt.bingx]:
    async with connected_sim(sandbox=request.param) as (_, client):
        yield client


async def refused(call: Any, code: int) -> str:
    """The message of a BingX refusal with `code`, which ccxt must raise as a plain ExchangeError (§8)."""
    with pytest.raises(ccxt.ExchangeError) as raised:
        await call
    assert type(raised.value) is ccxt.ExchangeError
    assert f'"code": {code},' in str(raised.value)
    return str(raised.value)


@pytest.mark.parametrize(("side", "params", "code", "words"), [
    ("buy", {"stopLoss": {"triggerPrice": 61000}}, 110411, "stop loss trigger price of a long position must be lower"),
    ("buy", {"takeProfit": {"triggerPrice": 59000}}, 110412, "take profit trigger price of a long position must be "
                                                             "higher"),
    ("sell", {"stopLoss": {"triggerPrice": 59000}}, 110411, "stop loss trigger price of a short position must be "
                                                            "higher"),
    ("sell", {"takeProfit": {"triggerPrice": 61000}}, 110412, "take profit trigger price of a short position must be "
                                                              "lower"),
    ("buy", {"stopLoss": {"triggerPrice": 60000}}, 110413, "cannot be equal"),
])
async def test_an_attached_trigger_on_the_wrong_side_is_refused_and_nothing_is_placed(
        exchange: ccxt.bingx, side: str, params: dict[str, Any], code: int, words: str) -> None:
    message = await refused(exchange.create_order(BTC, "market", side, 0.01, None, params), code)
    assert words in message
    assert await exchange.fetch_positions([BTC]) == []
    assert await exchange.fetch_open_orders(BTC) == []
    assert (await exchange.fetch_balance())["USDT"]["free"] == 10000


async def test_a_limit_orders_attached_stop_is_measured_from_the_limit_price(exchange: ccxt.bingx) -> None:
    # Below the mark but above the limit price: the long it would open at 59000 would be stopped at once.
    await refused(exchange.create_order(BTC, "limit", "buy", 0.01, 59000, {"stopLoss": {"triggerPrice": 59500}}),
                  110411)
    placed = await exchange.create_order(BTC, "limit", "buy", 0.01, 59000, {"stopLoss": {"triggerPrice": 58000}})
    assert placed["id"]


async def test_a_standalone_stop_or_take_profit_on_the_wrong_side_of_the_mark_is_refused(exchange: ccxt.bingx) -> None:
    await exchange.create_order(BTC, "market", "buy", 0.01)
    await refused(exchange.create_order(BTC, "market", "sell", 0.01, None,
                                        {"stopLossPrice": 61000, "reduceOnly": True}), 110411)
    await refused(exchange.create_order(BTC, "market", "sell", 0.01, None,
                                        {"takeProfitPrice": 59000, "reduceOnly": True}), 110412)
    await refused(exchange.create_order(BTC, "limit", "sell", 0.01, 61000,
                                        {"stopLossPrice": 61000, "reduceOnly": True}), 110411)
    assert await exchange.fetch_open_orders(BTC) == []
    await exchange.create_order(BTC, "market", "sell", 0.01, None, {"stopLossPrice": 55000, "reduceOnly": True})
    await exchange.create_order(BTC, "market", "sell", 0.01, None, {"takeProfitPrice": 65000, "reduceOnly": True})
    assert len(await exchange.fetch_open_orders(BTC)) == 2


async def test_a_position_has_one_stop_loss_and_one_take_profit(exchange: ccxt.bingx) -> None:
    await exchange.create_order(BTC, "market", "buy", 0.01)
    stop = await exchange.create_order(BTC, "market", "sell", 0.01, None, {"stopLossPrice": 55000,
                                                                          "closePosition": True})
    take = await exchange.create_order(BTC, "market", "sell", 0.01, None, {"takeProfitPrice": 65000,
                                                                          "closePosition": True})
    assert "stop loss" in await refused(exchange.create_order(
        BTC, "market", "sell", 0.01, None, {"stopLossPrice": 54000, "closePosition": True}), 110406)
    assert "take profit" in await refused(exchange.create_order(
        BTC, "market", "sell", 0.01, None, {"takeProfitPrice": 66000, "closePosition": True}), 110407)
    # Partial stop orders (a quantity, not the whole position) are not the position's TP/SL.
    await exchange.create_order(BTC, "market", "sell", 0.005, None, {"stopLossPrice": 54000, "reduceOnly": True})
    # Once the position's stop-loss is gone, another may be placed.
    await exchange.cancel_order(stop["id"], BTC)
    await exchange.create_order(BTC, "market", "sell", 0.01, None, {"stopLossPrice": 54000, "closePosition": True})
    assert take["id"] in {o["id"] for o in await exchange.fetch_open_orders(BTC)}


async def test_in_hedge_mode_the_long_and_the_short_each_have_their_own_stop_loss(exchange: ccxt.bingx) -> None:
    await exchange.set_position_mode(True)
    await exchange.create_order(BTC, "market", "buy", 0.01, None, {"positionSide": "LONG"})
    await exchange.create_order(BTC, "market", "sell", 0.01, None, {"positionSide": "SHORT"})
    await exchange.create_order(BTC, "market", "sell", 0.01, None,
                                {"positionSide": "LONG", "stopLossPrice": 55000, "closePosition": True})
    await exchange.create_order(BTC, "market", "buy", 0.01, None,
                                {"positionSide": "SHORT", "stopLossPrice": 65000, "closePosition": True})
    await refused(exchange.create_order(BTC, "market", "buy", 0.01, None,
                                        {"positionSide": "SHORT", "stopLossPrice": 66000, "closePosition": True}),
                  110406)
    await refused(exchange.create_order(BTC, "market", "buy", 0.01, None,
                                        {"positionSide": "SHORT", "stopLossPrice": 59000}), 110411)
