"""Versioned message contracts: what travels on the broker between services.

Messages are frozen; readers ignore fields they do not know, so a released version may only gain optional fields.
Money and quantities are Decimal, carried as strings on the wire so nothing is rounded through a float.
"""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

WireDecimal = Annotated[Decimal, PlainSerializer(lambda d: format(d, "f"), return_type=str, when_used="json")]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Action(StrEnum):
    BUY = "buy"
    SELL = "sell"
    LONG = "long"
    SHORT = "short"
    CLOSE_LONG = "close_long"
    CLOSE_SHORT = "close_short"
    CLOSE = "close"
    FLAT = "flat"
    REVERSE = "reverse"

    @property
    def opens(self) -> bool:
        """True when the action can open or grow a position (what `entries_off` refuses)."""
        return self in {Action.BUY, Action.SELL, Action.LONG, Action.SHORT, Action.REVERSE}


class OrderType(StrEnum):
    MARKET = "market"
    LIMIT = "limit"


class KillSwitchMode(StrEnum):
    RUNNING = "running"
    ENTRIES_OFF = "entries_off"
    HALTED = "halted"


class Message(BaseModel):
    """Base of every message. `TYPE` is the AMQP `type` property; `ROUTING_KEY` where the message goes."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    TYPE: ClassVar[str]
    ROUTING_KEY: ClassVar[str] = ""

    def routing_key(self) -> str:
        return self.ROUTING_KEY

    def correlation_id(self) -> str | None:
        return getattr(self, "signal_id", None)

    def shard_key(self) -> str | None:
        """What the executor's shards are chosen by (the `x-shard-key` header), for messages that have one."""
        return None


class SignalReceivedV1(Message):
    """An accepted alert, normalised whatever format it came in."""

    TYPE: ClassVar[str] = "SignalReceivedV1"

    signal_id: str
    account: str = "default"
    token_name: str
    symbol: str = Field(description="ccxt unified symbol, e.g. BTC/USDT:USDT")
    action: Action
    order_type: OrderType = OrderType.MARKET
    price: WireDecimal | None = None
    qty: WireDecimal | None = None
    usdt: WireDecimal | None = None
    percent: WireDecimal | None = None
    leverage: int | None = None
    margin_mode: Literal["isolated", "cross"] | None = None
    tp: WireDecimal | None = None
    sl: WireDecimal | None = None
    tp_pct: WireDecimal | None = None
    sl_pct: WireDecimal | None = None
    reduce_only: bool = False
    strategy: str | None = None
    alert_time: datetime | None = None
    max_lag_s: float = 60.0
    received_at: datetime
    # Set only for an alert without an `id`: its fingerprint (token removed) and how long an identical alert counts
    # as a resend. Ingress replicas, or one restarted, may name a resend differently; the executor uses these to
    # execute one alert once all the same.
    resend_key: str | None = None
    resend_window_s: float | None = None
    # The strategy's own position after this order ({{strategy.market_position}} and _size), when the alert says it.
    market_position: Literal["long", "short", "flat"] | None = None
    market_position_size: WireDecimal | None = None
    # An operator's replay of an expired signal (POST /bot/signals/{id}/replay): the id of the one replayed.
    replay_of: str | None = None

    def routing_key(self) -> str:
        # `<account>.<symbol>`; dots and slashes would split the topic, so the exchange id form is used.
        return f"{self.account}.{self.symbol.split(':')[0].replace('/', '-')}"

    def shard_key(self) -> str:
        # The BingX symbol alone: every `account` label trades with the one API key, so two labels on one symbol
        # must run one after the other too.
        return self.symbol.split(":")[0].replace("/", "-")


class SignalBatchV1(Message):
    """Signals one ingress accepted together, in the order it accepted them, under one publish and one confirm.

    Under load the ingress commits a group at a time (see services/ingress/durable.py); a group of one travels as a
    plain SignalReceivedV1. Every signal of a batch has the same routing key, so a batch never mixes shards, and
    carries its own trace context in `traces` (W3C headers, by position).
    """

    TYPE: ClassVar[str] = "SignalBatchV1"

    signals: tuple[SignalReceivedV1, ...] = Field(min_length=1)
    traces: tuple[dict[str, str], ...] = ()

    def routing_key(self) -> str:
        return self.signals[0].routing_key()

    def shard_key(self) -> str:
        return self.signals[0].shard_key()

    def correlation_id(self) -> str | None:
        return None

    def entries(self) -> list[tuple[SignalReceivedV1, dict[str, str]]]:
        traces = self.traces if len(self.traces) == len(self.signals) else ({},) * len(self.signals)
        return list(zip(self.signals, traces))


class OrderPlacedV1(Message):
    TYPE: ClassVar[str] = "OrderPlacedV1"
    ROUTING_KEY: ClassVar[str] = "order.placed.v1"

    signal_id: str
    account: str
    symbol: str
    side: Literal["buy", "sell"]
    amount: WireDecimal
    order_id: str
    client_order_id: str
    status: str | None = None
    filled: WireDecimal | None = None
    average: WireDecimal | None = None
    reduce_only: bool = False
    placed_at: datetime
    price: WireDecimal | None = None  # a limit order's price
    stop_loss: WireDecimal | None = None
    take_profit: WireDecimal | None = None


class OrderFilledV1(Message):
    """An order that rested at the venue (a limit order) has filled, or partly filled and ended."""

    TYPE: ClassVar[str] = "OrderFilledV1"
    ROUTING_KEY: ClassVar[str] = "order.filled.v1"

    signal_id: str
    account: str
    symbol: str
    side: Literal["buy", "sell"]
    amount: WireDecimal
    filled: WireDecimal
    average: WireDecimal | None = None
    order_id: str
    client_order_id: str
    status: str
    filled_at: datetime


class OrderFailedV1(Message):
    TYPE: ClassVar[str] = "OrderFailedV1"
    ROUTING_KEY: ClassVar[str] = "order.failed.v1"

    signal_id: str
    account: str
    symbol: str
    action: Action
    reason: str
    error_type: str
    failed_at: datetime


class SignalSkippedV1(Message):
    """A signal consumed and deliberately not executed (kill switch, stale, nothing to do). Never executed later."""

    TYPE: ClassVar[str] = "SignalSkippedV1"
    ROUTING_KEY: ClassVar[str] = "signal.skipped.v1"

    signal_id: str
    account: str
    symbol: str
    action: Action
    reason: str
    mode: KillSwitchMode | None = None
    skipped_at: datetime


class SignalRejectedV1(Message):
    """An alert with a valid token that the ingress refused (malformed, outside the token's scope, an id reused):
    TradingView shows the trader nothing of the answer, so Telegram tells them why."""

    TYPE: ClassVar[str] = "SignalRejectedV1"
    ROUTING_KEY: ClassVar[str] = "signal.rejected.v1"

    token_name: str
    status: int
    reason: str
    format: str | None = None
    rejected_at: datetime


class SignalExpiredV1(Message):
    """A signal older than its max lag: recorded, reported and parked for an operator's replay."""

    TYPE: ClassVar[str] = "SignalExpiredV1"
    ROUTING_KEY: ClassVar[str] = "signal.expired.v1"

    signal_id: str
    account: str
    symbol: str
    action: Action
    age_s: float
    max_lag_s: float
    expired_at: datetime


class RiskLimitsV1(BaseModel):
    """Risk limits set through the control service, over the executor's RISK_* settings: None leaves a setting as it
    is, 0 turns that limit off."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    max_leverage: int | None = Field(default=None, ge=0, le=150)
    max_notional_usdt: WireDecimal | None = Field(default=None, ge=0)
    max_orders_per_minute: int | None = Field(default=None, ge=0)
    daily_loss_limit_usdt: WireDecimal | None = Field(default=None, ge=0)


class KillSwitchChangedV1(Message):
    """One version of the kill-switch state. Readers keep the highest version they have seen."""

    TYPE: ClassVar[str] = "KillSwitchChangedV1"
    ROUTING_KEY: ClassVar[str] = "control.killswitch_changed.v1"

    version: int
    mode: KillSwitchMode
    actor: str
    reason: str
    changed_at: datetime
    # Trading turned back on while signals waited in the executor's queues, because the actor insisted: how many.
    forced: bool = False
    backlog: int | None = None
    # The `flatten` action: halted from this version on, and an executor cancels every open order and closes every
    # position (FlattenedV1 tells how it went).
    flatten: bool = False
    # The risk limits in force from this version on (each version carries them all, so the latest is enough).
    risk_limits: RiskLimitsV1 | None = None

    @property
    def autotrade(self) -> bool:
        return self.mode is KillSwitchMode.RUNNING


class PositionDriftV1(Message):
    """After a signal executed, the venue's position differs from the one the strategy says it holds."""

    TYPE: ClassVar[str] = "PositionDriftV1"
    ROUTING_KEY: ClassVar[str] = "position.drift.v1"

    signal_id: str
    account: str
    symbol: str
    claimed_side: Literal["long", "short", "flat"]
    claimed_size: WireDecimal | None = None
    venue_long: WireDecimal
    venue_short: WireDecimal
    detected_at: datetime


KILL_SWITCH_STRICTNESS = {KillSwitchMode.RUNNING: 0, KillSwitchMode.ENTRIES_OFF: 1, KillSwitchMode.HALTED: 2}


def stricter(a: KillSwitchMode, b: KillSwitchMode) -> KillSwitchMode:
    return a if KILL_SWITCH_STRICTNESS[a] >= KILL_SWITCH_STRICTNESS[b] else b


class KillSwitchTripV1(Message):
    """A service stops trading by itself (a revoked key, repeated venue failures, a loss limit) and asks the control
    service, the kill switch's only writer, to make it the state. Applied once, and never to loosen the switch."""

    TYPE: ClassVar[str] = "KillSwitchTripV1"
    ROUTING_KEY: ClassVar[str] = "control.trip.v1"

    trip_id: str
    mode: KillSwitchMode
    reason: str
    actor: str
    severity: Literal["SEV1", "SEV2", "SEV3"]
    signal_id: str | None = None
    tripped_at: datetime


class FlattenedPosition(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    symbol: str
    side: Literal["long", "short"]
    amount: WireDecimal
    order_id: str | None = None


class FlattenedV1(Message):
    """How a flatten (a kill-switch version with `flatten`) went: what was closed and cancelled, what is left."""

    TYPE: ClassVar[str] = "FlattenedV1"
    ROUTING_KEY: ClassVar[str] = "control.flattened.v1"

    version: int
    actor: str
    complete: bool  # no position and no open order left, nothing failed
    closed: tuple[FlattenedPosition, ...] = ()
    cancelled_symbols: tuple[str, ...] = ()  # every open order of these symbols was cancelled
    remaining: tuple[FlattenedPosition, ...] = ()  # positions still open afterwards
    errors: tuple[str, ...] = ()
    finished_at: datetime


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (SignalReceivedV1, SignalBatchV1, OrderPlacedV1, OrderFilledV1, OrderFailedV1, SignalSkippedV1, SignalExpiredV1, KillSwitchChangedV1,
                KillSwitchTripV1, PositionDriftV1, FlattenedV1, SignalRejectedV1)
}


class UnknownMessageType(ValueError):
    pass


def decode(message_type: str | None, body: bytes) -> Message:
    cls = MESSAGE_TYPES.get(message_type or "")
    if cls is None:
        raise UnknownMessageType(f"unknown message type {message_type!r}")
    return cls.model_validate_json(body)


def signals_in(message: Message) -> list[SignalReceivedV1]:
    """The signals a message of the signals queue carries: one, or a batch's, in order."""
    if isinstance(message, SignalBatchV1):
        return list(message.signals)
    if isinstance(message, SignalReceivedV1):
        return [message]
    return []


def encode(message: Message) -> bytes:
    return message.model_dump_json().encode()
