"""What a price move triggers in the simulator: resting limits, stop-loss/take-profit, trigger orders, liquidation."""

from __future__ import annotations

from decimal import Decimal as D

from services.bingx_sim.engine import Engine, OrderRequest

NOW = 1_700_000_000_000
BTC = "BTC-USDT"


def engine(balance: str = "10000") -> Engine:
    return Engine(D(balance), {}, now=NOW)


def order(side: str = "BUY", qty: str = "0.01", type: str = "MARKET", **extra: object) -> OrderRequest:
    return OrderRequest(symbol=BTC, side=side, type=type, quantity=D(qty), **extra)  # type: ignore[arg-type]


def move(sim: Engine, price: str) -> None:
    sim.set_prices({BTC: D(price)}, NOW + 1)


def test_a_resting_buy_limit_fills_at_its_price_as_a_maker_when_the_mark_reaches_it() -> None:
    sim = engine()
    resting = sim.place_order(order(type="LIMIT", price=D("59000")), NOW)
    move(sim, "59500")
    assert resting.status == "NEW" and sim.positions() == []
    move(sim, "58800")  # a gap past the limit: still filled at the limit price
    assert (resting.status, resting.executed_qty, resting.avg_price) == ("FILLED", D("0.01"), D("59000"))
    assert resting.commission == D("-0.118") == -D("0.01") * D("59000") * D("0.0002")
    [view] = sim.positions()
    assert (view.position.entry_price, view.unrealised) == (D("59000"), D("-2"))
    account = sim.account()
    assert (account.frozen_margin, account.used_margin, account.balance) == (0, D("118"), D("9999.882"))


def test_a_resting_sell_limit_takes_profit_on_a_long_and_a_reduce_only_one_is_cancelled_without_a_position() -> None:
    sim = engine()
    sim.place_order(order(), NOW)
    take = sim.place_order(order(side="SELL", type="LIMIT", price=D("62000"), reduce_only=True), NOW)
    assert take.frozen_margin == 0
    move(sim, "62000")
    assert (take.status, take.profit, take.commission) == ("FILLED", D("20"), D("-0.124"))
    assert sim.positions() == []
    sim.place_order(order(), NOW)
    closer = sim.place_order(order(side="SELL", type="LIMIT", price=D("63000"), reduce_only=True), NOW)
    sim.place_order(order(side="SELL", reduce_only=True), NOW)
    move(sim, "63000")  # the long was closed by hand, so the reduce-only order has nothing to reduce
    assert closer.status == "CANCELLED" and sim.positions() == []


def test_an_attached_stop_loss_fires_at_the_mark_and_takes_the_take_profit_with_it() -> None:
    sim = engine()
    sim.place_order(order(stop_loss='{"stopPrice":55000}', take_profit='{"stopPrice":70000}'), NOW)
    stop, take = sim.open_orders(BTC)
    move(sim, "55000.1")
    assert stop.status == "NEW"
    move(sim, "54000")
    assert (stop.status, stop.executed_qty, stop.avg_price, stop.profit) == ("FILLED", D("0.01"), D("54000"), D("-60"))
    assert stop.commission == D("-0.27")  # a fired stop is a market order: taker fee
    assert take.status == "CANCELLED" and sim.positions() == [] and sim.open_orders() == []
    assert sim.account().balance == D("10000") - D("0.3") - D("60") - D("0.27")


def test_an_attached_take_profit_fires_on_a_short_when_the_mark_falls() -> None:
    sim = engine()
    sim.place_order(order(side="SELL", take_profit='{"stopPrice":58000}', stop_loss='{"stopPrice":63000}'), NOW)
    move(sim, "57000")
    assert sim.positions() == [] and sim.open_orders() == []
    [fired] = [o for o in sim.all_orders() if o.type == "TAKE_PROFIT_MARKET"]
    assert (fired.status, fired.side, fired.profit) == ("FILLED", "BUY", D("30"))


def test_a_standalone_stop_market_only_ever_closes() -> None:
    sim = engine()
    sim.place_order(order(qty="0.01"), NOW)
    stop = sim.place_order(order(side="SELL", type="STOP_MARKET", qty="0.05", stop_price=D("58000")), NOW)
    move(sim, "57000")
    assert (stop.status, stop.executed_qty) == ("FILLED", D("0.01"))  # never flips into a short
    assert sim.positions() == []
    orphan = sim.place_order(order(side="SELL", type="STOP_MARKET", stop_price=D("56000")), NOW)
    move(sim, "55000")
    assert orphan.status == "CANCELLED" and sim.positions() == []


def test_in_hedge_mode_a_short_s_stop_fires_on_a_rise_and_leaves_the_long_alone() -> None:
    sim = engine()
    sim.set_position_mode(True)
    sim.place_order(order(position_side="LONG", stop_loss='{"stopPrice":50000}'), NOW)
    sim.place_order(order(side="SELL", position_side="SHORT", stop_loss='{"stopPrice":61000}'), NOW)
    move(sim, "61500")
    [view] = sim.positions()
    assert view.position.side == "LONG"
    [left] = sim.open_orders()
    assert (left.side, left.position_side, left.stop_price) == ("SELL", "LONG", D("50000"))


def test_trigger_orders_fire_in_the_direction_they_were_placed_from() -> None:
    sim = engine()
    breakout = sim.place_order(order(type="TRIGGER_MARKET", stop_price=D("62000")), NOW)
    dip = sim.place_order(order(type="TRIGGER_LIMIT", stop_price=D("59000"), price=D("58000")), NOW)
    move(sim, "61000")
    assert breakout.is_open and dip.is_open
    move(sim, "62500")
    assert (breakout.status, breakout.avg_price) == ("FILLED", D("62500"))
    move(sim, "58900")  # the stop fires; the limit at 58000 is not reached yet, so it rests
    assert dip.is_open and dip.triggered
    move(sim, "57000")
    assert (dip.status, dip.avg_price) == ("FILLED", D("58000"))
    [view] = sim.positions()
    assert view.position.qty == D("0.02")


def test_isolated_liquidation_loses_exactly_the_margin_and_is_recorded() -> None:
    sim = engine()
    sim.set_margin_type(BTC, "ISOLATED")
    sim.place_order(order(qty="0.1", take_profit='{"stopPrice":70000}'), NOW)
    [view] = sim.positions()
    assert view.liquidation_price == D("48192.8")
    move(sim, "48192.9")
    assert len(sim.positions()) == 1
    move(sim, "40000")  # far past the bankruptcy price: the loss is still only the margin
    assert sim.positions() == [] and sim.open_orders() == []
    [liquidation] = sim.liquidations
    assert (liquidation.lost, liquidation.mark_price, liquidation.qty, liquidation.isolated) == (
        D("1200"), D("40000"), D("0.1"), True)
    forced = sim.find_order(None, liquidation.order_id, None)
    assert forced is not None and (forced.status, forced.liquidation, forced.profit) == ("FILLED", True, D("-1200"))
    assert sim.fills[-1].liquidation and sim.fills[-1].realised_pnl == D("-1200")
    assert sim.account().balance == D("10000") - D("3") - D("1200")


def test_cross_liquidation_takes_the_free_balance_too() -> None:
    sim = engine("1000")
    sim.set_leverage(BTC, "BOTH", 20)
    sim.place_order(order(qty="0.1"), NOW)  # margin 300, fee 3
    [view] = sim.positions()
    move(sim, str(view.liquidation_price))
    assert sim.positions() == []
    assert sim.liquidations[0].lost == D("997")
    assert (sim.account().balance, sim.account().available) == (0, 0)


def test_the_level_nearest_the_old_mark_fires_first() -> None:
    sim = engine()
    sim.set_margin_type(BTC, "ISOLATED")
    sim.place_order(order(qty="0.1", stop_loss='{"stopPrice":45000}'), NOW)  # below the liquidation price
    move(sim, "40000")
    assert len(sim.liquidations) == 1
    assert [o.status for o in sim.all_orders() if o.type == "STOP_MARKET"] == ["CANCELLED"]

    sim.reset(NOW)
    sim.set_margin_type(BTC, "ISOLATED")
    sim.place_order(order(qty="0.1", stop_loss='{"stopPrice":50000}'), NOW)  # above it: the stop saves the rest
    move(sim, "49000")
    assert sim.liquidations == [] and sim.positions() == []
    assert sim.account().balance == D("10000") - D("3") - D("1100") - D("2.45")


def test_a_fired_trigger_order_without_the_margin_fails() -> None:
    sim = engine("100")
    breakout = sim.place_order(order(type="TRIGGER_MARKET", qty="0.1", stop_price=D("61000")), NOW)
    move(sim, "61000")  # 6100 notional needs 1220 margin at 5x
    assert breakout.status == "FAILED" and sim.positions() == [] and sim.account().balance == D("100")
