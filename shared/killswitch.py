"""The kill switch as every service sees it: the highest version read from the `tvtb.control` stream.

A service that has not learned the state yet knows nothing, and so does not trade (fail closed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from datetime import datetime

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from prometheus_client import CollectorRegistry, Gauge

from shared.contracts import KillSwitchChangedV1, KillSwitchMode, Message
from shared.messaging import CONTROL_STREAM, Consumer

log = logging.getLogger(__name__)

Listener = Callable[[KillSwitchChangedV1 | None], None]


class KillSwitchView:
    """Keeps the highest version seen; older or repeated versions are ignored."""

    def __init__(self) -> None:
        self.state: KillSwitchChangedV1 | None = None
        self.known = asyncio.Event()
        self._listeners: list[Listener] = []

    @property
    def mode(self) -> KillSwitchMode | None:
        """The mode in force, or None while it is not known (before the first read, or after losing the broker)."""
        return self.state.mode if self.state is not None and self.known.is_set() else None

    def forget(self) -> None:
        """The link to the stream was lost: changes may have been missed, so trade nothing until it is read again.

        The highest version is kept, so a stale version still cannot win when the stream is read again.
        """
        if self.known.is_set():
            log.warning("kill switch state unknown until the control stream is read again")
        self.known.clear()
        for listener in self._listeners:
            listener(None)

    def on_change(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def apply(self, change: KillSwitchChangedV1) -> bool:
        if self.state is not None and change.version <= self.state.version:
            if change.version == self.state.version and not self.known.is_set():
                self.known.set()  # re-read after a reconnect: the state we had is confirmed current
                for listener in self._listeners:
                    listener(self.state)
            return False
        previous, self.state = self.state, change
        self.known.set()
        log.info(
            "kill switch state learned",
            extra={"mode": change.mode.value, "version": change.version, "previous_mode": previous.mode.value if previous else None},
        )
        for listener in self._listeners:
            listener(change)
        return True

    def describe(self) -> dict:
        if self.state is None:
            return {"killswitch": {"known": False}}
        return {"killswitch": {"known": self.known.is_set(), "mode": self.state.mode.value, "version": self.state.version}}


def refused_since(versions: Iterable[KillSwitchChangedV1], at: datetime,
                  refuses: Callable[[KillSwitchMode], bool]) -> KillSwitchChangedV1 | None:
    """Of the kill switch's versions (in version order: the one in force at `at` and every later one), the latest
    that `refuses`, unless a forced turn-on came after it; None when none did.

    A signal that arrived before or during such a version and is reached only after it was, in effect, in the
    backlog that turning trading back on must not run unless forced (DESIGN.md, kill switch): a consumer holding
    several signals has some in hand that the broker no longer counts as waiting. Only a forced version that turned
    trading on from a refusing mode lets what waited run; a forced change of anything else does not.
    """
    refusing, previous = None, None
    for version in versions:
        if previous is not None and version.changed_at <= at:
            refusing = None  # the one before was over before the signal arrived
        if refuses(version.mode):
            refusing = version
        elif version.forced and previous is not None and refuses(previous.mode):
            refusing = None  # someone turned trading on knowing that signals waited: they run
        previous = version
    return refusing


def stream_reader(channel: AbstractChannel, view: KillSwitchView, *, connection: AbstractRobustConnection | None = None) -> Consumer:
    """A consumer of the control stream from offset `last`, so a late joiner learns the current state at once.

    When the connection is lost the view forgets the mode; the robust connection re-consumes from `last`
    after reconnecting, which confirms or updates it.
    """
    if connection is not None:
        connection.close_callbacks.add(lambda *_: view.forget())

    async def handle(message: Message, raw: AbstractIncomingMessage) -> None:
        if isinstance(message, KillSwitchChangedV1):
            view.apply(message)

    return Consumer(
        channel=channel,
        queue_name=CONTROL_STREAM,
        handler=handle,
        prefetch=100,
        name="killswitch",
        stream=True,
        consume_arguments={"x-stream-offset": "last"},
    )


async def follow(connection: AbstractRobustConnection) -> tuple[KillSwitchView, Consumer]:
    """A view of the kill switch kept from the control stream, for a service that only shows it (the ingress, the
    notifier): started here; the caller stops the returned reader."""
    view = KillSwitchView()
    reader = stream_reader(await connection.channel(), view, connection=connection)
    await reader.start()
    return view, reader


def expose_mode(registry: CollectorRegistry, view: KillSwitchView) -> None:
    """`tvtb_killswitch_mode{mode}`: 1 for the mode this service believes, 0 for the others (all 0 while unknown)."""
    gauge = Gauge("tvtb_killswitch_mode", "Kill-switch mode this service believes (1 for the current one)", ["mode"], registry=registry)

    def show(_state: KillSwitchChangedV1 | None) -> None:
        for mode in KillSwitchMode:
            gauge.labels(mode.value).set(1 if view.mode is mode else 0)

    show(None)
    view.on_change(show)
