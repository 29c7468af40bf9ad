"""The executor's pure rules: the kill switch, staleness, sizing and closing."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from services.executor import domain
from services.executor.domain import CannotPlace, NothingToDo, OrderPlan
from shared.contracts import Action, KillSwitchMode, SignalReceivedV1

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)


def make(**fields) -> SignalReceivedV1:
    return SignalReceivedV1(**{"signal_id": "s", "token_name": "t", "symbol": "BTC/USDT:USDT", "action": "buy", "received_at": NOW, **fields})


@pytest.mark.parametrize(
    ("mode", "action", "reduce_only", "refused"),
    [
        (None, Action.CLOSE, False, True),
        (KillSwitchMode.HALTED, Action.CLOSE_LONG, False, True),
        (KillSwitchMode.ENTRIES_OFF, Action.BUY, False, True),
        (KillSwitchMode.ENTRIES_OFF, Action.BUY, True, False),
        (KillSwitchMode.ENTRIES_OFF, Action.CLOSE_SHORT, False, False),
        (KillSwitchMode.ENTRIES_OFF, Action.FLAT, False, False),
        (KillSwitchMode.RUNNING, Action.SHORT, False, False),
        (KillSwitchMode.ENTRIES_OFF, Action.REVERSE, True, True),  # its second order opens, reduce-only or not
    ],
)
def test_the_kill_switch_decides(mode, action, reduce_only, refused):
    assert (domain.kill_switch_refusal(mode, action, reduce_only) is not None) is refused


def test_age_counts_from_the_alert_time_when_given():
    assert domain.age_seconds(make(), NOW + timedelta(seconds=5)) == 5
    assert domain.age_seconds(make(alert_time=NOW - timedelta(seconds=70)), NOW) == 70
    # An alert time in the future does not make a signal that waited in the queue look fresh.
    queued = make(received_at=NOW - timedelta(seconds=90), alert_time=NOW + timedelta(hours=2))
    assert domain.age_seconds(queued, NOW) == 90 and domain.is_stale(queued, NOW)
    assert domain.is_stale(make(alert_time=NOW - timedelta(seconds=61)), NOW)
    assert not domain.is_stale(make(alert_time=NOW - timedelta(seconds=61), max_lag_s=120), NOW)


def test_sizing_by_qty_usdt_and_percent():
    price, free = Decimal("50000"), Decimal("1000")
    assert domain.open_amount(make(qty=Decimal("0.01")), price=price, free_margin=free, leverage=1) == Decimal("0.01")
    assert domain.open_amount(make(usdt=Decimal("100")), price=price, free_margin=free, leverage=1) == Decimal("0.002")
    assert domain.open_amount(make(percent=Decimal("10")), price=price, free_margin=free, leverage=5) == Decimal("0.01")


def test_minimums_are_checked_before_anything_is_sent():
    with pytest.raises(CannotPlace, match="under BTC/USDT:USDT's minimum of 0.0001"):
        domain.check_minimums(Decimal("0.00005"), Decimal("60000"), min_amount=Decimal("0.0001"), min_cost=None, symbol="BTC/USDT:USDT")
    with pytest.raises(CannotPlace, match="value 1.20 USDT is under"):
        domain.check_minimums(Decimal("0.0002"), Decimal("6000"), min_amount=None, min_cost=Decimal("2"), symbol="BTC/USDT:USDT")
    with pytest.raises(CannotPlace, match="rounds to zero"):
        domain.check_minimums(Decimal("0"), Decimal("6000"), min_amount=None, min_cost=None, symbol="BTC/USDT:USDT")


def test_a_close_never_exceeds_the_position_and_never_opens_the_other_side():
    held = {"long": Decimal("0.5")}
    assert domain.close_plan(Action.CLOSE_LONG, held, Decimal("2"), None) == OrderPlan("sell", Decimal("0.5"), True)
    assert domain.close_plan(Action.CLOSE_LONG, held, None, Decimal("50")) == OrderPlan("sell", Decimal("0.25"), True)
    assert domain.close_plan(Action.CLOSE, {"short": Decimal("1")}, None, None) == OrderPlan("buy", Decimal("1"), True)
    assert isinstance(domain.close_plan(Action.CLOSE_SHORT, held, None, None), NothingToDo)
    assert isinstance(domain.close_plan(Action.FLAT, {}, None, None), NothingToDo)
    with pytest.raises(CannotPlace, match="both a long and a short"):
        domain.close_plan(Action.CLOSE, {"long": Decimal(1), "short": Decimal(1)}, None, None)


def test_client_order_ids_are_stable_lowercase_and_fit_bingx():
    cid = domain.client_order_id("alert-1")
    assert cid == domain.client_order_id("alert-1") != domain.client_order_id("alert-2")
    assert cid == cid.lower() and len(cid) <= 40
    assert domain.client_order_id("alert-1", leg=1) != cid


@pytest.mark.parametrize(
    ("fields", "side", "expected"),
    [
        ({"sl": Decimal("58000"), "tp": Decimal("63000")}, "buy", (Decimal("58000"), Decimal("63000"))),
        ({"sl_pct": Decimal("2"), "tp_pct": Decimal("5")}, "buy", (Decimal("58800"), Decimal("63000"))),
        ({"sl_pct": Decimal("2"), "tp_pct": Decimal("5")}, "sell", (Decimal("61200"), Decimal("57000"))),
        ({"sl": Decimal("59000"), "sl_pct": Decimal("50")}, "buy", (Decimal("59000"), None)),  # a price wins
        ({}, "sell", (None, None)),
    ],
)
def test_protection_by_price_or_percent_from_the_reference(fields, side, expected):
    assert domain.protection(make(**fields), side, Decimal("60000")) == expected


@pytest.mark.parametrize(
    ("fields", "side", "reason"),
    [
        ({"sl": Decimal("60000")}, "buy", "the stop-loss 60000 must be below the price 60000 for a long"),
        ({"sl": Decimal("59999")}, "sell", "the stop-loss 59999 must be above the price 60000 for a short"),
        ({"tp": Decimal("61000")}, "sell", "the take-profit 61000 must be below the price 60000 for a short"),
        ({"sl_pct": Decimal("100")}, "buy", "the stop-loss 0 must be below"),  # a stop at zero protects nothing
    ],
)
def test_protection_on_the_wrong_side_is_refused(fields, side, reason):
    with pytest.raises(CannotPlace, match=reason):
        domain.protection(make(**fields), side, Decimal("60000"))


def test_the_leverage_of_an_entry_is_its_side_in_hedge_mode_and_both_in_one_way_mode():
    assert [domain.position_side(s, True) for s in ("buy", "sell")] == ["LONG", "SHORT"]
    assert [domain.position_side(s, False) for s in ("buy", "sell")] == ["BOTH", "BOTH"]


def test_flat_closes_every_side_held():
    assert domain.flat_plans({"long": Decimal("1"), "short": Decimal("2")}) == [
        OrderPlan(side="sell", amount=Decimal("1"), reduce_only=True), OrderPlan(side="buy", amount=Decimal("2"), reduce_only=True)]
    assert domain.flat_plans({"long": Decimal("0")}) == NothingToDo("no position to close")


@pytest.mark.parametrize(
    ("claimed", "size", "long", "short", "drift"),
    [
        ("long", Decimal("0.02"), Decimal("0.02"), Decimal("0"), False),
        ("long", Decimal("0.02"), Decimal("0.01"), Decimal("0"), True),
        ("short", Decimal("1"), Decimal("0"), Decimal("1"), False),
        ("short", None, Decimal("0"), Decimal("3"), False),
        ("short", None, Decimal("2"), Decimal("0"), True),
        ("flat", None, Decimal("0"), Decimal("0"), False),
        ("flat", Decimal("0"), Decimal("0.01"), Decimal("0"), True),
        ("long", Decimal("1"), Decimal("2"), Decimal("1"), False),  # hedge mode: the net is what a strategy holds
    ],
)
def test_drift_compares_the_strategys_position_with_the_venues_net(claimed, size, long, short, drift):
    assert domain.drifted(claimed, size, long, short) is drift
