"""What happens to each signal: claim it once, obey the kill switch, refuse it if stale, place it at most once.

The signal's document in `signals` is the state machine:
  received -> submitting -> placed | failed        (an order was attempted)
  received -> skipped | expired | failed           (it never reached the venue)
`submitting` is written before the order is sent, so after a crash or a timeout the venue is asked for the
client order id before anything is sent again; and while a request sent earlier may still land at the venue
(REQUEST_MAY_LAND_S), the signal is not recorded skipped or expired on the strength of that answer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pymongo import DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.executor import domain, risk
from services.executor.domain import CannotPlace, NothingToDo, OrderPlan
from services.executor.risk import LossLimitBreached, RiskLimits
from services.executor.exchange import (
    VENUE_ANSWERS,
    AlreadyPlaced,
    BingxExchange,
    ExchangeAuthFailed,
    ExchangeUnavailable,
    OrderRejected,
    PlacedOrder,
    VenueAnswers,
)
from shared.contracts import (
    Action,
    KillSwitchChangedV1,
    KillSwitchMode,
    KillSwitchTripV1,
    Message,
    OrderType,
    PositionDriftV1,
    OrderFailedV1,
    OrderFilledV1,
    OrderPlacedV1,
    SignalExpiredV1,
    SignalReceivedV1,
    SignalSkippedV1,
    decode,
    encode,
    KILL_SWITCH_STRICTNESS,
    stricter,
    utcnow,
)
from shared.errors import TemporaryError
from shared.killswitch import KillSwitchView, refused_since
from shared.messaging import EVENTS_EXCHANGE, PublishFailed, Publisher
from shared.mongo import GroupedInserts
from shared.observability import LATENCY_BUCKETS
from shared.runtime import raise_if_cancelling

log = logging.getLogger(__name__)

RECEIVED, SUBMITTING = "received", "submitting"
PLACED, FAILED, SKIPPED, EXPIRED = "placed", "failed", "skipped", "expired"
UNKNOWN = "unknown"  # an order may or may not be at the venue: an operator must look
TERMINAL = frozenset({PLACED, FAILED, SKIPPED, EXPIRED, UNKNOWN})


class KillSwitchUnknown(TemporaryError):
    pass


# BingX carries a signed request out as long as it arrives within its recvWindow of the request's timestamp: 5 s, as
# ccxt sends none (bingx-ccxt-wire.md §2). An order request held up on the way may so land after the executor gave up
# on it and looked it up in vain; a second more for the difference between our clock and BingX's.
REQUEST_MAY_LAND_S = 6.0


class EarlierRequestMayLand(TemporaryError):
    """An order request of an earlier attempt, not found at the venue, may still be carried out: the signal is not
    recorded skipped or expired before that can no longer happen (it is looked up again then)."""


# What tvtb_order_failures_total{reason} says: ccxt's exception class for a refusal at the venue, or our own kind.
FAILURE_KINDS = ("AuthenticationFailed", "PermissionDenied", "InsufficientFunds", "InvalidOrder", "BadRequest",
                 "BadSymbol", "ExchangeError", "RiskLimit", "CannotPlace", "OutcomeUnknown")


class ExecutorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.signals = Counter("tvtb_signals_total", "Signals handled, by outcome", ["outcome"], registry=registry)
        self.orders = Counter("tvtb_orders_total", "Orders by status", ["status"], registry=registry)
        self.failures = Counter("tvtb_order_failures_total", "Order failures by reason type", ["reason"], registry=registry)
        self.signal_age = Histogram(
            "tvtb_signal_age_seconds", "Age of a signal when the executor decides on it", buckets=LATENCY_BUCKETS + (30, 60, 120, 300), registry=registry
        )
        self.signal_to_order = Histogram(
            "tvtb_signal_to_order_seconds", "From the ingress accepting a signal to the venue confirming its order", buckets=LATENCY_BUCKETS, registry=registry
        )
        self.shards = Gauge("tvtb_executor_shards_owned", "Shards of the signals this replica consumes", registry=registry)
        self.drift = Counter("tvtb_position_drift_total", "Signals after which the venue's position differed from the strategy's", registry=registry)
        self.alerts = Counter("tvtb_alerts_total", "Alerts raised for an operator, by severity and kind", ["severity", "kind"], registry=registry)
        self.mode = Gauge("tvtb_killswitch_mode", "Kill-switch mode this service believes (1 for the current one)", ["mode"], registry=registry)
        # Exported at 0 from the start: a counter's series that first appears at 1 is invisible to increase(), and
        # the SEV1 alert on a refused key would then miss the one trip that matters.
        for severity in ("SEV1", "SEV2"):
            self.alerts.labels(severity, "kill_switch_tripped")
        for reason in FAILURE_KINDS:
            self.failures.labels(reason)

    def show_shards(self, owned: set[int]) -> None:
        self.shards.set(len(owned))

    def show_mode(self, mode: KillSwitchMode | None) -> None:
        for candidate in KillSwitchMode:
            self.mode.labels(candidate.value).set(1 if candidate is mode else 0)


@dataclass
class Breaker:
    """The executor's own brake. A trip (a revoked key, the venue failing again and again, the day's loss) holds
    from the moment the executor asks for the kill switch, before the control service has answered or even when it
    is away, until a kill-switch version newer than the one in force at the trip is learned: someone decided since."""

    max_consecutive_failures: int = 5
    consecutive_failures: int = 0
    last_failure_at: float = float("-inf")  # time.monotonic() when the last failure counted was seen
    trips: list[tuple[KillSwitchTripV1, int]] = dataclasses.field(default_factory=list)  # (trip, version then)

    def hold(self, trip: KillSwitchTripV1, under_version: int) -> None:
        if all(held.trip_id != trip.trip_id for held, _ in self.trips):
            self.trips.append((trip, under_version))

    @property
    def tripped(self) -> KillSwitchTripV1 | None:
        """The strictest trip still held."""
        held = [trip for trip, _ in self.trips]
        return max(held, key=lambda t: KILL_SWITCH_STRICTNESS[t.mode]) if held else None

    def failed(self, attempt_started: float) -> int | None:
        """The venue failed an attempt begun at `attempt_started`: the failures in a row now, or None when it does not
        count. Attempts under way together (the symbols of a shard run side by side) that one outage fails count
        once, as one attempt would: in a row means each began after the one before had failed."""
        if attempt_started < self.last_failure_at:
            return None
        self.last_failure_at = time.monotonic()
        self.consecutive_failures += 1
        return self.consecutive_failures

    def succeeded(self, answered: float) -> None:
        """An attempt went through; the failures in a row end if BingX answered one of its requests (`answered`:
        when the latest answered one was sent) sent after the last failure counted. An attempt that asked nothing of
        BingX (skipped, expired, refused by a limit) says nothing of it, nor does what other work asked meanwhile."""
        if answered >= self.last_failure_at:
            self.consecutive_failures = 0

    def mode(self, view: KillSwitchView) -> KillSwitchMode | None:
        """The mode to obey: the kill switch's, made stricter by the trips nobody has answered yet."""
        mode = view.mode
        if mode is None:
            return None
        if view.state is not None:
            self.trips = [(trip, version) for trip, version in self.trips if version >= view.state.version]
        for trip, _ in self.trips:
            mode = stricter(mode, trip.mode)
        return mode


@dataclass
class ExecutorDeps:
    db: AsyncDatabase
    publisher: Publisher
    exchange: BingxExchange
    view: KillSwitchView
    metrics: ExecutorMetrics
    breaker: Breaker = dataclasses.field(default_factory=Breaker)
    risk: RiskLimits = dataclasses.field(default_factory=RiskLimits)
    # Per-symbol defaults for what an entry's alert does not say (ExecutorSettings.symbol_leverage, ...).
    default_leverage: Callable[[str], int | None] = lambda symbol: None
    default_margin_mode: Callable[[str], str | None] = lambda symbol: None
    replica: str = ""  # which executor replica this is (services/executor/shards.py)
    # The claims and orders of the signals handled at once go to the database together.
    inserts: GroupedInserts = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.inserts = GroupedInserts(self.db)


async def handle_signal(signal: SignalReceivedV1, deps: ExecutorDeps) -> None:
    answers = VenueAnswers()
    token = VENUE_ANSWERS.set(answers)  # what BingX answers this attempt (a prefetch started in it too): the breaker
    try:
        await _handle(signal, deps, answers)
    finally:
        VENUE_ANSWERS.reset(token)


async def _handle(signal: SignalReceivedV1, deps: ExecutorDeps, answers: VenueAnswers) -> None:
    started = time.monotonic()  # for the breaker: which venue failures are in a row
    planned_at = _as_kept(utcnow())  # an order slot planning ahead takes below is taken at this time or later
    if _will_need_price(signal, deps):
        deps.exchange.prefetch_price(signal.symbol)  # answered while the claim is written
    document = None
    try:
        planned = await _claim_planned(deps, signal)
    except ExchangeUnavailable:
        # Recorded as received while the venue is away, as the usual way records it. A delivery of a signal handled
        # already needs no venue: it is answered below rather than made to wait (and counted) with the rest.
        document = await _claim(deps, signal)
        if document["status"] not in TERMINAL:
            await _venue_unavailable(deps, signal, started)
            raise
        planned = None
    if planned is not None:
        document, legs = planned
        await _guarded(deps, signal, started, answers,
                       _send_legs(signal, document, legs, deps, looked_at=document["claimed_at"], stamped=True))
        return
    if document is None:
        document = await _claim(deps, signal)
    conflict = document.get("fingerprint") not in (None, _fingerprint(signal))
    status = document["status"]
    if status in TERMINAL:
        # Nothing more is sent under this id: a slot planning ahead took is given back (one taken before, which its
        # order went out under, keeps counting). Not while another alert under the id is under way: it may hold it.
        await risk.release_order_slot(deps.db, signal.signal_id, planned_at)
    if conflict:
        await _report_conflict(deps, signal, document)
        return
    if status in TERMINAL:
        log.info("signal already handled; not executed again", extra={"status": status})
        # Published again: the first try may not have reached the broker. Its fixed message id keeps it told once.
        await _publish_outcome(deps, document)
        return
    if status == RECEIVED and signal.resend_key is not None:
        first = await _earlier_delivery(deps, signal, document)
        if first is not None:
            reason = f"a resend of alert {first['_id']}, which was already received: not executed twice"
            await _finish(deps, signal, SKIPPED, SignalSkippedV1(
                signal_id=signal.signal_id, account=signal.account, symbol=signal.symbol, action=signal.action,
                reason=reason, mode=deps.view.mode, skipped_at=utcnow(),
            ), reason=reason, resend_of=first["_id"])
            return
    await _guarded(deps, signal, started, answers, _execute(signal, document, deps))


async def _guarded(deps: ExecutorDeps, signal: SignalReceivedV1, started: float, answers: VenueAnswers,
                   attempt: Awaitable[None]) -> None:
    """Run an attempt at the signal; the venue's refusals and outages end as the safety rules say."""
    try:
        await attempt
    except OrderRejected as error:
        # Refused for good (a revoked key, a bad request) wherever it happened: recorded and reported, never dropped.
        deps.exchange.forget_settings(signal.symbol)
        if isinstance(error, ExchangeAuthFailed):
            await _trip(deps, KillSwitchMode.HALTED, "SEV1", signal.signal_id,
                        f"BingX refused the API key ({error.reason}): it may be revoked or leaked; check it before trading again")
        await _fail(deps, signal, error.reason, error.error_type)
    except ExchangeUnavailable:
        await _venue_unavailable(deps, signal, started)
        raise  # tried again after a backoff (in place, holding its symbol's turn: shared.messaging.LaneConsumer)
    else:
        deps.breaker.succeeded(answers.latest)


async def _venue_unavailable(deps: ExecutorDeps, signal: SignalReceivedV1, started: float) -> None:
    failures = deps.breaker.failed(started)
    if failures is not None and failures >= deps.breaker.max_consecutive_failures:
        deps.breaker.consecutive_failures = 0  # N more in a row trip it again, should someone turn it back on
        await _trip(deps, KillSwitchMode.ENTRIES_OFF, "SEV2", signal.signal_id,
                    f"BingX failed {failures} times in a row; entries are off until someone looks")


async def _refusal(deps: ExecutorDeps, signal: SignalReceivedV1, mode: KillSwitchMode) -> tuple[str | None, KillSwitchMode]:
    """Why the kill switch refuses the signal, and the mode that does: the mode now, or, when the switch changed
    while the signal waited, one in force since it arrived that no forced turn-on lifted (killswitch.refused_since)."""
    refusal = domain.kill_switch_refusal(mode, signal.action, signal.reduce_only)
    if refusal is not None:
        return refusal, mode
    state = deps.view.state
    if state is None or state.changed_at <= signal.received_at:
        return None, mode  # nothing changed while it waited
    # Judged by the record, not by what this replica saw: it may have started, or lost the stream, since.
    versions = await _versions_since(deps.db, signal.received_at)
    earlier = refused_since(versions, signal.received_at,
                            lambda then: domain.kill_switch_refusal(then, signal.action, signal.reduce_only) is not None)
    if earlier is None:
        return None, mode
    refusal = domain.kill_switch_refusal(earlier.mode, signal.action, signal.reduce_only)
    return (f"{refusal} while it waited (kill-switch version {earlier.version}); trading turned back on since runs only "
            "the signals that came after, unless turned on with force"), earlier.mode


async def _versions_since(db: AsyncDatabase, at: datetime, limit: int = 1000) -> list[KillSwitchChangedV1]:
    """The kill switch's versions from the one in force at `at` on, oldest first, from `control_history` (which the
    control service writes before it publishes a version)."""
    versions = []
    async for document in db.control_history.find({}, {"_id": 0}, sort=[("version", DESCENDING)], limit=limit):
        versions.append(KillSwitchChangedV1.model_validate(document))
        if document["changed_at"] <= at:
            break
    return versions[::-1]


def _will_need_price(signal: SignalReceivedV1, deps: ExecutorDeps) -> bool:
    """A market entry the kill switch lets through, not stale: its plan will ask the venue for the price."""
    if not signal.action.opens or signal.reduce_only or signal.order_type is not OrderType.MARKET:
        return False
    if domain.kill_switch_refusal(deps.breaker.mode(deps.view), signal.action, signal.reduce_only) is not None:
        return False
    return domain.age_seconds(signal, utcnow()) <= signal.max_lag_s


async def follow_resting_orders(deps: ExecutorDeps) -> int:
    """Limit orders recorded open: once one is no longer open at the venue, record how it ended and tell a fill.

    Every replica may look; the record changes once (from `open`), and only the replica that changed it tells.
    Returns how many orders ended.
    """
    resting = await deps.db.orders.find({"type": "limit", "status": "open"}).to_list(None)
    ended = 0
    for symbol in sorted({order["symbol"] for order in resting}):
        still_open = await deps.exchange.open_order_ids(symbol)
        for order in (o for o in resting if o["symbol"] == symbol and o["order_id"] not in still_open):
            venue = await deps.exchange.fetch_order(order["order_id"], symbol)
            status = venue.get("status") or "closed"
            if status == "open":
                continue
            filled = Decimal(str(venue.get("filled") or 0))
            average = Decimal(str(venue["average"])) if venue.get("average") else None
            now = utcnow()
            changed = await deps.db.orders.update_one(
                {"_id": order["_id"], "status": "open"},
                {"$set": {"status": status, "filled": filled, "average": average, "ended_at": now}})
            if not changed.modified_count:
                continue  # another replica recorded it first
            ended += 1
            if filled > 0:
                event = OrderFilledV1(signal_id=order["signal_id"], account=order["account"], symbol=symbol, side=order["side"],
                                      amount=order["amount"], filled=filled, average=average, order_id=order["order_id"],
                                      client_order_id=order["client_order_id"], status=status, filled_at=now)
                deps.metrics.orders.labels("filled").inc()
                await deps.publisher.publish(event, exchange=EVENTS_EXCHANGE, message_id=f"{order['client_order_id']}:filled")
    return ended


ACCOUNT_SNAPSHOT_ID = "bingx"


async def snapshot_account(deps: ExecutorDeps) -> bool:
    """Keep the account's positions and balance in `account_snapshot` for the control service's /status,
    /positions and /balance, which hold no BingX key: the answer says how old it is. A venue that does not answer
    is recorded as unreachable, with the reason, keeping the last good figures. Returns whether the venue answered."""
    now = utcnow()
    try:
        positions = await deps.exchange.all_positions()
        balance = await deps.exchange.balance()
    except (ExchangeUnavailable, OrderRejected) as error:
        await deps.db.account_snapshot.update_one(
            {"_id": ACCOUNT_SNAPSHOT_ID},
            {"$set": {"reachable": False, "error": str(error)[:300], "checked_at": now, "by": deps.replica}}, upsert=True)
        return False
    await deps.db.account_snapshot.update_one({"_id": ACCOUNT_SNAPSHOT_ID}, {"$set": {
        "reachable": True, "error": None, "checked_at": now, "at": now, "by": deps.replica,
        "balance": {"free": balance.free, "equity": balance.equity},
        "positions": [{"symbol": p.symbol, "side": p.side, "contracts": p.contracts, "entry_price": p.entry_price} for p in positions],
    }}, upsert=True)
    return True


async def cancel_resting_entries(deps: ExecutorDeps, mode: KillSwitchMode) -> int:
    """Limit entries still resting at the venue must not fill once entries are off or trading is halted: cancel
    them. Closing orders and the stop-losses and take-profits that protect positions stay. Returns how many."""
    resting = await deps.db.orders.find({"type": "limit", "reduce_only": False, "status": "open"}).to_list(None)
    cancelled = 0
    for symbol in sorted({order["symbol"] for order in resting}):
        still_open = await deps.exchange.open_order_ids(symbol)
        for order in (o for o in resting if o["symbol"] == symbol and o["order_id"] in still_open):
            await deps.exchange.cancel_order(order["order_id"], symbol)
            cancelled += 1
        # How each ended (cancelled, or filled just before) is recorded and told by follow_resting_orders.
    if cancelled:
        await follow_resting_orders(deps)
        log.warning("resting entries cancelled: the kill switch stopped entries", extra={"mode": mode.value, "count": cancelled})
    return cancelled


async def _trip(deps: ExecutorDeps, mode: KillSwitchMode, severity: str, signal_id: str, reason: str) -> None:
    """Stop trading here at once, and ask the control service to make it the kill switch's state for everyone.

    The trip is written to `executor_trips` first: a restarted replica takes it up again until someone changes the
    kill switch after it, and `send_pending_trips` keeps sending it while the broker does not take it.
    """
    breaker = deps.breaker
    trip = KillSwitchTripV1(trip_id=f"executor:{signal_id}:{mode.value}:{uuid.uuid4().hex[:12]}", mode=mode, reason=reason, actor="executor",
                            severity=severity, signal_id=signal_id, tripped_at=utcnow())  # type: ignore[arg-type]
    under_version = deps.view.state.version if deps.view.state is not None else 0
    breaker.hold(trip, under_version)
    deps.metrics.alerts.labels(severity, "kill_switch_tripped").inc()
    log.error("kill switch tripped by the executor", extra={"mode": mode.value, "severity": severity, "reason": reason})
    try:
        await deps.db.executor_trips.insert_one({"_id": trip.trip_id, "trip": encode(trip).decode(), "under_version": under_version,
                                                 "tripped_at": trip.tripped_at, "sent": False})
    except Exception:  # this replica is stopped all the same; the log, the metric and the publish below still go
        raise_if_cancelling()
        log.error("the kill-switch trip could not be stored", exc_info=True)
    await _send_trip(deps, trip)


async def _send_trip(deps: ExecutorDeps, trip: KillSwitchTripV1) -> bool:
    try:
        await deps.publisher.publish(trip, exchange=EVENTS_EXCHANGE, message_id=trip.trip_id)
    except PublishFailed:
        log.error("the kill-switch trip could not be sent to the control service yet", exc_info=True)
        return False
    await deps.db.executor_trips.update_one({"_id": trip.trip_id}, {"$set": {"sent": True}})
    return True


async def send_pending_trips(deps: ExecutorDeps) -> int:
    """Trips the broker did not take when they happened, sent again (the control service applies each once)."""
    sent = 0
    async for document in deps.db.executor_trips.find({"sent": False}).sort("tripped_at", 1):
        if await _send_trip(deps, decode(KillSwitchTripV1.TYPE, document["trip"].encode())):  # type: ignore[arg-type]
            sent += 1
    return sent


async def resume_trips(deps: ExecutorDeps) -> None:
    """At start: the trips nobody has answered yet hold this replica too (the breaker lets go of each once a newer
    kill-switch version is learned)."""
    async for document in deps.db.executor_trips.find({}).sort("tripped_at", -1).limit(20):
        deps.breaker.hold(decode(KillSwitchTripV1.TYPE, document["trip"].encode()), document["under_version"])  # type: ignore[arg-type]


async def _execute(signal: SignalReceivedV1, document: dict, deps: ExecutorDeps) -> None:
    legs: list[dict] | None = None
    looked_at = utcnow()  # the venue's answers below say nothing of requests landing after this
    if document["status"] == SUBMITTING:
        legs = _stored_legs(document, signal)
        # A previous attempt may have reached the venue: ask for every leg not yet recorded, before anything else.
        for index, leg in enumerate(legs):
            if leg.get("order_id"):
                continue
            try:
                found = await deps.exchange.find_order(signal.symbol, leg["client_order_id"])
            except ExchangeUnavailable:
                if not domain.is_stale(signal, utcnow()):
                    raise
                await _fail(deps, signal, f"the venue could not be asked whether order {leg['client_order_id']} was placed; "
                            "check BingX before trading this symbol again", "OutcomeUnknown", status=UNKNOWN)
                return
            if found is None:
                break  # legs go out in order: this one and those after it never reached the venue
            log.warning("order found at the venue after an interrupted attempt", extra={"order_id": found.order_id})
            await _record_leg(deps, signal, legs, index, found)
        if all(leg.get("order_id") for leg in legs):
            await _finish_placed(deps, signal, legs)
            return
        if any("side" not in leg for leg in legs):
            legs = None  # written before legs were kept, and not at the venue: planned again, under the same client id

    mode = deps.breaker.mode(deps.view)
    if mode is None:
        # The link to the control stream was lost: wait (the message goes back) rather than guess or skip.
        raise KillSwitchUnknown("the kill-switch state is not known at the moment")
    now = utcnow()
    refusal, refused_by = await _refusal(deps, signal, mode)
    if refusal is not None:
        _unless_earlier_request_may_land(document, legs, looked_at, refusal)
        if deps.breaker.tripped is not None and refused_by is mode and mode is not deps.view.mode:
            refusal = f"{refusal} (tripped by the executor: {deps.breaker.tripped.reason})"
        if legs and legs[0].get("order_id"):
            await _finish_placed(deps, signal, legs, stopped=refusal)
            return
        await _finish(deps, signal, SKIPPED, SignalSkippedV1(
            signal_id=signal.signal_id, account=signal.account, symbol=signal.symbol, action=signal.action,
            reason=refusal, mode=refused_by, skipped_at=now,
        ), reason=refusal, mode=refused_by.value)
        return

    age = domain.age_seconds(signal, now)
    deps.metrics.signal_age.observe(max(age, 0.0))
    if age > signal.max_lag_s:
        reason = f"older than its max lag ({age:.1f}s > {signal.max_lag_s:.0f}s); parked for replay"
        _unless_earlier_request_may_land(document, legs, looked_at, reason)
        if legs and legs[0].get("order_id"):
            await _finish_placed(deps, signal, legs, stopped=reason)
            return
        await _finish(deps, signal, EXPIRED, SignalExpiredV1(
            signal_id=signal.signal_id, account=signal.account, symbol=signal.symbol, action=signal.action,
            age_s=round(age, 3), max_lag_s=signal.max_lag_s, expired_at=now,
        ), reason=reason)
        return

    if legs is None:
        if signal.action is Action.FLAT:
            await deps.exchange.cancel_all_orders(signal.symbol)  # resting entries and protection go first
        try:
            plans = await _plan(deps, signal)
        except LossLimitBreached as error:
            await _trip(deps, KillSwitchMode.ENTRIES_OFF, "SEV2", signal.signal_id, str(error))
            await _fail(deps, signal, str(error), "RiskLimit")
            return
        except CannotPlace as error:
            await _fail(deps, signal, str(error), "CannotPlace")
            return
        if isinstance(plans, NothingToDo):
            reason = plans.reason + ("; its open orders were cancelled" if signal.action is Action.FLAT else "")
            await _finish(deps, signal, SKIPPED, SignalSkippedV1(
                signal_id=signal.signal_id, account=signal.account, symbol=signal.symbol, action=signal.action,
                reason=reason, mode=mode, skipped_at=now,
            ), reason=reason)
            return
        # Every leg and its client order id is written before the first is sent: after a crash, each is looked up.
        legs = [{**dataclasses.asdict(plan), "client_order_id": domain.client_order_id(signal.signal_id, n), "order_id": None}
                for n, plan in enumerate(plans)]
        written = utcnow()
        await deps.db.signals.update_one(
            {"_id": signal.signal_id},
            {"$set": {"status": SUBMITTING, "client_order_id": legs[0]["client_order_id"], "legs": legs, "updated_at": written,
                      "sent_at": written},
             "$inc": {"attempts": 1}},
        )
        stamped = True  # the first send's time is written with the legs, in the same round trip
    else:
        stamped = False
    await _send_legs(signal, document, legs, deps, looked_at=looked_at, stamped=stamped)


async def _send_legs(signal: SignalReceivedV1, document: dict, legs: list[dict], deps: ExecutorDeps, *,
                     looked_at: datetime, stamped: bool) -> None:
    """Send the legs not at the venue yet, in order, recording each; `stamped`: `sent_at` was written with the legs."""
    for index, leg in enumerate(legs):
        if leg.get("order_id"):
            continue
        if index > 0 and legs[index - 1].get("order_id"):
            # The legs before took time: the kill switch and the signal's age are asked again before each next one.
            stop = _stop_before_next_leg(deps, signal)
            if stop is not None:
                # This leg may have been sent by an interrupted attempt that the venue did not show yet.
                _unless_earlier_request_may_land(document, legs, looked_at, stop)
                await _finish_placed(deps, signal, legs, stopped=stop)
                return
        if not stamped:
            # When the latest order request went out: until REQUEST_MAY_LAND_S later it may still land at the venue.
            await deps.db.signals.update_one({"_id": signal.signal_id}, {"$set": {"sent_at": utcnow()}})
        stamped = False
        try:
            placed = await _send(deps, signal, leg)
        except ExchangeUnavailable:
            # ccxt signs a request only after its rate limiter let it go, so the request may carry a later timestamp
            # than sent_at: the window it may land in is counted from now, when it certainly was signed.
            with contextlib.suppress(Exception):  # the outcome below matters more than this stamp
                await deps.db.signals.update_one({"_id": signal.signal_id}, {"$set": {"sent_at": utcnow()}})
            raise
        except OrderRejected as error:
            if index == 0:
                raise
            await _finish_placed(deps, signal, legs, stopped=f"BingX refused the next order: {error.reason}")
            return
        await _record_leg(deps, signal, legs, index, placed)
    if signal.market_position is not None and all(leg.get("price") is None for leg in legs):  # a resting limit has not moved it
        await _check_drift(deps, signal)
    await _finish_placed(deps, signal, legs)


async def _check_drift(deps: ExecutorDeps, signal: SignalReceivedV1) -> None:
    """Compare the venue's position with the one the alert says the strategy holds now: a difference means a missed
    alert, a manual trade or a stop that fired, and the trader must hear of it. Never fails the signal."""
    try:
        held = {p.side: p.contracts for p in await deps.exchange.positions(signal.symbol)}
    except Exception as error:  # the orders are placed: nothing here may turn the signal into a failure
        raise_if_cancelling()
        log.warning("position not compared with the strategy's: the venue did not answer", extra={"error": str(error)[:200]})
        return
    long, short = held.get("long", Decimal(0)), held.get("short", Decimal(0))
    claimed = signal.market_position_size
    if claimed is not None:
        claimed = deps.exchange.amount_to_precision(signal.symbol, claimed)
    assert signal.market_position is not None
    if not domain.drifted(signal.market_position, claimed, long, short):
        return
    drift = PositionDriftV1(signal_id=signal.signal_id, account=signal.account, symbol=signal.symbol,
                            claimed_side=signal.market_position, claimed_size=signal.market_position_size,
                            venue_long=long, venue_short=short, detected_at=utcnow())
    log.warning("the venue's position differs from the strategy's", extra={"claimed": signal.market_position, "long": str(long), "short": str(short)})
    deps.metrics.drift.inc()
    await deps.db.signals.update_one({"_id": signal.signal_id}, {"$set": {"drift": drift.model_dump(mode="python")}})
    await deps.publisher.publish(drift, exchange=EVENTS_EXCHANGE, message_id=f"{signal.signal_id}:{PositionDriftV1.TYPE}")


def _stop_before_next_leg(deps: ExecutorDeps, signal: SignalReceivedV1) -> str | None:
    mode = deps.breaker.mode(deps.view)
    refusal = domain.kill_switch_refusal(mode, signal.action, signal.reduce_only)
    if refusal is not None:
        return refusal
    age = domain.age_seconds(signal, utcnow())
    if age > signal.max_lag_s:
        return f"older than its max lag ({age:.1f}s > {signal.max_lag_s:.0f}s)"
    return None


def _unless_earlier_request_may_land(document: dict, legs: list[dict] | None, looked_at: datetime, outcome: str) -> None:
    """Before a signal whose order requests went out is recorded as not (fully) placed: an earlier request the venue
    did not show may still be carried out. Until that can no longer happen, the message goes back and the venue is
    asked again then, so an order is never left at BingX behind a record that says skipped or expired."""
    if document["status"] != SUBMITTING or not legs or all(leg.get("order_id") for leg in legs):
        return
    sent = document.get("sent_at") or document.get("updated_at")
    if sent is None:
        return
    until = sent + timedelta(seconds=REQUEST_MAY_LAND_S)
    if looked_at < until:
        raise EarlierRequestMayLand(f"an order request sent at {sent.isoformat()} may still reach BingX until "
                                    f"{until.isoformat()}; the venue is asked again then, before this is recorded: {outcome}")


def _stored_legs(document: dict, signal: SignalReceivedV1) -> list[dict]:
    """The legs an interrupted attempt wrote (a document of a single order, from before legs, is one leg)."""
    if document.get("legs"):
        return [dict(leg) for leg in document["legs"]]
    return [{**(document.get("plan") or {}), "client_order_id": document.get("client_order_id")
             or domain.client_order_id(signal.signal_id), "order_id": None}]


async def _send(deps: ExecutorDeps, signal: SignalReceivedV1, leg: dict) -> PlacedOrder:
    client_id = leg["client_order_id"]
    try:
        return await deps.exchange.create_order(
            signal.symbol, leg["side"], leg["amount"], client_order_id=client_id, reduce_only=leg["reduce_only"],
            price=leg.get("price"), stop_loss=leg.get("stop_loss"), take_profit=leg.get("take_profit"),
        )
    except AlreadyPlaced:
        placed = await deps.exchange.find_order(signal.symbol, client_id)
        if placed is None:
            raise ExchangeUnavailable("the venue says this client order id exists but does not show it yet") from None
        return placed
    except ExchangeUnavailable:
        # The order may or may not have reached the venue: look before anyone sends it again.
        placed = await deps.exchange.find_order(signal.symbol, client_id)
        if placed is None:
            raise  # redelivered later; the `submitting` status sends it through the lookup first
        return placed


async def _plan(deps: ExecutorDeps, signal: SignalReceivedV1, *, settle: bool = True) -> list[OrderPlan] | NothingToDo:
    """The orders the signal needs. `settle`: set the leverage and margin mode an entry asks for at the venue (else
    an entry that needs either changed raises _SettingsToChange, and nothing is changed)."""
    exchange = deps.exchange
    market = exchange.market(signal.symbol)
    if market is None:
        raise CannotPlace(f"{signal.symbol} is not a perpetual market at BingX")
    if not market.active:
        raise CannotPlace(f"{signal.symbol} is not trading at BingX right now")
    limit_price = None
    if signal.order_type is OrderType.LIMIT:
        if signal.price is None or signal.price <= 0:
            raise CannotPlace("a limit order needs a positive price")
        limit_price = exchange.price_to_precision(signal.symbol, signal.price)
    if signal.action is Action.REVERSE:
        return await _plan_reverse(deps, signal, limit_price)
    if signal.action.opens and not signal.reduce_only:
        return [await _plan_entry(deps, signal, domain.open_side(signal), limit_price, settle=settle)]
    # A close: leverage, margin mode and protection belong to the position it closes, and are left as they are.
    positions = {p.side: p.contracts for p in await exchange.positions(signal.symbol)}
    if signal.action is Action.FLAT:
        plans = domain.flat_plans(positions)
    else:
        plan = domain.close_plan(domain.closing_action(signal.action), positions, signal.qty, signal.percent)
        plans = [plan] if isinstance(plan, OrderPlan) else plan
    if isinstance(plans, NothingToDo):
        return plans
    return [_closing(exchange, signal.symbol, plan, limit_price) for plan in plans]


def _closing(exchange: BingxExchange, symbol: str, plan: OrderPlan, limit_price: Decimal | None) -> OrderPlan:
    amount = exchange.amount_to_precision(symbol, plan.amount)
    if amount <= 0:
        raise CannotPlace(f"the size to close rounds to zero at {symbol}'s precision")
    return OrderPlan(side=plan.side, amount=amount, reduce_only=True, price=limit_price)


async def _plan_reverse(deps: ExecutorDeps, signal: SignalReceivedV1, limit_price: Decimal | None) -> list[OrderPlan] | NothingToDo:
    """Close the position, then open the other side: the alert's size, or the size closed when it gives none."""
    positions = {p.side: p.contracts for p in await deps.exchange.positions(signal.symbol)}
    held = [side for side in ("long", "short") if positions.get(side)]
    if not held:
        return NothingToDo("no position to reverse")
    if len(held) > 1:
        raise CannotPlace("both a long and a short are open on this symbol: nothing says which to reverse")
    close = _closing(deps.exchange, signal.symbol, domain.close_plan(Action.CLOSE, positions, None, None), None)  # type: ignore[arg-type]
    side = "sell" if held[0] == "long" else "buy"
    sized = signal if domain.has_size(signal) else signal.model_copy(update={"qty": positions[held[0]]})
    return [close, await _plan_entry(deps, sized, side, limit_price)]


async def _plan_entry(deps: ExecutorDeps, signal: SignalReceivedV1, side: str, limit_price: Decimal | None, *,
                      settle: bool = True) -> OrderPlan:
    exchange, market = deps.exchange, deps.exchange.market(signal.symbol)
    assert market is not None  # checked by _plan
    position_side = domain.position_side(side, exchange.hedged)
    wanted_leverage = signal.leverage or deps.default_leverage(signal.symbol)
    wanted_margin_mode = signal.margin_mode or deps.default_margin_mode(signal.symbol)
    leverage = wanted_leverage or await exchange.leverage(signal.symbol, position_side)
    limits = deps.risk.over(deps.view.state.risk_limits if deps.view.state else None)
    risk.check_leverage(limits, leverage)
    reference = limit_price or await exchange.price(signal.symbol)
    free = Decimal(0)
    if signal.percent is not None or limits.daily_loss_limit_usdt:
        balance = await exchange.balance()
        free = balance.free
        await risk.check_daily_loss(limits, deps.db, balance.equity, utcnow())
    raw = domain.open_amount(signal, price=reference, free_margin=free, leverage=leverage)
    amount = exchange.amount_to_precision(signal.symbol, raw)
    domain.check_minimums(amount, reference, min_amount=market.min_amount, min_cost=market.min_cost, symbol=signal.symbol)
    if limits.max_notional_usdt:
        held = sum((p.contracts for p in await exchange.positions(signal.symbol) if p.side == ("long" if side == "buy" else "short")), Decimal(0))
        risk.check_notional(limits, held=held, amount=amount, price=reference, symbol=signal.symbol)
    stop_loss, take_profit = domain.protection(signal, side, reference)
    await risk.take_order_slot(limits, deps.db, signal.signal_id, utcnow())  # the last check: it counts the order
    # Every check passed: only now is anything changed at the venue. Set before the order, or the order is not
    # sent: never an entry without the leverage or margin mode asked for.
    if not settle:
        if ((wanted_margin_mode is not None and await exchange.margin_mode(signal.symbol) != wanted_margin_mode)
                or (wanted_leverage is not None and await exchange.leverage(signal.symbol, position_side) != wanted_leverage)):
            raise _SettingsToChange()
        # As asked already: nothing is set here (ensure_* could ask again, and set, once the cache ran out).
    else:
        if wanted_margin_mode is not None:
            await exchange.ensure_margin_mode(signal.symbol, wanted_margin_mode)
        if wanted_leverage is not None:
            await exchange.ensure_leverage(signal.symbol, wanted_leverage, position_side)
    return OrderPlan(
        side=side, amount=amount, reduce_only=False, price=limit_price,
        stop_loss=None if stop_loss is None else exchange.price_to_precision(signal.symbol, stop_loss),
        take_profit=None if take_profit is None else exchange.price_to_precision(signal.symbol, take_profit),
    )


class _SettingsToChange(Exception):
    """The entry needs the venue's leverage or margin mode changed first: not planned ahead of the claim."""


async def _claim_planned(deps: ExecutorDeps, signal: SignalReceivedV1) -> tuple[dict, list[dict]] | None:
    """The common case in one write: a signal seen for the first time, which the kill switch lets through, fresh,
    whose plan reads the venue but changes nothing there, is claimed already `submitting`, with its legs.

    Planning changes nothing at the venue (it reads prices, positions and balance; the day's first equity may be
    noted for the loss limit, and an order-rate slot taken for the signal, which keeps it), so planning a signal
    that turns out to have been handled already is harmless: its insert then finds the document, and the signal
    takes the usual way (claim, then look). So does every other case: a resend without an `id` (ordered by claim), a flat (which cancels
    orders first), a reverse, a setting to change at the venue, a plan that fails or is refused. The venue away
    while planning raises ExchangeUnavailable, nothing written. Returns the document and its legs, or None for the
    usual way.
    """
    if signal.resend_key is not None or signal.action in (Action.FLAT, Action.REVERSE):
        return None
    mode = deps.breaker.mode(deps.view)
    if mode is None or (await _refusal(deps, signal, mode))[0] is not None:
        return None
    age = domain.age_seconds(signal, utcnow())
    if age > signal.max_lag_s:
        return None
    try:
        plans = await _plan(deps, signal, settle=False)
    except ExchangeUnavailable:
        raise  # counted once, like any venue outage (handle_signal)
    except Exception:  # a refusal, a size that cannot be placed, a limit: the usual way meets it again and records it
        raise_if_cancelling()
        return None
    if isinstance(plans, NothingToDo):
        return None
    deps.metrics.signal_age.observe(max(age, 0.0))
    legs = [{**dataclasses.asdict(plan), "client_order_id": domain.client_order_id(signal.signal_id, n), "order_id": None}
            for n, plan in enumerate(plans)]
    document = _claim_document(deps, signal)
    document.update(status=SUBMITTING, client_order_id=legs[0]["client_order_id"], legs=legs, sent_at=document["claimed_at"],
                    attempts=1)
    try:
        await deps.inserts.insert_one("signals", document)
    except DuplicateKeyError:
        # Delivered before: the usual way finds what became of it. The order slot this plan took stays taken unless
        # that is nothing to send: a `submitting` signal may send its stored legs again, under it.
        return None
    # What was found before this attempt, for _send_legs: nothing, so no earlier request of it can land.
    return {**document, "status": RECEIVED}, legs


def _as_kept(at: datetime) -> datetime:
    """A time as Mongo keeps it (milliseconds), for comparing with what was stored."""
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def _claim_document(deps: ExecutorDeps, signal: SignalReceivedV1) -> dict:
    now = _as_kept(utcnow())  # claims are compared by it
    document = {
        "_id": signal.signal_id,
        "status": RECEIVED,
        "account": signal.account,
        "symbol": signal.symbol,
        "action": signal.action.value,
        "token_name": signal.token_name,
        "strategy": signal.strategy,
        "signal": signal.model_dump(mode="python"),
        "received_at": signal.received_at,
        "claimed_at": now,
        "claimed_by": deps.replica,
        "updated_at": now,
        "attempts": 0,
        "fingerprint": _fingerprint(signal),
    }
    if signal.resend_key is not None:
        document["resend_key"] = signal.resend_key
    return document


async def _claim(deps: ExecutorDeps, signal: SignalReceivedV1) -> dict:
    """One document per signal_id: the first delivery creates it, every later one finds it."""
    document = _claim_document(deps, signal)
    try:
        await deps.inserts.insert_one("signals", document)
        return document
    except DuplicateKeyError:
        existing = await deps.db.signals.find_one({"_id": signal.signal_id})
        assert existing is not None
        return existing


async def _earlier_delivery(deps: ExecutorDeps, signal: SignalReceivedV1, document: dict) -> dict | None:
    """Another delivery of the same alert (no `id`, identical text, within its resend window) claimed before this one.

    One ingress names a resend as it named the first delivery; a resend that reached another ingress replica, or
    one restarted after answering 503, carries another signal id. The first claimed is executed, the others not.
    The window runs from the first delivery, as at the ingress: resends do not stretch it.
    """
    window = timedelta(seconds=signal.resend_window_s or 0)
    mine = (document["claimed_at"], document["_id"])
    async for other in deps.db.signals.find(
        {"resend_key": signal.resend_key, "_id": {"$ne": signal.signal_id}, "resend_of": {"$exists": False},
         "received_at": {"$gte": signal.received_at - window, "$lte": signal.received_at + window}},
        {"_id": 1, "claimed_at": 1},
    ).sort("claimed_at", 1).limit(8):
        if (other["claimed_at"], other["_id"]) < mine:
            return other
    return None


def _fingerprint(signal: SignalReceivedV1) -> str:
    """What the alert asked for; a resend of the same alert has the same fingerprint whenever it arrives."""
    return hashlib.sha256(signal.model_dump_json(exclude={"received_at"}).encode()).hexdigest()[:32]


async def _report_conflict(deps: ExecutorDeps, signal: SignalReceivedV1, document: dict) -> None:
    """A different alert reused an id: it is not a resend, so it is not silently dropped as one."""
    fingerprint = _fingerprint(signal)
    reason = (f"the id {signal.signal_id!r} was already used by a different alert, so this one was not executed; "
              "give every alert its own id (or none)")
    log.error("signal id reused by a different alert", extra={"fingerprint": fingerprint})
    await deps.db.signal_conflicts.update_one(
        {"_id": f"{signal.signal_id}:{fingerprint}"},
        {"$setOnInsert": {"signal_id": signal.signal_id, "signal": signal.model_dump(mode="python"), "at": utcnow()}},
        upsert=True,
    )
    event = OrderFailedV1(signal_id=signal.signal_id, account=signal.account, symbol=signal.symbol, action=signal.action,
                          reason=reason, error_type="DuplicateSignalId", failed_at=utcnow())
    await deps.publisher.publish(event, exchange=EVENTS_EXCHANGE, message_id=f"{signal.signal_id}:conflict:{fingerprint}")


async def _finish(deps: ExecutorDeps, signal: SignalReceivedV1, status: str, event: Message, **fields: object) -> None:
    """Record the outcome with its event, then publish the event. The record comes first: it is the truth.

    An update_one, not find_one_and_update: the event published is the one just recorded, so nothing needs reading
    back, and the test server (SecantusDB) answers a findAndModify by scanning the collection (70 ms at 6,000 signals).
    """
    outcome = {"type": event.TYPE, "body": encode(event).decode()}
    result = await deps.db.signals.update_one(
        {"_id": signal.signal_id, "status": {"$nin": list(TERMINAL)}},
        {"$set": {"status": status, "updated_at": utcnow(), "outcome": outcome, **fields}},
    )
    if not result.modified_count:
        return  # finished already (a redelivery handled it meanwhile): counted and told then
    deps.metrics.signals.labels(status).inc()
    if isinstance(event, OrderFailedV1):  # every failure, of whatever kind, by kind: the dashboard and OrderFailures
        deps.metrics.failures.labels(event.error_type).inc()
    log.info("signal %s", status, extra={"status": status, **{k: v for k, v in fields.items() if isinstance(v, (str, int, float))}})
    await _publish_outcome(deps, {"_id": signal.signal_id, "outcome": outcome})


async def _fail(deps: ExecutorDeps, signal: SignalReceivedV1, reason: str, error_type: str, status: str = FAILED) -> None:
    """A failure of whatever kind (a refusal at the venue, a risk limit, a size that cannot be placed); _finish
    counts it by kind in tvtb_order_failures_total once it is recorded (a redelivery counts nothing twice)."""
    deps.metrics.orders.labels(status).inc()
    await _finish(deps, signal, status, OrderFailedV1(
        signal_id=signal.signal_id, account=signal.account, symbol=signal.symbol, action=signal.action,
        reason=reason, error_type=error_type, failed_at=utcnow(),
    ), reason=reason, error_type=error_type)


async def _record_leg(deps: ExecutorDeps, signal: SignalReceivedV1, legs: list[dict], index: int, placed: PlacedOrder) -> None:
    """The order of one leg in `orders` (the signal's document gets every leg when it finishes); an earlier leg of
    several is told at once."""
    leg = legs[index]
    now = utcnow()
    try:  # once per client order id (unique): a redelivery finds it recorded
        await deps.inserts.insert_one("orders", {
            "client_order_id": placed.client_order_id,
            "signal_id": signal.signal_id,
            "leg": index,
            "order_id": placed.order_id,
            "account": signal.account,
            "symbol": placed.symbol,
            "side": placed.side,
            "type": "limit" if leg.get("price") is not None else "market",
            "price": leg.get("price"),
            "stop_loss": leg.get("stop_loss"),
            "take_profit": leg.get("take_profit"),
            "amount": placed.amount,
            "reduce_only": placed.reduce_only,
            "status": placed.status,
            "filled": placed.filled,
            "average": placed.average,
            "placed_at": now,
        })
    except DuplicateKeyError:
        pass
    # Kept with the signal when it finishes; until then a leg's order is found again at the venue by its client id.
    leg.update(order_id=placed.order_id, placed=dataclasses.asdict(placed), placed_at=now)
    deps.metrics.orders.labels(placed.status or "placed").inc()
    if index == 0:
        deps.metrics.signal_to_order.observe(max((now - signal.received_at).total_seconds(), 0.0))
    if index < len(legs) - 1:
        await deps.publisher.publish(_placed_event(signal, leg), exchange=EVENTS_EXCHANGE,
                                     message_id=f"{signal.signal_id}:{OrderPlacedV1.TYPE}:leg{index}")


def _placed_event(signal: SignalReceivedV1, leg: dict) -> OrderPlacedV1:
    placed = leg["placed"]
    return OrderPlacedV1(
        signal_id=signal.signal_id, account=signal.account, symbol=placed["symbol"], side=placed["side"],
        amount=placed["amount"], order_id=placed["order_id"], client_order_id=placed["client_order_id"],
        status=placed["status"], filled=placed["filled"], average=placed["average"], reduce_only=placed["reduce_only"],
        placed_at=leg["placed_at"], price=leg.get("price"), stop_loss=leg.get("stop_loss"), take_profit=leg.get("take_profit"),
    )


async def _finish_placed(deps: ExecutorDeps, signal: SignalReceivedV1, legs: list[dict], *, stopped: str | None = None) -> None:
    """Every leg is at the venue, or (`stopped`) the kill switch or the signal's age stopped the rest."""
    done = [leg for leg in legs if leg.get("order_id")]
    fields: dict[str, object] = {"order_id": done[-1]["order_id"], "order_ids": [leg["order_id"] for leg in done], "legs": legs}
    if stopped is not None:
        fields["reason"] = f"{len(done)} of {len(legs)} orders placed; the rest not sent: {stopped}"
    await _finish(deps, signal, PLACED, _placed_event(signal, done[-1]), **fields)


async def _publish_outcome(deps: ExecutorDeps, document: dict) -> None:
    outcome = document.get("outcome")
    if not outcome:
        return
    event = decode(outcome["type"], outcome["body"].encode())
    # A fixed message id per signal and outcome lets the notifier drop a republished event.
    await deps.publisher.publish(event, exchange=EVENTS_EXCHANGE, message_id=f"{document['_id']}:{outcome['type']}")
