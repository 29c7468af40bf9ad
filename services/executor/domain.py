"""Pure trading rules of the executor: the kill-switch decision, staleness, sizing, and what order an action means."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_DOWN, Decimal

from shared.contracts import Action, KillSwitchMode, SignalReceivedV1

CLIENT_ORDER_ID_PREFIX = "tvtb"


class CannotPlace(ValueError):
    """The signal cannot become an order (unknown market, size under the minimum, ...); the text says why."""


@dataclass(frozen=True)
class OrderPlan:
    side: str  # buy | sell
    amount: Decimal
    reduce_only: bool
    price: Decimal | None = None  # a limit order's price; None for a market order
    stop_loss: Decimal | None = None
    take_profit: Decimal | None = None


@dataclass(frozen=True)
class NothingToDo:
    reason: str


def client_order_id(signal_id: str, leg: int = 0) -> str:
    """Derived from the signal id, so a redelivered signal can only ever name the same order.

    BingX lowercases client ids and allows at most 40 characters: lowercase hex of a hash fits both.
    """
    digest = hashlib.sha256(f"{signal_id}|{leg}".encode()).hexdigest()
    return f"{CLIENT_ORDER_ID_PREFIX}{digest[:32]}"


def kill_switch_refusal(mode: KillSwitchMode | None, action: Action, reduce_only: bool) -> str | None:
    """Why the kill switch forbids this signal, or None when it may go. An unknown mode forbids everything."""
    if mode is None:
        return "the kill-switch state is not known yet"
    if mode is KillSwitchMode.HALTED:
        return "trading is halted"
    if mode is KillSwitchMode.ENTRIES_OFF and action.opens and (not reduce_only or action is Action.REVERSE):
        return "entries are off: only closing orders go"
    return None


def age_seconds(signal: SignalReceivedV1, now: datetime) -> float:
    """Age from the alert's own time or from its arrival at the ingress, whichever is older.

    A clock ahead of ours (or a local time sent as UTC) must not make a queued signal look fresh.
    """
    arrived = (now - signal.received_at).total_seconds()
    if signal.alert_time is None:
        return arrived
    return max(arrived, (now - signal.alert_time).total_seconds())


def is_stale(signal: SignalReceivedV1, now: datetime) -> bool:
    return age_seconds(signal, now) > signal.max_lag_s


def _open_side(action: Action) -> str:
    return "buy" if action in (Action.BUY, Action.LONG) else "sell"


def open_amount(
    signal: SignalReceivedV1, *, price: Decimal, free_margin: Decimal, leverage: int
) -> Decimal:
    """The size in base coin: `qty` as given, `usdt` notional at the price, `percent` of free margin times leverage."""
    if signal.qty is not None:
        return signal.qty
    if signal.usdt is not None:
        return signal.usdt / price
    if signal.percent is not None:
        return free_margin * signal.percent / Decimal(100) * Decimal(leverage) / price
    raise CannotPlace("the signal carries no size")


def check_minimums(amount: Decimal, price: Decimal, *, min_amount: Decimal | None, min_cost: Decimal | None, symbol: str) -> None:
    if amount <= 0:
        raise CannotPlace(f"the size rounds to zero at {symbol}'s precision")
    if min_amount is not None and amount < min_amount:
        raise CannotPlace(f"the size {amount} is under {symbol}'s minimum of {min_amount}")
    if min_cost is not None and amount * price < min_cost:
        raise CannotPlace(f"the order's value {(amount * price).quantize(Decimal('0.01'), ROUND_DOWN)} USDT is under {symbol}'s minimum of {min_cost} USDT")


def closing_action(action: Action) -> Action:
    """What an action does when it may only reduce: a reduce-only buy closes a short, a reduce-only sell a long."""
    return {
        Action.BUY: Action.CLOSE_SHORT,
        Action.LONG: Action.CLOSE_SHORT,
        Action.SELL: Action.CLOSE_LONG,
        Action.SHORT: Action.CLOSE_LONG,
    }.get(action, action)


def close_plan(action: Action, positions: dict[str, Decimal], qty: Decimal | None, percent: Decimal | None) -> OrderPlan | NothingToDo:
    """A reduce-only order that closes (part of) a position; it can never open the other side.

    `positions` maps side (long/short) to contracts held on the symbol.
    """
    if action is Action.CLOSE_LONG:
        sides = ["long"]
    elif action is Action.CLOSE_SHORT:
        sides = ["short"]
    else:
        sides = [s for s in ("long", "short") if positions.get(s)]
        if len(sides) > 1:
            raise CannotPlace("both a long and a short are open on this symbol: say close_long or close_short")
    if not sides or not positions.get(sides[0]):
        wanted = {Action.CLOSE_LONG: "long ", Action.CLOSE_SHORT: "short "}.get(action, "")
        return NothingToDo(f"no {wanted}position to close")
    side = sides[0]
    held = positions[side]
    amount = held
    if qty is not None:
        amount = min(qty, held)
    elif percent is not None:
        amount = held * percent / Decimal(100)
    return OrderPlan(side="sell" if side == "long" else "buy", amount=amount, reduce_only=True)


def flat_plans(positions: dict[str, Decimal]) -> list[OrderPlan] | NothingToDo:
    """`flat`: a reduce-only close of every side held on the symbol (both, in hedge mode)."""
    plans = [OrderPlan(side="sell" if side == "long" else "buy", amount=positions[side], reduce_only=True)
             for side in ("long", "short") if positions.get(side)]
    return plans or NothingToDo("no position to close")


def has_size(signal: SignalReceivedV1) -> bool:
    return any(size is not None for size in (signal.qty, signal.usdt, signal.percent))


def open_side(signal: SignalReceivedV1) -> str:
    return _open_side(signal.action)


def position_side(side: str, hedged: bool) -> str:
    """Which side's leverage an opening order uses: LONG or SHORT in hedge mode, BOTH in one-way mode."""
    if not hedged:
        return "BOTH"
    return "LONG" if side == "buy" else "SHORT"


def protection(signal: SignalReceivedV1, side: str, reference: Decimal) -> tuple[Decimal | None, Decimal | None]:
    """The stop-loss and take-profit trigger prices of an opening order: as given, or a percent from `reference`
    (the limit price, or the market price the order fills at). One on the wrong side would fire at once: refused."""
    long = side == "buy"

    def away(pct: Decimal, further: bool) -> Decimal:
        step = reference * pct / Decimal(100)
        return reference - step if long != further else reference + step

    stop_loss = signal.sl if signal.sl is not None else (away(signal.sl_pct, False) if signal.sl_pct is not None else None)
    take_profit = signal.tp if signal.tp is not None else (away(signal.tp_pct, True) if signal.tp_pct is not None else None)
    where = "below" if long else "above"
    if stop_loss is not None and (stop_loss <= 0 or (stop_loss >= reference if long else stop_loss <= reference)):
        raise CannotPlace(f"the stop-loss {stop_loss.normalize():f} must be {where} the price {reference.normalize():f} "
                          f"for a {'long' if long else 'short'}: it would fire at once")
    where = "above" if long else "below"
    if take_profit is not None and (take_profit <= 0 or (take_profit <= reference if long else take_profit >= reference)):
        raise CannotPlace(f"the take-profit {take_profit.normalize():f} must be {where} the price {reference.normalize():f} "
                          f"for a {'long' if long else 'short'}")
    return stop_loss, take_profit


def drifted(claimed_side: str, claimed_size: Decimal | None, long: Decimal, short: Decimal) -> bool:
    """Whether the venue's position (net of both sides) differs from the one the strategy claims after its order.

    Without a size only the side is compared: flat means nothing held, long and short the net's sign.
    """
    net = long - short
    if claimed_side == "flat":
        return net != 0
    sign = 1 if claimed_side == "long" else -1
    if claimed_size is None:
        return net * sign <= 0
    return net != sign * claimed_size
