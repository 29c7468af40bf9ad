"""The simulator's trading rules and accounting, driven directly (no HTTP), with exact Decimal arithmetic."""

from __future__ import annotations

import json
from decimal import Decimal as D

import pytest

from services.bingx_sim.engine import BingxError, Engine, OrderRequest
from services.bingx_sim.settings import parse_prices

NOW = 1_700_000_000_000


def engine(balance: str = "10000", **prices: str) -> Engine:
    return Engine(D(balance), {s.replace("_", "-"): D(p) for s, p in prices.items()}, now=NOW)


def order(symbol: str = "BTC-USDT", side: str = "BUY", qty: str | None = "0.01", type: str = "MARKET",
          **extra: object) -> OrderRequest:
    return OrderRequest(symbol=symbol, side=side, type=type, quantity=D(qty) if qty is not None else None,
                        **extra)  # type: ignore[arg-type]


def code_of(call) -> int:
    with pytest.raises(BingxError) as caught:
        call()
    return caught.value.code


def test_market_buy_opens_a_long_at_the_mark_and_pays_the_taker_fee() -> None:
    sim = engine()
    filled = sim.place_order(order(), NOW)
    assert (filled.status, filled.executed_qty, filled.avg_price) == ("FILLED", D("0.01"), D("60000"))
    assert filled.commission == D("-0.3") and filled.order_id > 2**53 and len(str(filled.order_id)) == 19
    [view] = sim.positions()
    assert (view.position.side, view.position.qty, view.position.entry_price) == ("LONG", D("0.01"), D("60000"))
    assert view.margin == D("120") and view.leverage == 5  # 600 USDT notional at the default 5x
    account = sim.account()
    assert account.balance == D("9999.7")
    assert account.used_margin == D("120")
    assert account.available == D("9879.7")


def test_round_trip_accounting_is_exact() -> None:
    sim = engine()
    sim.place_order(order(), NOW)
    sim.set_prices({"BTC-USDT": D("61000")}, NOW)
    account = sim.account()
    assert (account.unrealised, account.equity) == (D("10"), D("10009.7"))
    assert account.available == D("10009.7") - D("120")
    close = sim.place_order(order(side="SELL", reduce_only=True), NOW)
    assert (close.profit, close.commission) == (D("10"), D("-0.305"))
    account = sim.account()
    assert sim.positions() == []
    assert account.balance == D("10000") - D("0.3") - D("0.305") + D("10") == D("10009.395")
    assert (account.equity, account.used_margin, account.available) == (D("10009.395"), 0, D("10009.395"))
    assert [f.realised_pnl for f in sim.fills] == [D("0"), D("10")]


def test_short_profits_when_the_price_falls() -> None:
    sim = engine()
    sim.place_order(order("ETH-USDT", "SELL", "1"), NOW)
    sim.set_prices({"ETH-USDT": D("2900")}, NOW)
    [view] = sim.positions()
    assert (view.position.side, view.unrealised) == ("SHORT", D("100"))


def test_one_way_order_larger_than_the_position_flips_it() -> None:
    sim = engine()
    sim.place_order(order(qty="0.01"), NOW)
    flip = sim.place_order(order(side="SELL", qty="0.03"), NOW)
    assert flip.executed_qty == D("0.03")
    [view] = sim.positions()
    assert (view.position.side, view.position.qty) == ("SHORT", D("0.02"))


def test_adding_to_a_position_averages_the_entry() -> None:
    sim = engine()
    sim.place_order(order(qty="0.01"), NOW)
    sim.set_prices({"BTC-USDT": D("63000")}, NOW)
    sim.place_order(order(qty="0.02"), NOW)
    [view] = sim.positions()
    assert (view.position.qty, view.position.entry_price) == (D("0.03"), D("62000"))


def test_reduce_only_never_opens() -> None:
    sim = engine()
    assert code_of(lambda: sim.place_order(order(side="SELL", reduce_only=True), NOW)) == 101205
    sim.place_order(order(), NOW)
    assert code_of(lambda: sim.place_order(order(side="BUY", reduce_only=True), NOW)) == 101290
    # More than the position closes the position and stops there.
    close = sim.place_order(order(side="SELL", qty="0.05", reduce_only=True), NOW)
    assert close.executed_qty == D("0.01") and sim.positions() == []


def test_close_position_flag_closes_the_whole_position() -> None:
    sim = engine()
    sim.place_order(order(qty="0.02"), NOW)
    close = sim.place_order(order(side="SELL", qty=None, close_position=True), NOW)
    assert close.executed_qty == D("0.02") and sim.positions() == []
    assert code_of(lambda: sim.place_order(order(side="SELL", qty=None, close_position=True), NOW)) == 101205


def test_one_way_mode_wants_position_side_both() -> None:
    sim = engine()
    assert code_of(lambda: sim.place_order(order(position_side="LONG"), NOW)) == 109400
    assert sim.place_order(order(position_side="BOTH"), NOW).status == "FILLED"


def test_hedge_mode_rules() -> None:
    sim = engine()
    sim.set_position_mode(True)
    assert code_of(lambda: sim.place_order(order(position_side="BOTH"), NOW)) == 109400
    assert code_of(lambda: sim.place_order(order(position_side="LONG", reduce_only=True), NOW)) == 109400
    assert code_of(lambda: sim.place_order(order(side="SELL", position_side="LONG"), NOW)) == 101205
    sim.place_order(order(position_side="LONG"), NOW)
    sim.place_order(order(side="SELL", position_side="SHORT", qty="0.02"), NOW)
    sides = {v.position.side: v.position.qty for v in sim.positions()}
    assert sides == {"LONG": D("0.01"), "SHORT": D("0.02")}
    assert all(not v.one_way for v in sim.positions())
    sim.place_order(order(side="SELL", position_side="LONG"), NOW)  # SELL+LONG closes the long
    assert {v.position.side for v in sim.positions()} == {"SHORT"}


def test_minimums_and_truncation() -> None:
    sim = engine(BTC_USDT="10000")
    assert code_of(lambda: sim.place_order(order(qty="0.0001"), NOW)) == 101400  # 1 USDT < 2 USDT
    assert code_of(lambda: sim.place_order(order("ETH-USDT", qty="0.009"), NOW)) == 101400  # truncates to 0
    filled = sim.place_order(order(qty="0.0123456"), NOW)
    assert filled.orig_qty == D("0.0123")  # BingX truncates excess precision silently


def test_insufficient_margin_is_refused_and_the_boundary_is_exact() -> None:
    sim = engine("100.03")
    assert code_of(lambda: sim.place_order(order(qty="0.0084"), NOW)) == 101204
    # 0.0083 BTC: 100 USDT of margin at 5x is 498 notional -> 99.6 margin + 0.249 fee = 99.849 <= 100.03.
    assert sim.place_order(order(qty="0.0083"), NOW).status == "FILLED"
    assert sim.account().raw_available >= 0
    # Closing is never refused for margin.
    sim.set_prices({"BTC-USDT": D("50000")}, NOW)
    assert sim.account().available == 0
    assert sim.place_order(order(side="SELL", qty="0.0083", reduce_only=True), NOW).status == "FILLED"


def test_client_order_ids_are_lowercased_unique_and_bounded() -> None:
    sim = engine()
    placed = sim.place_order(order(client_order_id="Sig-ABC"), NOW)
    assert placed.client_order_id == "sig-abc"
    assert code_of(lambda: sim.place_order(order(client_order_id="SIG-abc"), NOW)) == 101481
    assert code_of(lambda: sim.place_order(order(client_order_id="x" * 41), NOW)) == 80014
    assert sim.find_order("BTC-USDT", None, "SIG-ABC") is placed
    assert sim.find_order("ETH-USDT", None, "sig-abc") is None
    assert sim.find_order(None, placed.order_id, None) is placed


def test_a_refused_order_does_not_use_up_its_client_id() -> None:
    sim = engine()
    assert code_of(lambda: sim.place_order(order(qty="5", client_order_id="a"), NOW)) == 101204
    assert sim.place_order(order(client_order_id="a"), NOW).status == "FILLED"


def test_limit_orders_rest_freeze_margin_and_cancel() -> None:
    sim = engine()
    resting = sim.place_order(order(type="LIMIT", price=D("50000.05")), NOW)
    assert (resting.status, resting.price) == ("NEW", D("50000.0"))
    assert sim.account().frozen_margin == D("100")
    assert sim.account().available == D("9900")
    assert sim.cancel_order("BTC-USDT", resting.order_id, None, NOW).status == "CANCELLED"
    assert sim.account().frozen_margin == 0
    assert code_of(lambda: sim.cancel_order("BTC-USDT", resting.order_id, None, NOW)) == 80018
    assert code_of(lambda: sim.cancel_order("BTC-USDT", 123, None, NOW)) == 109414


def test_marketable_limit_fills_now_and_ioc_never_rests() -> None:
    sim = engine()
    taker = sim.place_order(order(type="LIMIT", price=D("61000")), NOW)
    assert (taker.status, taker.avg_price, taker.price) == ("FILLED", D("60000"), D("61000"))
    ioc = sim.place_order(order(type="LIMIT", price=D("50000"), time_in_force="IOC"), NOW)
    assert ioc.status == "CANCELLED"
    post_only = order(type="LIMIT", price=D("61000"), time_in_force="PostOnly")
    assert code_of(lambda: sim.place_order(post_only, NOW)) == 101215


def test_position_mode_and_margin_type_are_locked_while_anything_is_open() -> None:
    sim = engine()
    sim.place_order(order(type="LIMIT", price=D("50000")), NOW)
    assert code_of(lambda: sim.set_position_mode(True)) == 109400
    assert code_of(lambda: sim.set_margin_type("BTC-USDT", "ISOLATED")) == 109400
    sim.set_margin_type("ETH-USDT", "ISOLATED")  # another symbol is free
    sim.cancel_all(None, NOW)
    sim.set_position_mode(True)
    assert sim.hedged


def test_leverage_rules() -> None:
    sim = engine()
    assert code_of(lambda: sim.set_leverage("NOPE-USDT", "BOTH", 10)) == 109500
    assert code_of(lambda: sim.set_leverage("BTC-USDT", "LONG", 10)) == 109400
    assert code_of(lambda: sim.set_leverage("BTC-USDT", "BOTH", 126)) == 109400
    sim.set_leverage("BTC-USDT", "BOTH", 10)
    assert (sim.leverage("BTC-USDT", "LONG"), sim.leverage("BTC-USDT", "SHORT")) == (10, 10)
    sim.place_order(order(qty="0.8"), NOW)  # 48000 notional: 4800 margin at 10x
    assert code_of(lambda: sim.set_leverage("BTC-USDT", "BOTH", 2)) == 101204
    assert sim.leverage("BTC-USDT", "LONG") == 10
    sim.set_position_mode(False)
    sim.place_order(order(side="SELL", qty="0.8", reduce_only=True), NOW)
    sim.set_position_mode(True)
    assert code_of(lambda: sim.set_leverage("BTC-USDT", "BOTH", 3)) == 109400
    sim.set_leverage("BTC-USDT", "SHORT", 3)
    assert (sim.leverage("BTC-USDT", "LONG"), sim.leverage("BTC-USDT", "SHORT")) == (10, 3)


def test_a_resting_order_holds_margin_at_the_leverage_it_will_fill_at() -> None:
    # Found by the property test: an order frozen at 20x that filled after a change to 2x opened 9090 USDT of
    # margin on a 2000 USDT account, which a close then turned into a negative balance.
    sim = Engine(D("2000"), {}, now=NOW, default_leverage=20)
    resting = sim.place_order(order("ETH-USDT", side="SELL", qty="6", type="LIMIT", price=D("3030")), NOW)
    assert sim.account().frozen_margin == D("909")  # 18180 notional at 20x
    assert code_of(lambda: sim.set_leverage("ETH-USDT", "BOTH", 2)) == 101204  # 9090 would be needed
    assert (resting.frozen_margin, resting.leverage, sim.leverage("ETH-USDT", "SHORT")) == (D("909"), 20, 20)
    sim.set_leverage("ETH-USDT", "BOTH", 10)
    assert (sim.account().frozen_margin, resting.leverage) == (D("1818"), 10)
    sim.set_prices({"ETH-USDT": D("3100")}, NOW)
    [short] = sim.positions("ETH-USDT")
    assert (short.margin, sim.account().frozen_margin) == (D("1818"), 0)


def test_in_hedge_mode_a_stop_sent_with_the_opening_pair_never_opens_a_position() -> None:
    # Found by the property test: a BUY+LONG STOP_MARKET fired and opened a long, though a stop only ever closes.
    sim = engine()
    sim.set_position_mode(True)
    stop = sim.place_order(order(type="STOP_MARKET", position_side="LONG", stop_price=D("59400")), NOW)
    sim.set_prices({"BTC-USDT": D("60000")}, NOW)
    assert (stop.status, sim.positions(), sim.fills) == ("CANCELLED", [], [])


def test_attached_stop_loss_becomes_an_order_that_goes_with_the_position() -> None:
    sim = engine()
    stop = '{"stopPrice":55000.1,"workingType":"MARK_PRICE","type":"STOP_MARKET","quantity":0.01}'
    sim.place_order(order(stop_loss=stop), NOW)
    [child] = sim.open_orders("BTC-USDT")
    assert (child.type, child.side, child.stop_price, child.orig_qty, child.reduce_only) == (
        "STOP_MARKET", "SELL", D("55000.1"), D("0.01"), True)
    sim.place_order(order(side="SELL", reduce_only=True), NOW)
    assert sim.open_orders() == [] and child.status == "CANCELLED"
    assert code_of(lambda: sim.place_order(order(stop_loss="{not json"), NOW)) == 80014
    assert code_of(lambda: sim.place_order(order(take_profit='{"stopPrice":0}'), NOW)) == 80014


def test_close_all_positions_closes_each_at_the_mark() -> None:
    sim = engine()
    sim.place_order(order(), NOW)
    sim.place_order(order("ETH-USDT", "SELL", "1"), NOW)
    ids = sim.close_all_positions(None, NOW)
    assert len(ids) == 2 and sim.positions() == []
    assert all(sim.find_order(None, i, None).status == "FILLED" for i in ids)


def test_prices_add_generic_markets_and_are_all_or_nothing() -> None:
    sim = engine(DOGE_USDT="0.1234567")
    doge = sim.market("DOGE-USDT")
    assert (doge.price_precision, doge.quantity_precision) == (6, 0)
    assert sim.price("DOGE-USDT") == D("0.123457")  # on the tick
    with pytest.raises(ValueError):
        sim.set_prices({"BTC-USDT": D("1"), "btc": D("2")}, NOW)
    with pytest.raises(ValueError):
        sim.set_prices({"BTC-USDT": D("-1")}, NOW)
    assert sim.price("BTC-USDT") == D("60000")
    assert code_of(lambda: sim.market("NOPE-USDT")) == 109425


def test_reset_clears_everything_but_never_reuses_an_order_id() -> None:
    sim = engine()
    first = sim.place_order(order(client_order_id="a"), NOW)
    sim.set_position_mode(False)
    sim.set_prices({"BTC-USDT": D("70000")}, NOW)
    sim.reset(NOW)
    assert (sim.positions(), sim.all_orders(), sim.fills) == ([], [], [])
    assert sim.account().balance == D("10000") and sim.price("BTC-USDT") == D("60000")
    again = sim.place_order(order(client_order_id="a"), NOW)
    assert again.order_id > first.order_id
    sim.reset(NOW, balance=D("500"))
    assert sim.account().balance == D("500")


def test_liquidation_price_is_indicative_and_isolated_is_tighter() -> None:
    sim = engine()
    sim.set_margin_type("BTC-USDT", "ISOLATED")
    sim.place_order(order(qty="0.1"), NOW)
    [view] = sim.positions()
    # 6000 notional, 1200 margin: liquidation where 1200 + (m - 60000) * 0.1 = 0.004 * m * 0.1.
    assert view.isolated and view.liquidation_price == D("48192.8")


def test_price_settings_parse_and_reject_malformed_entries() -> None:
    assert parse_prices("BTC-USDT=61000, 1000PEPE-USDT=0.01") == {"BTC-USDT": D("61000"), "1000PEPE-USDT": D("0.01")}
    for bad in ("BTC-USDT61000", "BTC-USDT=abc", "btc-usdt=1", "BTC-USDT=-1", "BTC-USD=1", ""):
        with pytest.raises(ValueError):
            parse_prices(bad)


def test_in_hedge_mode_closing_a_side_cancels_only_that_side_s_protection() -> None:
    sim = engine()
    sim.set_position_mode(True)
    sim.place_order(order(position_side="LONG", stop_loss='{"stopPrice":55000}'), NOW)
    sim.place_order(order(side="SELL", position_side="SHORT", stop_loss='{"stopPrice":65000}'), NOW)
    entry = sim.place_order(order(type="TRIGGER_MARKET", position_side="LONG", stop_price=D("62000")), NOW)
    sim.place_order(order(side="SELL", position_side="LONG"), NOW)
    open_now = {(o.type, o.side, o.position_side) for o in sim.open_orders()}
    assert open_now == {("STOP_MARKET", "BUY", "SHORT"), ("TRIGGER_MARKET", "BUY", "LONG")}
    assert entry.is_open


def test_a_saved_account_restores_exactly_and_keeps_ids_unique() -> None:
    sim = engine()
    sim.set_position_mode(True)
    sim.set_leverage("BTC-USDT", "LONG", 10)
    sim.set_margin_type("ETH-USDT", "ISOLATED")
    sim.place_order(order(position_side="LONG", client_order_id="Keep", stop_loss='{"stopPrice":50000}'), NOW)
    sim.place_order(order("ETH-USDT", "SELL", "1", position_side="SHORT"), NOW)
    resting = sim.place_order(order(type="LIMIT", price=D("55000"), position_side="LONG"), NOW)
    sim.set_prices({"BTC-USDT": D("61000.3"), "DOGE-USDT": D("0.1")}, NOW)
    document = sim.to_document()
    document = json.loads(json.dumps(document))  # what a store hands back is plain data

    again = Engine(D("1"), {}, now=NOW)
    again.restore(document)
    assert again.to_document() == document
    assert (again.account(), again.hedged, again.prices) == (sim.account(), True, sim.prices)
    assert [v.position for v in again.positions()] == [v.position for v in sim.positions()]
    assert again.find_order("BTC-USDT", resting.order_id, None) == resting
    assert code_of(lambda: again.place_order(order(position_side="LONG", client_order_id="keep"), NOW)) == 101481
    assert again.place_order(order(position_side="LONG"), NOW).order_id > max(o.order_id for o in sim.all_orders())
    again.set_prices({"BTC-USDT": D("54000")}, NOW)  # the restored limit still rests and fills
    assert again.find_order(None, resting.order_id, None).status == "FILLED"
    with pytest.raises(ValueError):
        again.restore({**document, "version": 0})


DAY = 24 * 3600 * 1000


def test_pruning_keeps_the_latest_finished_history_and_every_open_order() -> None:
    sim = engine()
    resting = sim.place_order(order(type="LIMIT", price=D("50000"), client_order_id="Dip"), NOW)  # the oldest
    sim.place_order(order(qty="0.02", stop_loss='{"stopPrice":50000}'), NOW)  # its stop-loss stays open
    closes = [sim.place_order(order(side=side, client_order_id=f"c-{i}"), NOW + i)
              for i, side in enumerate(["SELL", "BUY"] * 5, start=1)]
    account, open_orders = sim.account(), sim.open_orders()
    assert len(sim.all_orders()) == 13 and len(sim.fills) == 11

    assert sim.prune(NOW + 10, keep=3) == 8 + 8
    assert sim.open_orders() == open_orders and resting in sim.all_orders()
    finished = [o for o in sim.all_orders() if not o.is_open]
    assert finished == closes[-3:]
    assert [f.order_id for f in sim.fills] == [o.order_id for o in closes[-3:]]
    assert sim.account() == account  # the money is kept apart from the history
    assert sim.find_order(None, closes[0].order_id, None) is None
    sim.place_order(order(side="SELL", client_order_id="C-1"), NOW + 11)  # a forgotten client id is free again
    assert code_of(lambda: sim.place_order(order(client_order_id="c-10"), NOW)) == 101481  # a kept one is not
    assert sim.find_order(None, None, "dip") is resting
    assert sim.prune(NOW + 12, keep=3) == 2  # the two orders just placed pushed two out: one order, one fill

    restored = Engine(D("1"), {}, now=NOW)
    restored.restore(json.loads(json.dumps(sim.to_document())))
    assert restored.to_document() == sim.to_document()


def test_pruning_forgets_finished_history_past_the_window_but_never_an_open_order_or_position() -> None:
    sim = engine()
    sim.place_order(order(qty="0.02"), NOW)
    sim.place_order(order(side="SELL", qty="0.01"), NOW)
    resting = sim.place_order(order(type="LIMIT", price=D("50000")), NOW)
    sim.set_prices({"BTC-USDT": D("61000")}, NOW + 29 * DAY)
    assert sim.prune(NOW + 30 * DAY, max_age_ms=30 * DAY) == 0  # exactly 30 days old: still kept
    assert sim.prune(NOW + 30 * DAY + 1, max_age_ms=30 * DAY) == 4
    assert (sim.all_orders(), sim.fills) == ([resting], [])
    [position] = sim.positions()
    assert (position.position.qty, position.position.entry_price) == (D("0.01"), D("60000"))
    sim.set_prices({"BTC-USDT": D("49000")}, NOW + 31 * DAY)  # the kept limit still fills
    assert resting.status == "FILLED" and sim.positions()[0].position.qty == D("0.02")
