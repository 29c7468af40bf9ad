"""Events to chats within Telegram's limits: per-chat queues, token buckets, digests, flood waits, each event once.

An event is rendered and queued for each of its chats at once, in the order the broker delivered it; its message is
acked only when every chat has it (sent, or refused for good), so while Telegram is away events wait, unacked, in
the notifier's queue and go out in order when it is back. Each chat has one sender. It sends when the buckets allow:
1 message/s per chat, 20/min for a group or channel, 25/s overall (Telegram's unofficial bot limits). What piled up
meanwhile goes out as one digest, one line per event, split into messages of at most 4,096 characters on line
breaks: a burst is coalesced, never dropped. A flood wait (`DeliveryDelayed.retry_after`) pauses that chat for as
long as Telegram asked. Each (event, chat) is recorded in `notifications`; one already sent is not sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from html import escape, unescape

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind
from pymongo import UpdateOne
from pymongo.errors import PyMongoError

from services.notifier.format import render
from services.notifier.handlers import LOG_CHAT, NotifierDeps
from services.notifier.messenger import DeliveryDelayed, DeliveryFailed
from shared.contracts import KillSwitchTripV1, Message, utcnow

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("tvtb.telegram")

MAX_MESSAGE = 4096
PER_CHAT = (1.0, 1.0)  # messages per second, burst
PER_GROUP = (20 / 60, 1.0)  # a group or channel (negative id): 20 a minute
OVERALL = (25.0, 5.0)
GIVE_UP_AFTER = 3  # an event whose sending fails for an unexpected reason this many times in a row is recorded failed
MAX_DIGEST_EVENTS = 500  # per digest; what is left waits for the next one


class Route(StrEnum):
    ON = "on"
    SILENT = "silent"  # delivered without a sound
    OFF = "off"


# Event kinds as NOTIFY_EVENTS names them.
KINDS = {"placed": "OrderPlacedV1", "filled": "OrderFilledV1", "failed": "OrderFailedV1", "skipped": "SignalSkippedV1",
         "expired": "SignalExpiredV1", "drift": "PositionDriftV1", "killswitch": "KillSwitchChangedV1",
         "trip": "KillSwitchTripV1", "flatten": "FlattenedV1", "rejected": "SignalRejectedV1"}


def route_of(event: Message, routes: dict[str, Route]) -> Route:
    """How an event goes out; a SEV1 trip always goes, with its sound."""
    if isinstance(event, KillSwitchTripV1) and event.severity == "SEV1":
        return Route.ON
    for kind, type_name in KINDS.items():
        if type_name == event.TYPE:
            return routes.get(kind, Route.ON)
    return Route.ON


class TokenBucket:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.updated = time.monotonic()

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def wait(self, now: float) -> float:
        """Seconds until a token is there (0: now)."""
        self._refill(now)
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def take(self, now: float) -> None:
        self._refill(now)
        self.tokens -= 1


@dataclass(eq=False)
class _Tracker:
    """One event across its chats: resolved when none is left."""

    left: int
    done: asyncio.Future


@dataclass(eq=False)
class _Item:
    event_id: str
    signal_id: str | None
    type: str
    text: str
    silent: bool
    tracker: _Tracker
    trace: Context | None = None  # the event's trace, which its message continues
    parts_sent: int = 0  # of a long message split in parts: a flood wait midway resumes after these
    failures: int = 0  # unexpected failures in a row


@dataclass
class _Chat:
    chat_id: int
    bucket: TokenBucket
    group: TokenBucket | None
    items: deque[_Item] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None


def split_message(text: str, limit: int = MAX_MESSAGE) -> list[str]:
    """At most `limit` characters each, cut on line breaks. A line longer than that (a long reason) goes as plain
    text cut at spaces, so no cut lands inside a tag, between a tag and its end, or inside an entity."""
    chunks: list[str] = []
    current = ""
    for line in text.split("\n"):
        if len(line) > limit:
            if current:
                chunks.append(current)
                current = ""
            chunks.extend(_plain_pieces(line, limit))
            continue
        candidate = f"{current}\n{line}" if current else line
        if len(candidate) > limit:
            chunks.append(current)
            current = line
        else:
            current = candidate
    if current:
        chunks.append(current)
    return chunks


def _plain_pieces(line: str, limit: int) -> list[str]:
    plain = unescape(_TAGS.sub("", line))
    pieces: list[str] = []
    while plain:
        size = limit
        while True:  # escaping lengthens the text: shrink the cut until the escaped piece fits
            cut = size if len(plain) <= size else (plain.rfind(" ", 0, size) if plain.rfind(" ", 0, size) > 0 else size)
            piece = escape(plain[:cut], quote=False)
            if len(piece) <= limit:
                break
            size = max(size // 2, 1)
        pieces.append(piece)
        plain = plain[cut:].lstrip(" ")
    return pieces


_TAGS = re.compile(r"<[^>]+>")


# In a digest these keep their whole text (the reason is the point); the rest get one line each.
WHOLE_IN_DIGEST = {"SignalRejectedV1", "SignalSkippedV1", "OrderFailedV1", "KillSwitchTripV1", "KillSwitchChangedV1",
                   "PositionDriftV1", "FlattenedV1", "SignalExpiredV1"}


def digest_entry(item: "_Item", room: int) -> str:
    """An event in a digest: its text, whole lines only, as much as fits in `room` when it matters; else the first
    line of its message, which names what happened, with its signal."""
    lines = item.text.split("\n")
    if item.type in WHOLE_IN_DIGEST:
        kept: list[str] = []
        for line in lines:
            if len("\n".join([*kept, line])) > room:
                break
            kept.append(line)
        if kept:
            return "\n".join(kept)
    first = lines[0]
    line = f"{first} · <code>{escape(item.signal_id)}</code>" if item.signal_id else first
    return line if len(line) <= room else _plain_pieces(first, room)[0]


class Dispatcher:
    def __init__(self, deps: NotifierDeps, *, routes: dict[str, str] | None = None, per_chat: tuple[float, float] = PER_CHAT,
                 per_group: tuple[float, float] = PER_GROUP, overall: tuple[float, float] = OVERALL) -> None:
        self.deps = deps
        self.routes = {kind: Route(route) for kind, route in (routes or {}).items()}
        self._per_chat, self._per_group = per_chat, per_group
        self._overall = TokenBucket(*overall)
        self._chats: dict[int, _Chat] = {}
        self._closing = False

    def submit(self, event: Message, event_id: str) -> asyncio.Future | None:
        """Queue an event for its chats, now, in arrival order; the future resolves once every chat has it."""
        if self._closing:  # the handler gets a cancelled future: the event goes back to the queue
            cancelled = asyncio.get_running_loop().create_future()
            cancelled.cancel()
            return cancelled
        text = render(event)
        route = route_of(event, self.routes)
        if text is None or route is Route.OFF:
            return None
        chats = self.deps.chat_ids or (LOG_CHAT,)
        tracker = _Tracker(len(chats), asyncio.get_running_loop().create_future())
        for chat_id in chats:
            chat = self._chat(chat_id)
            chat.items.append(_Item(event_id, getattr(event, "signal_id", None), event.TYPE, text, route is Route.SILENT, tracker,
                                    trace=otel_context.get_current()))
            chat.wake.set()
        self.deps.metrics.queued.inc(len(chats))
        return tracker.done

    async def close(self) -> None:
        """Stop sending; events not yet told go back to the queue (their handlers are cancelled, so unacked)."""
        self._closing = True
        tasks = [chat.task for chat in self._chats.values() if chat.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for chat in self._chats.values():
            for item in chat.items:
                if not item.tracker.done.done():
                    item.tracker.done.cancel()
            chat.items.clear()

    @property
    def waiting(self) -> int:
        return sum(len(chat.items) for chat in self._chats.values())

    def _chat(self, chat_id: int) -> _Chat:
        chat = self._chats.get(chat_id)
        if chat is None:
            chat = _Chat(chat_id, TokenBucket(*self._per_chat), TokenBucket(*self._per_group) if chat_id < 0 else None)
            self._chats[chat_id] = chat
        if chat.task is None or chat.task.done():  # a sender that died (a bug) is started again
            if chat.task is not None and not chat.task.cancelled() and chat.task.exception() is not None:
                log.error("a chat's sender stopped; starting it again", exc_info=chat.task.exception())
            chat.task = asyncio.get_running_loop().create_task(self._run(chat), name=f"notify-{chat_id}")
        return chat

    async def _token(self, chat: _Chat) -> None:
        while True:
            now = time.monotonic()
            wait = max(chat.bucket.wait(now), chat.group.wait(now) if chat.group else 0.0, self._overall.wait(now))
            if wait <= 0:
                chat.bucket.take(now)
                if chat.group:
                    chat.group.take(now)
                self._overall.take(now)
                return
            await asyncio.sleep(wait)

    async def _run(self, chat: _Chat) -> None:
        while True:
            await chat.wake.wait()
            chat.wake.clear()
            while chat.items:
                await self._token(chat)
                try:
                    await self._send_some(chat)
                except asyncio.CancelledError:
                    raise
                except DeliveryDelayed as error:
                    self.deps.metrics.notifications.labels("delayed").inc()
                    log.warning("telegram asked to wait; this chat's notifications wait in order",
                                extra={"chat_id": chat.chat_id, "retry_in_s": error.retry_after, "reason": error.reason})
                    await asyncio.sleep(max(error.retry_after, 0.1))
                except PyMongoError as error:  # the database away: the items stay, in order, tried again shortly
                    log.warning("notifications not handled yet: the database did not answer",
                                extra={"chat_id": chat.chat_id, "error": f"{type(error).__name__}: {error}"[:300]})
                    await asyncio.sleep(1.0)
                except Exception as error:  # a bug: the event at the head must not hold the chat for ever
                    head = chat.items[0] if chat.items else None
                    log.exception("sending a notification failed unexpectedly", extra={"chat_id": chat.chat_id})
                    if head is not None:
                        head.failures += 1
                        if head.failures >= GIVE_UP_AFTER:
                            self.deps.metrics.notifications.labels("failed").inc()
                            await self._settle(chat, [head], {"chat_id": chat.chat_id, "messenger": self.deps.messenger.name,
                                                              "at": utcnow(), "sent": False,
                                                              "error": f"{type(error).__name__}: {error}"[:300]})
                    await asyncio.sleep(1.0)

    async def _send_some(self, chat: _Chat) -> None:
        """Send what is queued for the chat: alone when it is one event (or the rest of a long one), else a digest.
        On DeliveryDelayed what was not sent stays at the front of the queue, in order."""
        head = chat.items[0]
        batch = [head] if head.parts_sent else [chat.items[i] for i in range(min(len(chat.items), MAX_DIGEST_EVENTS))]
        # Each (event, chat) once: sent before (a redelivery), or twice in this batch.
        sent_before = {d["event_id"] async for d in self.deps.db.notifications.find(
            {"chat_id": chat.chat_id, "event_id": {"$in": list({i.event_id for i in batch})}, "sent": True}, {"event_id": 1})}
        fresh: list[_Item] = []
        twins: list[_Item] = []
        for item in batch:
            (twins if item.event_id in sent_before or any(f.event_id == item.event_id for f in fresh) else fresh).append(item)
        if twins:
            self.deps.metrics.notifications.labels("duplicate").inc(len(twins))
        if len(fresh) == 1:
            await self._send_alone(chat, fresh[0])
        elif fresh:
            await self._send_digest(chat, fresh)
        self._resolve(chat, twins)  # their event's outcome is recorded now

    def _record_fields(self, chat: _Chat, **fields: object) -> dict:
        return {"chat_id": chat.chat_id, "messenger": self.deps.messenger.name, "at": utcnow(), **fields}

    async def _send_alone(self, chat: _Chat, item: _Item) -> None:
        """One event's own message, in parts if long; after a flood wait midway, the parts not yet sent."""
        parts = split_message(item.text)
        for number in range(item.parts_sent, len(parts)):
            if number > item.parts_sent:
                await self._token(chat)  # the first part of a round uses the token already taken
            try:
                # Inside the event's trace: the alert's trace ends with the message that told it.
                with _tracer.start_as_current_span("telegram send", context=item.trace, kind=SpanKind.CLIENT) as span:
                    span.set_attribute("telegram.chat_id", chat.chat_id)
                    await self.deps.messenger.send(chat.chat_id, parts[number], silent=item.silent)
            except DeliveryFailed as error:
                self.deps.metrics.notifications.labels("failed").inc()
                log.error("notification failed", extra={"chat_id": chat.chat_id, "reason": error.reason})
                await self._settle(chat, [item], self._record_fields(chat, sent=False, error=error.reason, digest=None))
                return
            item.parts_sent = number + 1
        self.deps.metrics.notifications.labels("sent").inc()
        await self._settle(chat, [item], self._record_fields(chat, sent=True, error=None, digest=None))

    async def _send_digest(self, chat: _Chat, items: list[_Item]) -> None:
        for number, (part, text, silent) in enumerate(self._messages(items)):
            if number:
                await self._token(chat)
            # One message for many events: a span of its own, linked to each event's trace.
            links = [Link(trace.get_current_span(item.trace).get_span_context()) for item in part if item.trace is not None]
            try:
                with _tracer.start_as_current_span("telegram send digest", context=Context(), links=links, kind=SpanKind.CLIENT) as span:
                    span.set_attribute("telegram.chat_id", chat.chat_id)
                    span.set_attribute("telegram.events", len(part))
                    await self.deps.messenger.send(chat.chat_id, text, silent=silent)
            except DeliveryFailed as error:
                self.deps.metrics.notifications.labels("failed").inc(len(part))
                log.error("notification failed", extra={"chat_id": chat.chat_id, "reason": error.reason, "events": len(part)})
                await self._settle(chat, part, self._record_fields(chat, sent=False, error=error.reason, digest=len(items)))
                continue
            self.deps.metrics.notifications.labels("sent").inc(len(part))
            await self._settle(chat, part, self._record_fields(chat, sent=True, error=None, digest=len(items)))

    async def _settle(self, chat: _Chat, items: list[_Item], fields: dict) -> None:
        """Told (or refused for good): out of the queue at once, so never sent again, then recorded (retried until the
        database takes it), then acked once every chat has it."""
        for item in items:
            with contextlib.suppress(ValueError):
                chat.items.remove(item)
        delay = 0.5
        try:
            while True:
                try:
                    await self._record(items, fields)
                    break
                except PyMongoError as error:
                    log.warning("notification outcome not recorded yet", extra={"chat_id": chat.chat_id, "error": type(error).__name__})
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
        except asyncio.CancelledError:
            # Stopping (close()) before the outcome was recorded: these items have left the queue, where close() looks
            # for what was not told, so their events are given back here. Unrecorded, a chat may see one again after
            # the restart; without this the events' handlers waited for ever and the notifier never stopped.
            for item in items:
                if not item.tracker.done.done():
                    item.tracker.done.cancel()
            raise
        for item in items:
            self._count_down(item)

    def _resolve(self, chat: _Chat, items: list[_Item]) -> None:
        for item in items:
            with contextlib.suppress(ValueError):
                chat.items.remove(item)
            self._count_down(item)

    @staticmethod
    def _count_down(item: _Item) -> None:
        item.tracker.left -= 1
        if item.tracker.left == 0 and not item.tracker.done.done():
            item.tracker.done.set_result(None)

    def _messages(self, items: list[_Item]) -> list[tuple[list[_Item], str, bool]]:
        """A digest of whole events, split into messages of at most 4,096 characters, each with the events it
        carries and whether it goes silently (only when all of them are silent)."""
        title = f"📋 <b>{len(items)} events</b> while messages were held back (Telegram's limits)"
        messages: list[tuple[list[_Item], str, bool]] = []
        part: list[_Item] = []
        text = title
        for item in items:
            line = digest_entry(item, MAX_MESSAGE - len(title) - 20)
            if part and len(text) + 1 + len(line) > MAX_MESSAGE:
                messages.append((part, text, all(i.silent for i in part)))
                part, text = [], f"{title} (continued)"
            part.append(item)
            text = f"{text}\n{line}"
        messages.append((part, text, all(i.silent for i in part)))
        self.deps.metrics.digests.inc()
        return messages

    async def _record(self, items: list[_Item], fields: dict) -> None:
        operations = [UpdateOne({"event_id": item.event_id, "chat_id": fields["chat_id"]},
                                {"$set": {**fields, "signal_id": item.signal_id, "type": item.type}}, upsert=True)
                      for item in items]
        if operations:
            await self.deps.db.notifications.bulk_write(operations, ordered=False)
