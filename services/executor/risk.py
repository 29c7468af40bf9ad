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
    update of one document, so no two plans get the same one. The signal (`holder`) keeps its slot through its
    retries; an order the venue refuses after it took one still counts. Across every `account` label, which all
    trade with the one API key.
    """
    limit = limits.max_orders_per_minute
    if not limit:
        return
    slots = db[ORDER_SLOTS]
    mine = {"_id": {"$lt": limit}, "holder": holder, "until": {"$gt": now}}
    if await slots.find_one(mine, {"_id": 1}) is not None:
        return  # an earlier attempt at this signal took it
    taken = {"holder": holder, "until": now + timedelta(minutes=1), "taken_at": now}
    for _ in range(limit + 1):  # each round takes a slot, or finds the one it would add added by someone else
        if await slots.find_one_and_update({"_id": {"$lt": limit}, "until": {"$lte": now}}, {"$set": taken}) is not None:
            return
        count = await slots.count_documents({"_id": {"$lt": limit}})  # the slots are numbered 0, 1, ... in order
        if count >= limit:
            break
        try:
            await slots.insert_one({"_id": count, **taken})
            return
        except DuplicateKeyError:
            continue
    raise CannotPlace(f"{limit} opening order{'s' if limit > 1 else ''} in the last minute: the limit is {limit} "
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
