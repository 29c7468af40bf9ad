"""What the control service does: read and change the kill switch. REST and Telegram both call these."""

from __future__ import annotations

import asyncio
import logging
import secrets
from datetime import timedelta
from dataclasses import dataclass, field

from aio_pika.abc import AbstractRobustConnection
from pymongo import DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from shared.contracts import KillSwitchChangedV1, KillSwitchMode, KillSwitchTripV1, RiskLimitsV1, SignalReceivedV1, stricter, utcnow
from shared.killswitch import KillSwitchView
from shared.messaging import CONTROL_STREAM, EVENTS_EXCHANGE, EXECUTOR_SHARDS, SIGNALS_EXCHANGE, Publisher, PublishFailed

log = logging.getLogger(__name__)


@dataclass
class ControlDeps:
    db: AsyncDatabase
    publisher: Publisher
    view: KillSwitchView = field(default_factory=KillSwitchView)  # what the stream itself carries
    published_version: int = 0  # the highest version the broker has confirmed on the stream
    connection: AbstractRobustConnection | None = None  # to read the executor's backlog from the broker

STREAM_READ_TIMEOUT_S = 2.0


class ConcurrentChange(RuntimeError):
    """Another writer took the next version first."""


def _from_document(document: dict) -> KillSwitchChangedV1:
    return KillSwitchChangedV1.model_validate({k: v for k, v in document.items() if k != "_id"})


async def current_state(deps: ControlDeps) -> KillSwitchChangedV1 | None:
    document = await deps.db.control_history.find_one({}, sort=[("version", DESCENDING)])
    return _from_document(document) if document else None


async def history(deps: ControlDeps, limit: int = 50) -> list[KillSwitchChangedV1]:
    cursor = deps.db.control_history.find({}, sort=[("version", DESCENDING)], limit=limit)
    return [_from_document(d) async for d in cursor]


async def distribute(deps: ControlDeps, state: KillSwitchChangedV1) -> None:
    """Publish a state to the control stream, then as an event for the notifier (tvtb.events).

    Raises PublishFailed when the broker did not confirm the stream copy. The event carries the same message
    id for every republication of a version, so the notifier tells each change once.
    """
    message_id = f"killswitch-v{state.version}"
    await deps.publisher.publish(state, exchange="", routing_key=CONTROL_STREAM, message_id=message_id)
    deps.published_version = max(deps.published_version, state.version)
    # A reader that joins later reads from offset `last`, which may hold only the last message: that must be the
    # newest version. Two writers (control replicas, a republish racing a change) can publish out of order, so
    # whoever published an older version publishes the newest after it.
    latest = await current_state(deps)
    if latest is not None and latest.version > state.version:
        log.warning("an older kill-switch version went out after a newer one; publishing the newest again",
                    extra={"published": state.version, "latest": latest.version})
        await deps.publisher.publish(latest, exchange="", routing_key=CONTROL_STREAM, message_id=f"killswitch-v{latest.version}")
    try:
        await deps.publisher.publish(state, exchange=EVENTS_EXCHANGE, message_id=message_id)
    except PublishFailed as error:  # the services have the state; only the Telegram notice is late
        log.warning("kill-switch change not announced to the notifier", extra={"version": state.version, "error": str(error)})


async def distribute_pending(deps: ControlDeps) -> KillSwitchChangedV1 | None:
    """Publish the latest state if the stream does not carry it yet (a change saved while the broker was away)."""
    state = await current_state(deps)
    if state is None or state.version <= deps.published_version:
        return None
    log.warning("distributing a kill-switch change that was saved but not yet published", extra={"version": state.version})
    await distribute(deps, state)
    return state


class BacklogNotEmpty(Exception):
    """Trading would be turned back on while signals wait: they would run at once, some of them old."""

    def __init__(self, backlog: dict[str, int]) -> None:
        self.backlog = backlog
        waiting = ", ".join(f"{queue}: {count}" for queue, count in backlog.items() if count)
        super().__init__(f"{sum(backlog.values())} signals wait in the executor's queues ({waiting}); they would run as "
                         "soon as trading is on. Check them, or let the executor record them skipped first, then turn "
                         "trading on again; to turn it on with them waiting, send force")


class BacklogUnknown(Exception):
    """The broker could not say how many signals wait."""


async def executor_backlog(deps: ControlDeps) -> dict[str, int]:
    """Signals waiting (ready, not yet taken) in each of the executor's shards, as the broker counts them."""
    if deps.connection is None or deps.connection.is_closed:
        raise BacklogUnknown("the broker is not reachable")
    try:
        channel = await deps.connection.channel()
        try:
            underlay = await channel.get_underlay_channel()
            counts = {}
            for shard in EXECUTOR_SHARDS:
                declared = await asyncio.wait_for(underlay.queue_declare(shard.name, passive=True), STREAM_READ_TIMEOUT_S)
                counts[shard.name] = declared.message_count
            return counts
        finally:
            if not channel.is_closed:
                await channel.close()
    except Exception as error:
        raise BacklogUnknown(f"the broker could not count the executor's queues: {type(error).__name__}") from error


def merged_risk(current: RiskLimitsV1 | None, change: RiskLimitsV1) -> RiskLimitsV1:
    """The limits in force after a change that names some of them: a value sets one, null gives it back to the
    executor's RISK_* setting, a limit not named stays as it is."""
    values = (current or RiskLimitsV1()).model_dump()
    values.update({name: getattr(change, name) for name in change.model_fields_set})
    return RiskLimitsV1(**values)


async def set_mode(deps: ControlDeps, mode: KillSwitchMode, *, actor: str, reason: str, force: bool = False,
                   risk_limits: RiskLimitsV1 | None = None, expected_version: int | None = None) -> KillSwitchChangedV1:
    """A person's change, through REST or Telegram. Turning trading back on looks at the executor's backlog first and
    refuses while signals wait, unless `force`; a forced change is recorded as forced, with the backlog."""
    current = await current_state(deps)
    if expected_version is None:
        expected_version = current.version if current else 0
    backlog_total = None
    if mode is KillSwitchMode.RUNNING and (current is None or current.mode is not KillSwitchMode.RUNNING):
        try:
            backlog = await executor_backlog(deps)
        except BacklogUnknown:
            if not force:
                raise
            backlog = {}
        backlog_total = sum(backlog.values())
        if backlog_total and not force:
            raise BacklogNotEmpty(backlog)
    forced = bool(force and backlog_total != 0)  # unknown (None) or non-empty: the actor overrode the check
    if forced:
        reason = f"{reason} (forced with {backlog_total if backlog_total is not None else 'an unknown number of'} signals waiting)"
    return await change_mode(deps, mode, actor=actor, reason=reason, forced=forced, backlog=backlog_total, risk_limits=risk_limits,
                             expected_version=expected_version)


FLATTEN_CONFIRM_S = 60
FLATTEN_WARNING = ("flatten cancels every open order and closes every position at market, then trading stays halted; "
                   "to go ahead, send the confirmation within 60 s")


class ConfirmationRefused(Exception):
    """No such confirmation: unknown, used already, expired, or asked by someone else."""


async def ask_flatten(deps: ControlDeps, *, actor: str, reason: str) -> str:
    """The first step of a flatten: nothing happens yet; returns the confirmation to send back within a minute."""
    code = secrets.token_hex(4)
    now = utcnow()
    await deps.db.control_confirmations.insert_one({
        "_id": f"flatten:{actor}:{code}", "action": "flatten", "actor": actor, "reason": reason, "asked_at": now,
        "expires_at": now + timedelta(seconds=FLATTEN_CONFIRM_S),
    })
    log.warning("flatten asked; waiting for its confirmation", extra={"actor": actor, "reason": reason})
    return code


async def confirm_flatten(deps: ControlDeps, code: str, *, actor: str) -> KillSwitchChangedV1:
    """The second step: the one who asked confirms in time; trading halts at once and an executor flattens."""
    now = utcnow()
    document = await deps.db.control_confirmations.find_one({"_id": f"flatten:{actor}:{code}"})
    # Deleted first, and only by the one request that finds it: a confirmation runs one flatten.
    if document is None or document["expires_at"] < now or not (
            await deps.db.control_confirmations.delete_one({"_id": document["_id"]})).deleted_count:
        raise ConfirmationRefused("no such flatten confirmation waits (it expired after 60 s, was used, or was asked "
                                  "by someone else): ask again")
    try:
        return await change_mode(deps, KillSwitchMode.HALTED, actor=actor, reason=f"flatten: {document['reason']}", flatten=True)
    except ConcurrentChange:
        await deps.db.control_confirmations.insert_one(document)  # not used up: the same code may be sent again
        raise


async def latest_flatten(deps: ControlDeps) -> dict | None:
    return await deps.db.flatten_runs.find_one({}, sort=[("_id", DESCENDING)])


async def change_mode(deps: ControlDeps, mode: KillSwitchMode, *, actor: str, reason: str, forced: bool = False,
                      backlog: int | None = None, flatten: bool = False, risk_limits: RiskLimitsV1 | None = None,
                      expected_version: int | None = None) -> KillSwitchChangedV1:
    """Write the next version to Mongo (history kept), then distribute it to every service.

    Mongo first: if the broker then fails, the change is not lost; start-up republishes the latest version.
    """
    previous = await current_state(deps)
    if expected_version is not None and (previous.version if previous else 0) != expected_version:
        # Decided on a state that is no longer the latest (a halt or a trip came meanwhile): never undo it unseen.
        raise ConcurrentChange("the kill switch changed while this request was decided; read the state and try again")
    # Readers ignore any version at or below the highest they have seen: never number below the stream's.
    seen = deps.view.state.version if deps.view.state else 0
    state = KillSwitchChangedV1(
        version=max(previous.version if previous else 0, seen) + 1, mode=mode, actor=actor, reason=reason, changed_at=utcnow(),
        forced=forced, backlog=backlog, flatten=flatten,
        # Every version carries the risk limits in force: a change of mode keeps them.
        risk_limits=risk_limits if risk_limits is not None else (previous.risk_limits if previous else None),
    )
    try:
        await deps.db.control_history.insert_one(state.model_dump(mode="python"))
    except DuplicateKeyError as error:
        raise ConcurrentChange("another change was made at the same moment; read the state and try again") from error
    log.warning(
        "kill switch changed",
        extra={"mode": mode.value, "version": state.version, "actor": actor, "reason": reason,
               "previous_mode": previous.mode.value if previous else None},
    )
    await distribute(deps, state)
    return state


async def apply_trip(deps: ControlDeps, trip: KillSwitchTripV1) -> KillSwitchChangedV1 | None:
    """A service tripped the kill switch: make it the state, once per trip, and never loosen the switch.

    A trip already applied is not applied again, so a redelivered one cannot undo a later decision to trade.
    """
    if await deps.db.control_trips.find_one({"_id": trip.trip_id}) is not None:
        return None
    current = await current_state(deps)
    state = None
    if current is None or stricter(current.mode, trip.mode) is not current.mode:
        state = await change_mode(deps, trip.mode, actor=trip.actor, reason=f"{trip.severity}: {trip.reason}")
    else:
        log.warning("kill-switch trip not applied: the switch is already as strict", extra={"mode": current.mode.value, "actor": trip.actor})
    await deps.db.control_trips.update_one(
        {"_id": trip.trip_id},
        {"$setOnInsert": {**trip.model_dump(mode="python"), "applied_version": state.version if state else None, "at": utcnow()}},
        upsert=True,
    )
    return state


async def bootstrap_state(deps: ControlDeps, initial: KillSwitchMode) -> KillSwitchChangedV1:
    """Make sure the stream carries the current state: the initial one on a fresh install, else the latest.

    When the stream carries a newer version than the database (a database restored from an old backup, a
    renamed MONGO_DB), that version is the last decision anyone made: it is adopted into the history.
    """
    try:
        await asyncio.wait_for(deps.view.known.wait(), STREAM_READ_TIMEOUT_S)
    except asyncio.TimeoutError:
        pass  # an empty stream: nothing was ever published
    state = await current_state(deps)
    streamed = deps.view.state
    if streamed is not None and (state is None or streamed.version > state.version):
        log.warning("adopting a newer kill-switch state found on the stream", extra={"version": streamed.version, "mode": streamed.mode.value})
        try:
            await deps.db.control_history.insert_one(streamed.model_dump(mode="python"))
        except DuplicateKeyError:
            pass
        state = await current_state(deps)
    if state is None:
        try:
            state = await change_mode(
                deps, initial, actor="system", reason=f"fresh install: initial state from INITIAL_AUTOTRADE ({initial.value})"
            )
            return state
        except ConcurrentChange:
            state = await current_state(deps)
            assert state is not None
    await distribute(deps, state)
    return state


# As the executor records them (services/executor/handlers.py).
EXPIRED = "expired"
REPLAY_SUFFIX = ".replay"


class ReplayRefused(Exception):
    """The signal cannot be replayed; `status` is the HTTP answer (404 unknown, 409 not expired or already replayed)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def replay_id(signal_id: str) -> str:
    return f"{signal_id}{REPLAY_SUFFIX}"


async def parked_signals(deps: ControlDeps, limit: int = 100) -> list[dict]:
    """Expired signals nobody replayed yet, newest first: what an operator may replay."""
    cursor = deps.db.signals.find(
        {"status": EXPIRED, "replayed_as": {"$exists": False}},
        {"_id": 1, "account": 1, "symbol": 1, "action": 1, "strategy": 1, "received_at": 1, "updated_at": 1, "reason": 1},
        sort=[("received_at", DESCENDING)], limit=limit,
    )
    return [document async for document in cursor]


async def replay_signal(deps: ControlDeps, signal_id: str, *, actor: str, reason: str) -> SignalReceivedV1:
    """Send an expired signal again, as a new signal `<id>.replay` that ages from now, to run like any other.

    Once per expired signal: the replay's id is fixed, so a second replay (or one retried after a lost answer) is the
    same signal_id, which the executor runs at most once. The risk limits and the replay's own max lag apply as to
    any signal; a replay the kill switch would refuse now is refused here, not sent to be skipped for good. Only an
    expired signal is replayed: a skipped one was refused by the kill switch, and DESIGN.md's rule 4 says it never
    runs later; one that expired while an order was being placed may have reached BingX, and is not sent again.
    """
    new_id = replay_id(signal_id)
    document = await deps.db.signals.find_one({"_id": signal_id})
    if document is None:
        raise ReplayRefused(404, f"no signal {signal_id!r} is recorded")
    if document.get("status") != EXPIRED:
        raise ReplayRefused(409, f"only an expired signal can be replayed; {signal_id!r} is {document.get('status')!r}")
    if document.get("legs") or document.get("client_order_id"):
        raise ReplayRefused(409, f"an order for {signal_id!r} was being placed when it expired and may be at BingX: "
                                 "check BingX; it is not sent again")
    original = SignalReceivedV1.model_validate(document["signal"])
    state = await current_state(deps)
    if state is None or state.mode is KillSwitchMode.HALTED or (
            state.mode is KillSwitchMode.ENTRIES_OFF and original.action.opens and not original.reduce_only):
        mode = state.mode.value if state else "unknown"
        raise ReplayRefused(409, f"trading is {mode}: the replay would be skipped, and could not be replayed again; "
                                 "turn trading on first")
    replay = original.model_copy(update={
        "signal_id": new_id, "replay_of": signal_id, "received_at": utcnow(), "alert_time": None,
        "resend_key": None, "resend_window_s": None,
    })
    if document.get("replayed_as"):
        if await deps.db.signals.find_one({"_id": document["replayed_as"]}, {"_id": 1}) is not None:
            raise ReplayRefused(409, f"signal {signal_id!r} was already replayed as {document['replayed_as']!r}")
        # Marked, but the executor never saw it (a crash before the publish, or not consumed yet): the same id again.
        log.warning("sending a replay again that the executor has not seen", extra={"replay_of": signal_id, "signal_id": new_id})
    else:
        marked = await deps.db.signals.update_one(
            {"_id": signal_id, "status": EXPIRED, "replayed_as": {"$exists": False}},
            {"$set": {"replayed_as": new_id, "replayed_by": actor, "replayed_at": utcnow(), "replay_reason": reason}})
        if not marked.modified_count:
            raise ReplayRefused(409, f"signal {signal_id!r} was replayed at this moment by someone else")
    await deps.publisher.publish(replay, exchange=SIGNALS_EXCHANGE, message_id=new_id)
    log.warning("expired signal replayed by an operator", extra={"replay_of": signal_id, "signal_id": new_id, "actor": actor, "reason": reason})
    return replay


STATUS_RECENT = 10


async def status(deps: ControlDeps) -> dict:
    """What an operator asks first: the mode and who set it, the executor's backlog and replicas, the latest signal
    and order. The same for GET /status and Telegram's /status."""
    state = await current_state(deps)
    try:
        backlog: dict[str, int] | None = await executor_backlog(deps)
    except BacklogUnknown:
        backlog = None
    replicas = [{"replica": d["_id"], "shards": d.get("holding", []), "seen_at": d.get("seen_at")}
                async for d in deps.db.executor_replicas.find({}, sort=[("_id", 1)])]
    last_signal = await deps.db.signals.find_one(
        {}, {"_id": 1, "status": 1, "symbol": 1, "action": 1, "received_at": 1, "reason": 1}, sort=[("received_at", DESCENDING)])
    last_order = await deps.db.orders.find_one(
        {}, {"_id": 0, "signal_id": 1, "symbol": 1, "side": 1, "amount": 1, "status": 1, "order_id": 1, "placed_at": 1},
        sort=[("placed_at", DESCENDING)])
    snapshot = await account(deps)
    exchange = None if snapshot is None else {"reachable": snapshot.get("reachable"), "checked_at": snapshot.get("checked_at"),
                                              "error": snapshot.get("error")}
    return {
        "exchange": exchange,  # as the executor last found BingX (None: no executor has looked yet)
        "mode": state.mode.value if state else None,
        "version": state.version if state else 0,
        "set_by": state.actor if state else None,
        "reason": state.reason if state else None,
        "changed_at": state.changed_at if state else None,
        "backlog": backlog,
        "backlog_total": sum(backlog.values()) if backlog is not None else None,
        "executor_replicas": replicas,
        "last_signal": {"signal_id": last_signal.pop("_id"), **last_signal} if last_signal else None,
        "last_order": last_order,
    }


async def recent_orders(deps: ControlDeps, limit: int = STATUS_RECENT) -> list[dict]:
    cursor = deps.db.orders.find(
        {}, {"_id": 0, "signal_id": 1, "symbol": 1, "side": 1, "amount": 1, "price": 1, "status": 1, "order_id": 1,
             "reduce_only": 1, "placed_at": 1}, sort=[("placed_at", DESCENDING)], limit=limit)
    return [d async for d in cursor]


async def recent_signals(deps: ControlDeps, limit: int = STATUS_RECENT) -> list[dict]:
    cursor = deps.db.signals.find(
        {}, {"_id": 1, "status": 1, "symbol": 1, "action": 1, "received_at": 1, "reason": 1, "token_name": 1, "strategy": 1},
        sort=[("received_at", DESCENDING)], limit=limit)
    return [{"signal_id": d.pop("_id"), **d} async for d in cursor]


async def account(deps: ControlDeps) -> dict | None:
    """The account's positions and balance as an executor last read them (`account_snapshot`), with when."""
    document = await deps.db.account_snapshot.find_one({"_id": "bingx"})
    if document is not None:
        document.pop("_id")
    return document
