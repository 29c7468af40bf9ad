"""Pure kill-switch rules: what a settings request means, what a fresh install starts with."""

from __future__ import annotations

from shared.contracts import KillSwitchMode


class InvalidChange(ValueError):
    pass


def requested_mode(autotrade: bool | None, mode: str | None) -> KillSwitchMode:
    """`autotrade` true is `running`, false is `halted`; `mode` names a mode directly. Both must agree."""
    if autotrade is None and mode is None:
        raise InvalidChange("give 'autotrade' (true or false), 'mode' (running, entries_off, halted) or 'risk' (limits)")
    by_mode: KillSwitchMode | None = None
    if mode is not None:
        try:
            by_mode = KillSwitchMode(mode)
        except ValueError:
            raise InvalidChange("'mode' must be one of running, entries_off, halted") from None
    if autotrade is None:
        assert by_mode is not None
        return by_mode
    by_autotrade = KillSwitchMode.RUNNING if autotrade else KillSwitchMode.HALTED
    if by_mode is not None and by_mode is not by_autotrade and not (not autotrade and by_mode is KillSwitchMode.ENTRIES_OFF):
        raise InvalidChange(f"'autotrade' {str(autotrade).lower()} contradicts 'mode' {by_mode.value}")
    return by_mode or by_autotrade


def initial_mode(initial_autotrade: bool) -> KillSwitchMode:
    return KillSwitchMode.RUNNING if initial_autotrade else KillSwitchMode.HALTED
