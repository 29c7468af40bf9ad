"""The books checker itself: each thing it counts, it does find (so a scenario's clean books mean something)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from services.executor.domain import client_order_id
from tests.faults.books import Alert, Attempt, OffWindow, check_books, off_windows

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def alert(key: str, *statuses: int | None, signal_id: str | None = None) -> Alert:
    attempts = [Attempt(0, 0, status, {"status": "accepted", "signal_id": signal_id or key} if status == 200 else None)
                for status in statuses]
    return Alert(key=key, payload={"strategy": key}, attempts=attempts)


def record(signal_id: str, key: str, status: str, *, at: datetime = T0, order_id: int | None = None,
           reason: str | None = None, max_lag_s: float = 60) -> dict:
    return {"_id": signal_id, "status": status, "received_at": at, "order_id": order_id,
            "order_ids": [order_id] if order_id else None, "reason": reason,
            "signal": {"strategy": key, "max_lag_s": max_lag_s, "alert_time": None}}


def order(signal_id: str, order_id: int, *, at: datetime = T0, leg: int = 0, reduce_only: bool = False) -> dict:
    return {"orderId": order_id, "clientOrderId": client_order_id(signal_id, leg), "time": int(at.timestamp() * 1000),
            "reduceOnly": reduce_only}


def test_clean_books_count_each_alert_once():
    books = check_books(
        [alert("a", 200), alert("b", 503, 200), alert("c", 503, 503, 503)],
        [record("a", "a", "placed", order_id=1), record("b", "b", "skipped", reason="trading is halted")],
        [order("a", 1)], [])
    assert {k: books[k] for k in ("sent", "accepted", "at_exchange", "recorded_terminal", "lost", "doubled", "orphans",
                                  "misrecorded", "stale", "kill_switch_violations", "unsettled")} == {
        "sent": 3, "accepted": 2, "at_exchange": 1, "recorded_terminal": 1, "lost": 0, "doubled": 0, "orphans": 0,
        "misrecorded": 0, "stale": 0, "kill_switch_violations": 0, "unsettled": 0}
    assert books["outcomes"] == {"placed": 1, "skipped": 1}


def test_lost_doubled_orphaned_misrecorded_and_unsettled_are_found():
    alerts = [alert("lost", 200), alert("noreason", 200), alert("twice", 200), alert("resent", 200, signal_id="h-2"),
              alert("refused", 503), alert("lying", 200), alert("stuck", 200)]
    signals = [record("noreason", "noreason", "failed"),  # a failure without its reason is not an account of it
               record("twice", "twice", "placed", order_id=3),
               record("h-1", "resent", "placed", order_id=4), record("h-2", "resent", "skipped", reason="a resend"),
               record("refused", "refused", "placed", order_id=6),
               record("lying", "lying", "expired", reason="older than its max lag", order_id=None),
               record("stuck", "stuck", "submitting")]
    orders = [order("twice", 3), order("twice", 30, leg=1), order("h-1", 4), order("nobody", 5), order("refused", 6),
              order("lying", 7), order("stuck", 8)]
    books = check_books(alerts, signals, orders, [])
    assert [x["alert"] for x in books["details"]["lost"]] == ["lost", "noreason"]
    assert [x["alert"] for x in books["details"]["doubled"]] == ["twice"]
    # An order of a signal never answered 200, or of no signal at all, belongs to no accepted alert.
    assert sorted(x["orderId"] for x in books["details"]["orphans"]) == [5, 6]
    # At the exchange, but the records say otherwise (or have not finished saying).
    assert sorted(x["alert"] for x in books["details"]["misrecorded"]) == ["lying", "stuck"]
    assert books["details"]["unsettled"] == [{"alert": "stuck", "signal_id": "stuck", "status": "submitting"}]
    assert "resent" in books["details"]["at_exchange"]  # one order for the alert, under the first delivery's id


def test_kill_switch_and_max_lag_violations_are_found():
    window = OffWindow("entries_off", T0 + timedelta(seconds=10), T0 + timedelta(seconds=20))
    later = T0 + timedelta(seconds=25)
    alerts = [alert(k, 200) for k in ("arrived-off", "landed-off", "close-off", "held", "stale", "fine")]
    signals = [record("arrived-off", "arrived-off", "placed", at=T0 + timedelta(seconds=12), order_id=1),
               record("landed-off", "landed-off", "placed", at=T0 + timedelta(seconds=9), order_id=2),
               record("close-off", "close-off", "placed", at=T0 + timedelta(seconds=12), order_id=3),
               record("held", "held", "placed", at=T0 + timedelta(seconds=9), order_id=4),
               record("stale", "stale", "placed", at=T0, order_id=5, max_lag_s=2),
               record("fine", "fine", "placed", at=T0 + timedelta(seconds=21), order_id=6)]
    orders = [order("arrived-off", 1, at=later),  # arrived while off, placed after: "never executed later"
              order("landed-off", 2, at=T0 + timedelta(seconds=11)),
              order("close-off", 3, at=T0 + timedelta(seconds=12), reduce_only=True),  # entries_off lets closes go
              order("held", 4, at=T0 + timedelta(seconds=13)),
              order("stale", 5, at=T0 + timedelta(seconds=4)),
              order("fine", 6, at=T0 + timedelta(seconds=21))]
    held = [(T0 + timedelta(seconds=12.5), T0 + timedelta(seconds=13.5))]
    books = check_books(alerts, signals, orders, [window], held=held)
    assert sorted(x["signal_id"] for x in books["details"]["kill_switch_violations"]) == ["arrived-off", "landed-off"]
    assert [x["signal_id"] for x in books["details"]["stale"]] == ["stale"]
    # An order on its way when the change was learned may land just after the window opened; an arrival may not.
    slack = OffWindow("entries_off", window.start, window.end, order_slack_s=1.5)
    books = check_books(alerts, signals, orders, [slack], held=held)
    assert sorted(x["signal_id"] for x in books["details"]["kill_switch_violations"]) == ["arrived-off"]
    halted = OffWindow("halted", window.start, window.end)
    books = check_books(alerts, signals, orders, [halted], held=held)
    assert "close-off" in [x["signal_id"] for x in books["details"]["kill_switch_violations"]]  # halted: nothing goes


def test_off_windows_follow_the_control_history():
    history = [{"version": 1, "mode": "running", "changed_at": T0},
               {"version": 2, "mode": "halted", "changed_at": T0 + timedelta(seconds=10)},
               {"version": 4, "mode": "running", "changed_at": T0 + timedelta(seconds=30)},
               {"version": 3, "mode": "entries_off", "changed_at": T0 + timedelta(seconds=20)},
               {"version": 5, "mode": "entries_off", "changed_at": T0 + timedelta(seconds=40)}]
    assert off_windows(history, grace_s=1) == [
        OffWindow("halted", T0 + timedelta(seconds=11), T0 + timedelta(seconds=20)),
        OffWindow("entries_off", T0 + timedelta(seconds=21), T0 + timedelta(seconds=30)),
        OffWindow("entries_off", T0 + timedelta(seconds=41), None)]
