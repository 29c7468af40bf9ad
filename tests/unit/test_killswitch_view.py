"""Which kill-switch version refused a signal that arrived at a given time (KillSwitchView.refused_since)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from shared.contracts import KillSwitchChangedV1, KillSwitchMode
from shared.killswitch import KillSwitchView

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def version(number: int, mode: KillSwitchMode, seconds: float, *, forced: bool = False) -> KillSwitchChangedV1:
    return KillSwitchChangedV1(version=number, mode=mode, actor="test", reason="test", changed_at=at(seconds), forced=forced)


def halted(mode: KillSwitchMode) -> bool:
    return mode is KillSwitchMode.HALTED


def test_a_refusal_in_force_at_arrival_or_since_counts_one_over_before_does_not():
    view = KillSwitchView()
    for change in (version(1, KillSwitchMode.RUNNING, 0), version(2, KillSwitchMode.HALTED, 10),
                   version(3, KillSwitchMode.RUNNING, 20)):
        view.apply(change)
    assert view.refused_since(at(5), halted).version == 2  # arrived before the halt, reached after it
    assert view.refused_since(at(15), halted).version == 2  # arrived during it
    assert view.refused_since(at(20), halted) is None  # arrived as trading came back on
    assert view.refused_since(at(25), halted) is None


def test_a_forced_turn_on_lets_what_waited_run_and_a_later_refusal_counts_again():
    view = KillSwitchView()
    for change in (version(1, KillSwitchMode.HALTED, 0), version(2, KillSwitchMode.RUNNING, 10, forced=True)):
        view.apply(change)
    assert view.refused_since(at(5), halted) is None
    view.apply(version(3, KillSwitchMode.HALTED, 20))
    view.apply(version(4, KillSwitchMode.RUNNING, 30))
    assert view.refused_since(at(5), halted).version == 3


def test_what_refuses_is_the_callers_question():
    view = KillSwitchView()
    for change in (version(1, KillSwitchMode.ENTRIES_OFF, 0), version(2, KillSwitchMode.RUNNING, 10)):
        view.apply(change)
    assert view.refused_since(at(5), halted) is None  # a close: entries off never refused it
    assert view.refused_since(at(5), lambda mode: mode is not KillSwitchMode.RUNNING).version == 1  # an entry
