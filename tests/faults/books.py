"""The books of a fault scenario: every alert the ingress answered 200 ends at the exchange exactly once, or is
recorded skipped, expired or failed with a reason; no exchange order without its alert; nothing doubled; no order
the kill switch forbade; no order for a signal older than its max lag.

The exchange's side is read from the simulator's own state (`GET /_sim/state`: every order with its client order id
and the venue's time), not from the executor's records, so the books hold even where the executor's records lie.
An exchange order is traced back to its signal by the client order id the executor derives from the signal id
(services.executor.domain.client_order_id), and a signal to its alert by the alert's unique `strategy` tag.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp

from services.executor.domain import client_order_id

PLACED = "placed"
NOT_PLACED = frozenset({"skipped", "expired", "failed", "unknown"})  # terminal, with a reason, nothing at the venue
TERMINAL = NOT_PLACED | {PLACED}
MAX_LEGS = 2  # a reverse has two legs; the scenarios send single-leg alerts, but an extra leg would still be traced
COUNTS = ("sent", "accepted", "at_exchange", "recorded_terminal", "lost", "doubled", "orphans", "misrecorded", "stale",
          "kill_switch_violations", "unsettled")


@dataclass
class Attempt:
    sent: float  # time.time() when the delivery was sent
    at: float  # and when its answer (or the failure) came
    status: int | None  # None: no HTTP answer at all (refused, reset, timed out)
    body: dict | None = None
    error: str | None = None


@dataclass
class Alert:
    """One TradingView alert: its payload (its `strategy` is `key`) and every delivery of it (a resend after a 503)."""

    key: str
    payload: dict[str, Any]
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return any(a.status == 200 for a in self.attempts)

    @property
    def answered_ids(self) -> set[str]:
        return {a.body["signal_id"] for a in self.attempts if a.status == 200 and a.body and a.body.get("signal_id")}


@dataclass(frozen=True)
class OffWindow:
    """From `start` (the executor obeys it from here) to `end` (trading on again; None: still off)."""

    mode: str  # entries_off | halted
    start: datetime
    end: datetime | None
    # An order decided just before the executor learned the change is on its way to the venue: it may land a moment
    # after `start`. Orders are held to the window from `start + order_slack_s`; arrivals from `start`.
    order_slack_s: float = 0.0

    def covers(self, moment: datetime) -> bool:
        return moment >= self.start and (self.end is None or moment < self.end)

    def covers_order(self, moment: datetime) -> bool:
        return moment >= self.start + timedelta(seconds=self.order_slack_s) and self.covers(moment)

    def forbids(self, reduce_only: bool) -> bool:
        return self.mode == "halted" or not reduce_only


def off_windows(history: list[dict], *, grace_s: float = 1.0) -> list[OffWindow]:
    """The kill switch's off windows from `control_history`. A change reaches the executor after it is written:
    each window starts `grace_s` later (DESIGN: from the change to the executor refusing, under a second)."""
    windows: list[OffWindow] = []
    current: tuple[str, datetime] | None = None
    for change in sorted(history, key=lambda d: d["version"]):
        mode, at = change["mode"], _utc(change["changed_at"])
        if current is not None and (mode == "running" or mode != current[0]):
            windows.append(OffWindow(current[0], current[1] + timedelta(seconds=grace_s), at))
            current = None
        if mode != "running" and current is None:
            current = (mode, at)
    if current is not None:
        windows.append(OffWindow(current[0], current[1] + timedelta(seconds=grace_s), None))
    return windows


async def venue_orders(sim_url: str) -> list[dict]:
    """Every order the simulated BingX holds for the stack's account (all states), as it reports them."""
    async with aiohttp.ClientSession() as session, session.get(f"{sim_url}/_sim/state") as response:
        assert response.status == 200, await response.text()
        return (await response.json())["orders"]


async def read_books(db, sim_url: str) -> tuple[list[dict], list[dict], list[dict]]:
    """The three ledgers: the executor's `signals`, the venue's orders and the kill switch's history."""
    signals = await db.signals.find({}).to_list(None)
    history = await db.control_history.find({}).to_list(None)
    return signals, await venue_orders(sim_url), history


def check_books(alerts: list[Alert], signals: list[dict], orders: list[dict], windows: list[OffWindow], *,
                stale_tolerance_s: float = 1.0, held: list[tuple[datetime, datetime]] = ()) -> dict[str, Any]:
    """The counts of COUNTS, and under `details` what each count is made of (for an assertion's message).

    Each accepted alert falls in exactly one of at_exchange (one order), doubled (more), recorded_terminal (no order,
    and a record skipped/expired/failed/unknown with a reason) and lost (anything else: no record, a record that never
    finished, or one that says placed with nothing at the venue). An order is an orphan when it traces back to no
    accepted alert. misrecorded: an alert at the exchange whose signal is not recorded placed with that order.
    stale: an order the venue carried out more than `stale_tolerance_s` (the request's way there) after its
    signal's max lag ran out. kill_switch_violations: an order for a signal that arrived at the ingress while the
    kill switch forbade it, or one the venue carried out while it forbade it, unless the venue did so while requests
    sent earlier were being held up on their way (`held`: when a scenario's held-up requests land; the kill switch
    cannot recall a request already sent). unsettled: a record not finished.
    """
    by_key = {alert.key: alert for alert in alerts}
    documents = {d["_id"]: d for d in signals}
    alert_of: dict[str, Alert] = {}
    for document in signals:
        alert = by_key.get((document.get("signal") or {}).get("strategy"))
        if alert is not None:
            alert_of[document["_id"]] = alert
    for alert in alerts:
        for signal_id in alert.answered_ids:
            alert_of.setdefault(signal_id, alert)
    cid_to_signal = {client_order_id(signal_id, leg): signal_id for signal_id in {*documents, *alert_of} for leg in range(MAX_LEGS)}

    details: dict[str, list] = {name: [] for name in COUNTS if name not in ("sent", "accepted")}
    orders_of: dict[str, list[tuple[dict, str]]] = {}
    for order in orders:
        cid = (order.get("clientOrderId") or "").lower()
        signal_id = cid_to_signal.get(cid)
        alert = alert_of.get(signal_id) if signal_id is not None else None
        if alert is None or not alert.accepted:
            details["orphans"].append({"orderId": order["orderId"], "clientOrderId": cid, "signal_id": signal_id,
                                       "alert": alert.key if alert else None})
            continue
        orders_of.setdefault(alert.key, []).append((order, signal_id))
        document = documents.get(signal_id)
        at = datetime.fromtimestamp(order["time"] / 1000, tz=timezone.utc)
        reduce_only = bool(order.get("reduceOnly"))
        arrived = _utc(document["received_at"]) if document else None
        for window in windows:
            if not window.forbids(reduce_only):
                continue
            landed_while_off = window.covers_order(at) and not any(start <= at <= end for start, end in held)
            if landed_while_off or (arrived is not None and window.covers(arrived)):
                details["kill_switch_violations"].append({
                    "signal_id": signal_id, "order_at": at.isoformat(), "arrived": arrived.isoformat() if arrived else None,
                    "window": [window.mode, window.start.isoformat(), window.end.isoformat() if window.end else None]})
        if document is not None:
            signal = document.get("signal") or {}
            born = min(filter(None, (arrived, _utc(signal["alert_time"]) if signal.get("alert_time") else None)))
            late = (at - born).total_seconds() - float(signal.get("max_lag_s") or 60)
            if late > stale_tolerance_s:
                details["stale"].append({"signal_id": signal_id, "late_s": round(late, 3)})

    for alert in alerts:
        if not alert.accepted:
            continue
        mine = [d for signal_id, d in documents.items() if alert_of.get(signal_id) is alert]
        details["unsettled"].extend({"alert": alert.key, "signal_id": d["_id"], "status": d["status"]}
                                    for d in mine if d["status"] not in TERMINAL)
        placed = orders_of.get(alert.key, [])
        if len(placed) > 1:
            details["doubled"].append({"alert": alert.key, "orders": [(o["orderId"], s) for o, s in placed]})
        elif len(placed) == 1:
            details["at_exchange"].append(alert.key)
            order, signal_id = placed[0]
            document = documents.get(signal_id)
            if document is None or document["status"] != PLACED or str(order["orderId"]) not in {
                    str(i) for i in document.get("order_ids") or [document.get("order_id")]}:
                details["misrecorded"].append({"alert": alert.key, "signal_id": signal_id, "orderId": order["orderId"],
                                               "status": document["status"] if document else None,
                                               "reason": document.get("reason") if document else None})
        elif any(d["status"] in NOT_PLACED and d.get("reason") for d in mine):
            details["recorded_terminal"].append(alert.key)
        else:
            details["lost"].append({"alert": alert.key, "records": [(d["_id"], d["status"]) for d in mine],
                                    "answers": [(a.status, a.error) for a in alert.attempts]})

    outcomes: dict[str, int] = {}
    for document in documents.values():
        if alert_of.get(document["_id"]) is not None:
            outcomes[document["status"]] = outcomes.get(document["status"], 0) + 1
    result: dict[str, Any] = {"sent": len(alerts), "accepted": sum(a.accepted for a in alerts)}
    result.update({name: len(items) for name, items in details.items()})
    result["outcomes"] = dict(sorted(outcomes.items()))
    result["details"] = details
    return result


def assert_clean(books: dict[str, Any]) -> None:
    """Nothing lost, doubled, orphaned, misrecorded, stale, unsettled or against the kill switch; every accepted
    alert accounted for."""
    bad = {name: books["details"][name] for name in ("lost", "doubled", "orphans", "misrecorded", "stale",
                                                     "kill_switch_violations", "unsettled") if books[name]}
    assert not bad, f"the books do not balance: {json.dumps(bad, default=str)[:4000]}"
    assert books["at_exchange"] + books["recorded_terminal"] == books["accepted"], summary(books)


def summary(books: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in books.items() if k != "details"}


def report(scenario: str, books: dict[str, Any], seconds: float, **extra: Any) -> None:
    """One JSON line per scenario in the file FAULT_REPORT names (for the README's table), when it is set."""
    path = os.environ.get("FAULT_REPORT")
    if not path:
        return
    line = {"scenario": scenario, **{k: books[k] for k in COUNTS}, "outcomes": books["outcomes"],
            "seconds": round(seconds, 1), **extra}
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(line, sort_keys=False) + "\n")


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)
