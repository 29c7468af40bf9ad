"""Which kill-switch version refused a signal that arrived at a given time and waited (killswitch.refused_since)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from shared.contracts import KillSwitchChangedV1, KillSwitchMode
from shared.killswitch import refused_since

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)
RUNNING, HALTED, ENTRIES_OFF = KillSwitchMode.RUNNING, KillSwitchMode.HALTED, KillSwitchMode.ENTRIES_OFF


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def history(*changes: tuple[KillSwitchMode, float] | tuple[KillSwitchMode, float, bool]) -> list[KillSwitchChangedV1]:
    return [KillSwitchChangedV1(version=n, mode=change[0], actor="test", reason="test", changed_at=at(change[1]),
                                forced=len(change) > 2 and change[2]) for n, change in enumerate(changes, start=1)]


def halted(mode: KillSwitchMode) -> bool:
    return mode is HALTED


def refusing(versions, arrived: float, refuses=halted) -> int | None:
    version = refused_since(versions, at(arrived), refuses)
    return None if version is None else version.version


def test_a_refusal_in_force_at_arrival_or_since_counts_one_over_before_does_not():
    versions = history((RUNNING, 0), (HALTED, 10), (RUNNING, 20))
    assert refusing(versions, 5) == 2  # arrived before the halt, reached after it
    assert refusing(versions, 15) == 2  # arrived during it
    assert refusing(versions, 20) is None  # arrived as trading came back on
    assert refusing(versions, 25) is None


def test_a_forced_turn_on_lets_what_waited_run_and_a_later_refusal_counts_again():
    assert refusing(history((HALTED, 0), (RUNNING, 10, True)), 5) is None
    assert refusing(history((HALTED, 0), (RUNNING, 10, True), (HALTED, 20), (RUNNING, 30)), 5) == 3


def test_a_forced_change_that_is_not_a_turn_on_lifts_nothing():
    assert refusing(history((RUNNING, 0), (HALTED, 10, True), (RUNNING, 20)), 5) == 2  # halted with force
    # Running again, then a forced change while running (new risk limits, say): what waited through the halt stays out.
    assert refusing(history((HALTED, 0), (RUNNING, 10), (RUNNING, 15, True)), 5) == 1


def test_what_refuses_is_the_callers_question():
    versions = history((ENTRIES_OFF, 0), (RUNNING, 10))
    assert refusing(versions, 5) is None  # a close: entries off never refused it
    assert refusing(versions, 5, lambda mode: mode is not RUNNING) == 1  # an entry
