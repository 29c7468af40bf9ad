"""Trade events as short HTML messages for Telegram. Every dynamic value is escaped."""

from __future__ import annotations

from decimal import Decimal
from html import escape

from shared.contracts import (
    FlattenedV1,
    KillSwitchChangedV1,
    KillSwitchTripV1,
    PositionDriftV1,
    Message,
    OrderFailedV1,
    OrderFilledV1,
    OrderPlacedV1,
    SignalExpiredV1,
    SignalRejectedV1,
    SignalSkippedV1,
)


def _ref(signal_id: str) -> str:
    return escape(signal_id if len(signal_id) <= 16 else signal_id[:14] + "…")


def _num(value: Decimal | None) -> str:
    if value is None:
        return "?"
    text = format(value.normalize(), "f")
    return escape(text)


def render(event: Message) -> str | None:
    """The message for an event, or None for events that are not told to the trader."""
    if isinstance(event, OrderPlacedV1):
        verb = "CLOSE" if event.reduce_only else event.side.upper()
        if event.average is not None:
            price = f" @ {_num(event.average)}"
        elif event.price is not None:
            price = f" limit @ {_num(event.price)}"
        else:
            price = ""
        protection = " · ".join(f"{name} {_num(value)}" for name, value in (("SL", event.stop_loss), ("TP", event.take_profit))
                                if value is not None)
        return (
            f"✅ <b>{escape(verb)}</b> {_num(event.amount)} {escape(event.symbol)}{price}\n"
            + (f"{protection}\n" if protection else "")
            + f"order {escape(event.order_id)} · {escape(event.status or 'sent')} · signal <code>{_ref(event.signal_id)}</code>"
        )
    if isinstance(event, OrderFilledV1):
        part = "" if event.filled == event.amount else f" of {_num(event.amount)}"
        return (
            f"🎯 <b>FILLED</b> {escape(event.side.upper())} {_num(event.filled)}{part} {escape(event.symbol)} @ {_num(event.average)}\n"
            f"order {escape(event.order_id)} · signal <code>{_ref(event.signal_id)}</code>"
        )
    if isinstance(event, OrderFailedV1):
        return (
            f"❌ <b>Order failed</b> {escape(event.action.value)} {escape(event.symbol)}\n"
            f"{escape(event.reason)}\nsignal <code>{_ref(event.signal_id)}</code>"
        )
    if isinstance(event, SignalSkippedV1):
        return (
            f"⏸ <b>Signal skipped</b> {escape(event.action.value)} {escape(event.symbol)}\n"
            f"{escape(event.reason)}\nsignal <code>{_ref(event.signal_id)}</code>"
        )
    if isinstance(event, SignalExpiredV1):
        return (
            f"⌛ <b>Signal expired</b> {escape(event.action.value)} {escape(event.symbol)}\n"
            f"{event.age_s:.1f}s old, max lag {event.max_lag_s:.0f}s; parked for replay\nsignal <code>{_ref(event.signal_id)}</code>\n"
            f"to run it now: <code>POST /bot/signals/{escape(event.signal_id)}/replay</code>"
        )
    if isinstance(event, SignalRejectedV1):
        return (
            f"🚫 <b>Alert refused</b> (token {escape(event.token_name)}, HTTP {event.status})\n{escape(event.reason)}\n"
            "TradingView shows nothing of this: correct the alert's message"
        )
    if isinstance(event, KillSwitchChangedV1):
        return (
            f"🛑 <b>Kill switch: {escape(event.mode.value)}</b> (v{event.version})\n"
            f"by {escape(event.actor)}: {escape(event.reason)}"
        )
    if isinstance(event, PositionDriftV1):
        claimed = escape(event.claimed_side) + (f" {_num(event.claimed_size)}" if event.claimed_size is not None else "")
        return (
            f"⚠️ <b>Position drift</b> {escape(event.symbol)}\n"
            f"the strategy says {claimed}; BingX holds long {_num(event.venue_long)}, short {_num(event.venue_short)}\n"
            f"signal <code>{_ref(event.signal_id)}</code>"
        )
    if isinstance(event, FlattenedV1):
        lines = [f"🧹 <b>Flatten {'done' if event.complete else 'INCOMPLETE: check BingX'}</b> (v{event.version}, by {escape(event.actor)})"]
        if event.closed:
            lines.append("closed " + ", ".join(f"{escape(p.symbol)} {p.side} {_num(p.amount)}" for p in event.closed))
        if event.cancelled_symbols:
            lines.append("orders cancelled on " + ", ".join(escape(s) for s in event.cancelled_symbols))
        if not event.closed and not event.cancelled_symbols and not event.remaining:
            lines.append("nothing was open")
        if event.remaining:
            lines.append("still open " + ", ".join(f"{escape(p.symbol)} {p.side} {_num(p.amount)}" for p in event.remaining))
        lines.extend(escape(error) for error in event.errors[:5])
        lines.append("trading stays halted")
        return "\n".join(lines)
    if isinstance(event, KillSwitchTripV1):
        # Told at once, whether or not the control service is there to make it the state.
        return (
            f"🚨 <b>{escape(event.severity)}: the {escape(event.actor)} stopped trading ({escape(event.mode.value)})</b>\n"
            f"{escape(event.reason)}"
        )
    return None
