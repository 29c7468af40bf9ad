"""Risk limits, checked before every opening order: a breach refuses the order with the limit it broke.

Closing orders are never refused by a limit: they only take risk away.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.executor.domain import CannotPlace
from shared.contracts import RiskLimitsV1


class LossLimitBreached(CannotPlace):
    """The day's loss reached its limit: this order is refused and entries are turned off for everyone."""


SETTING_NAMES = {"max_leverage": "RISK_MAX_LEVERAGE", "max_notional_usdt": "RISK_MAX_NOTIONAL_USDT",
                 "max_orders_per_minute": "RISK_MAX_ORDERS_PER_MINUTE", "daily_loss_limit_usdt": "RISK_DAILY_LOSS_LIMIT_USDT"}


@dataclass(frozen=True)
class RiskLimits:
    max_leverage: int = 0  # 0: no limit, for each of these
    max_notional_usdt: Decimal = Decimal(0)
    max_orders_per_minute: int = 0
    daily_loss_limit_usdt: Decimal = Decimal(0)
    overridden: frozenset[str] = frozenset()  # the limits set through the control service, not by RISK_* settings

    def source(self, name: str) -> str:
        """Where a limit comes from, for the reason a refused order gives."""
        return "set through the control service" if name in self.overridden else SETTING_NAMES[name]

    def over(self, overrides: RiskLimitsV1 | None) -> RiskLimits:
        """These settings with the control service's limits over them."""
        if overrides is None:
            return self
        given = {name: value for name, value in overrides.model_dump().items() if value is not None and name in SETTING_NAMES}
        return replace(self, **given, overridden=frozenset(given))


def check_leverage(limits: RiskLimits, leverage: int) -> None:
    if limits.max_leverage and leverage > limits.max_leverage:
        raise CannotPlace(f"leverage {leverage}x is over the limit of {limits.max_leverage}x ({limits.source('max_leverage')})")


def check_notional(limits: RiskLimits, *, held: Decimal, amount: Decimal, price: Decimal, symbol: str) -> None:
    """The position's value on the side this order opens, after the order, at the order's price."""
    if not limits.max_notional_usdt:
        return
    after = (held + amount) * price
    if after > limits.max_notional_usdt:
        raise CannotPlace(f"{symbol} would hold {after:.2f} USDT on this side, over the limit of "
                          f"{limits.max_notional_usdt} USDT ({limits.source('max_notional_usdt')})")


ORDER_SLOTS = "order_slots"


async def take_order_slot(limits: RiskLimits, db: AsyncDatabase, holder: str, now: datetime) -> None:
    """An opening order about to be sent takes one of `max_orders_per_minute` slots for a minute, or is refused.

    Slots, not a count of the orders placed: signals of several symbols are planned at once (and on every executor
    replica), and each would count the same orders before any of theirs was recorded. A slot is taken by one atomic
    update of one document (or the insert of a new slot number, unique), so no two plans get the same one. The
    signal (`holder`) keeps its slot when it is planned again, for a minute from then: it may be sent only now. An
    order BingX refuses after its plan took a slot still counts. Across every `account` label, which all trade with
    the one API key. Slots are kept, never deleted (a free one is taken again); compared with each replica's clock.
    """
    limit = limits.max_orders_per_minute
    if not limit:
        return
    slots = db[ORDER_SLOTS]
    until = now + timedelta(minutes=1)
    if await slots.find_one_and_update({"holder": holder, "until": {"$gt": now}}, {"$set": {"until": until}},
                                       projection={"_id": 1}) is not None:
        return  # an earlier plan of this signal took it
    # Slots numbered from a higher limit, before it was lowered, still count until they are free.
    if await slots.count_documents({"until": {"$gt": now}}, limit=limit) >= limit:
        raise _over_rate(limits)
    taken = {"holder": holder, "until": until, "taken_at": now}
    for _ in range(limit + 1):  # each round takes a slot, or finds the one it would add added by someone else
        if await slots.find_one_and_update({"_id": {"$lt": limit}, "until": {"$lte": now}}, {"$set": taken},
                                           projection={"_id": 1}) is not None:
            return
        numbers = {document["_id"] async for document in slots.find({"_id": {"$lt": limit}}, {"_id": 1})}
        missing = next((n for n in range(limit) if n not in numbers), None)
        if missing is None:
            break
        try:
            await slots.insert_one({"_id": missing, **taken})
            return
        except DuplicateKeyError:
            continue
    raise _over_rate(limits)


async def release_order_slot(db: AsyncDatabase, holder: str, taken_since: datetime) -> None:
    """Free the slot `holder` took at `taken_since` or later: the plan that took it sends nothing (its signal was
    handled before). A slot taken earlier, for an order sent, keeps counting."""
    await db[ORDER_SLOTS].update_many({"holder": holder, "taken_at": {"$gte": taken_since}},
                                      {"$set": {"until": taken_since}})


def _over_rate(limits: RiskLimits) -> CannotPlace:
    limit = limits.max_orders_per_minute
    return CannotPlace(f"{limit} opening order{'s' if limit > 1 else ''} in the last minute: the limit is {limit} "
                       f"({limits.source('max_orders_per_minute')})")


async def check_daily_loss(limits: RiskLimits, db: AsyncDatabase, equity: Decimal, now: datetime) -> None:
    """The day (UTC) starts at the equity its first opening order saw; a loss since then at the limit stops entries."""
    if not limits.daily_loss_limit_usdt:
        return
    day = now.date().isoformat()  # one equity, one day, whatever `account` label the alert carries
    await db.risk_days.update_one({"_id": day}, {"$setOnInsert": {"day": day, "start_equity": equity, "at": now}}, upsert=True)
    document = await db.risk_days.find_one({"_id": day})
    assert document is not None
    loss = document["start_equity"] - equity
    if loss >= limits.daily_loss_limit_usdt:
        raise LossLimitBreached(f"today's loss of {loss:.2f} USDT reached the limit of {limits.daily_loss_limit_usdt} USDT "
                                f"({limits.source('daily_loss_limit_usdt')}): no new entries today")
