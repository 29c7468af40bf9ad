"""The kill switch's `flatten`: cancel every open order, close every position, with trading halted throughout.

The control service writes a halted version with `flatten`; every executor replica learns it from the stream and
one of them does the work (the one that records the run first in `flatten_runs`; another takes over a run left
unfinished for FLATTEN_TAKEOVER_S). Halted comes first, so no signal opens anything while positions are closed.
Each close has a client order id derived from the version, symbol and side: a run taken over, or repeated, cannot
close twice (BingX refuses the repeated id, and the order is looked up instead). A flatten superseded by a newer
version before it started is not run: someone decided again meanwhile.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from pymongo.errors import DuplicateKeyError

from services.executor import domain
from services.executor.exchange import AlreadyPlaced, ExchangeUnavailable, OrderRejected, Position
from services.executor.handlers import ExecutorDeps
from shared.contracts import FlattenedPosition, FlattenedV1, KillSwitchChangedV1, utcnow
from shared.messaging import EVENTS_EXCHANGE

log = logging.getLogger(__name__)

FLATTEN_TAKEOVER_S = 60.0


class Superseded(Exception):
    """A newer kill-switch version came while flattening: someone decided again, so the rest is not done."""


def _check_current(deps: ExecutorDeps, state: KillSwitchChangedV1) -> None:
    current = deps.view.state
    if current is not None and current.version > state.version:
        raise Superseded(f"stopped: version {current.version} ({current.mode.value}, by {current.actor}) came meanwhile")


async def _claim(deps: ExecutorDeps, state: KillSwitchChangedV1) -> bool:
    if not deps.replica:
        raise RuntimeError("a replica without a name cannot claim a flatten")
    now = utcnow()
    try:
        await deps.db.flatten_runs.insert_one({"_id": state.version, "status": "running", "by": deps.replica, "started_at": now,
                                               "actor": state.actor, "reason": state.reason})
        return True
    except DuplicateKeyError:
        pass
    run = await deps.db.flatten_runs.find_one({"_id": state.version})
    if run is None or run["status"] != "running":
        return False  # done
    if run.get("by") == deps.replica:
        return True  # this replica's own run, tried again after a failure
    if now - run["started_at"] < timedelta(seconds=FLATTEN_TAKEOVER_S):
        return False  # under way elsewhere
    taken = await deps.db.flatten_runs.update_one({"_id": state.version, "status": "running", "started_at": run["started_at"]},
                                                  {"$set": {"by": deps.replica, "started_at": now}})
    if taken.modified_count:
        log.warning("taking over an unfinished flatten", extra={"version": state.version, "from": run.get("by")})
    return bool(taken.modified_count)


def _held(position: Position) -> FlattenedPosition:
    return FlattenedPosition(symbol=position.symbol, side=position.side, amount=position.contracts)  # type: ignore[arg-type]


async def flatten(deps: ExecutorDeps, state: KillSwitchChangedV1) -> FlattenedV1 | None:
    """Run the flatten of `state` if this replica claims it; returns what it did, or None when another does it."""
    current = deps.view.state
    if current is not None and current.version > state.version:
        log.warning("flatten not run: a newer kill-switch version came first", extra={"version": state.version, "current": current.version})
        return None
    if not await _claim(deps, state):
        return None
    log.warning("flattening: cancelling every open order and closing every position", extra={"version": state.version, "actor": state.actor})
    exchange = deps.exchange
    errors: list[str] = []
    closed: list[FlattenedPosition] = []
    cancelled: list[str] = []
    positions = await exchange.all_positions()
    try:
        # Orders first: a resting entry must not fill while its position is being closed.
        for symbol in sorted({p.symbol for p in positions} | await exchange.symbols_with_open_orders()):
            _check_current(deps, state)  # trading turned back on: leave the new orders and their protection alone
            try:
                await exchange.cancel_all_orders(symbol)
                cancelled.append(symbol)
            except (ExchangeUnavailable, OrderRejected) as error:
                errors.append(f"{symbol}: open orders not cancelled: {error}")
        for symbol in sorted({p.symbol for p in positions}):
            held = {p.side: p.contracts for p in positions if p.symbol == symbol}
            plans = domain.flat_plans(held)
            if isinstance(plans, domain.NothingToDo):
                continue
            for plan in plans:
                _check_current(deps, state)
                await _close(deps, state, symbol, plan, closed, errors)
    except Superseded as stop:
        errors.append(str(stop))
        log.warning("flatten stopped: a newer kill-switch version came", extra={"version": state.version})
    return await _report(deps, state, closed, cancelled, errors)


async def _close(deps: ExecutorDeps, state: KillSwitchChangedV1, symbol: str, plan: domain.OrderPlan,
                 closed: list[FlattenedPosition], errors: list[str]) -> None:
    """One side of one symbol, reduce-only at market, under a client order id fixed per version, symbol and side."""
    exchange = deps.exchange
    side = "long" if plan.side == "sell" else "short"
    client_id = domain.client_order_id(f"flatten-v{state.version}:{symbol}:{side}")
    try:
        try:
            placed = await exchange.create_order(symbol, plan.side, plan.amount, client_order_id=client_id, reduce_only=True)
        except AlreadyPlaced:
            placed = await exchange.find_order(symbol, client_id)
        closed.append(FlattenedPosition(symbol=symbol, side=side, amount=plan.amount,  # type: ignore[arg-type]
                                        order_id=placed.order_id if placed else None))
    except (ExchangeUnavailable, OrderRejected) as error:
        errors.append(f"{symbol} {side}: not closed: {error}")


async def _report(deps: ExecutorDeps, state: KillSwitchChangedV1, closed: list[FlattenedPosition], cancelled: list[str],
                  errors: list[str]) -> FlattenedV1:
    """What is left at the venue, recorded with what was done, and told (FlattenedV1)."""
    exchange = deps.exchange
    try:
        remaining = [_held(p) for p in await exchange.all_positions()]
        left_orders = await exchange.symbols_with_open_orders()
    except (ExchangeUnavailable, OrderRejected) as error:
        remaining, left_orders = [], set()
        errors.append(f"could not check what is left: {error}")
    if left_orders:
        errors.append(f"open orders left on {', '.join(sorted(left_orders))}")
    result = FlattenedV1(version=state.version, actor=state.actor, complete=not errors and not remaining, closed=tuple(closed),
                         cancelled_symbols=tuple(cancelled), remaining=tuple(remaining), errors=tuple(errors), finished_at=utcnow())
    await deps.db.flatten_runs.update_one({"_id": state.version},
                                          {"$set": {"status": "done", "complete": result.complete, "result": result.model_dump(mode="python")}})
    (log.warning if result.complete else log.error)(
        "flatten finished" if result.complete else "flatten incomplete: check BingX",
        extra={"version": state.version, "closed": len(closed), "remaining": len(remaining), "errors": list(errors)[:5]})
    await deps.publisher.publish(result, exchange=EVENTS_EXCHANGE, message_id=f"flatten-v{state.version}")
    return result
