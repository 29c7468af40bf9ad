"""Property tests of the simulator's books over random orders and price moves (hypothesis, exact Decimal)."""

from __future__ import annotations

from decimal import Decimal as D

from hypothesis import given, settings
from hypothesis import strategies as st

from services.bingx_sim.engine import CLOSING_TYPES, BingxError, Engine, OrderRequest

NOW = 1_700_000_000_000
BTC = "BTC-USDT"

orders = st.tuples(
    st.just("order"),
    st.sampled_from(["BUY", "SELL"]),
    st.sampled_from(["MARKET", "LIMIT", "LIMIT", "STOP_MARKET", "TAKE_PROFIT_MARKET", "TRIGGER_MARKET"]),
    st.sampled_from(["0.001", "0.01", "0.05", "0.1", "0.3"]),
    st.booleans(),  # reduce-only
    st.integers(min_value=-5, max_value=5),  # limit or stop price offset from the mark, in percent
)
moves = st.tuples(st.just("move"), st.integers(min_value=-15, max_value=15))  # percent
leverages = st.tuples(st.just("leverage"), st.sampled_from([2, 5, 20, 50, 100]))
steps = st.lists(st.one_of(orders, moves, leverages), min_size=3, max_size=30)


def signed_position(sim: Engine) -> D:
    views = sim.positions(BTC)
    return sum((v.position.qty if v.position.side == "LONG" else -v.position.qty for v in views), D(0))


def check_books(sim: Engine) -> None:
    account = sim.account()
    fills = sim.fills
    # The identity, recomputed from the ledger of fills and the open positions rather than from the engine's totals.
    realised = sum((f.realised_pnl for f in fills), D(0))
    fees = -sum((f.commission for f in fills), D(0))
    unrealised = D(0)
    for view in sim.positions():
        direction = 1 if view.position.side == "LONG" else -1
        unrealised += (sim.price(view.position.symbol) - view.position.entry_price) * view.position.qty * direction
    assert (account.realised_pnl, account.fees, account.unrealised) == (realised, fees, unrealised)
    assert account.equity == account.deposits + realised - fees + unrealised
    assert account.available >= 0
    assert account.frozen_margin == sum((o.frozen_margin for o in sim.open_orders()), D(0))
    assert all(v.position.qty > 0 for v in sim.positions())


@settings(max_examples=50, deadline=None)
@given(steps=steps, isolated=st.booleans())
def test_the_books_balance_and_reduce_only_never_grows_a_position(steps: list[tuple], isolated: bool) -> None:
    sim = Engine(D("2000"), {}, now=NOW)  # small, so that liquidations happen
    if isolated:
        sim.set_margin_type(BTC, "ISOLATED")
    for step in steps:
        before = signed_position(sim)
        raw_before = sim.account().raw_available
        fills_before = len(sim.fills)
        if step[0] == "order":
            _, side, type_, qty, reduce_only, offset = step
            level = sim.price(BTC) * (1 + D(offset) / 100)
            request = OrderRequest(symbol=BTC, side=side, type=type_, quantity=D(qty),
                                   price=level if type_ == "LIMIT" else None,
                                   stop_price=None if type_ in ("MARKET", "LIMIT") else level,
                                   reduce_only=reduce_only or None)
            try:
                sim.place_order(request, NOW)
            except BingxError:
                continue
            after = signed_position(sim)
            # An accepted order never spends margin the account did not have.
            if raw_before >= 0:
                assert sim.account().raw_available >= 0
            if reduce_only:
                assert abs(after) <= abs(before) and after * before >= 0
        elif step[0] == "move":
            sim.set_prices({BTC: sim.price(BTC) * (1 + D(step[1]) / 100)}, NOW)
            fired = [sim.find_order(None, f.order_id, None) for f in sim.fills[fills_before:]]
            closing = [o is not None and (o.reduce_only or o.liquidation or o.type in CLOSING_TYPES) for o in fired]
            if fired and all(closing):
                after = signed_position(sim)
                assert abs(after) <= abs(before) and after * before >= 0
        else:
            try:
                sim.set_leverage(BTC, "BOTH", step[1])
            except BingxError:
                pass
        check_books(sim)
