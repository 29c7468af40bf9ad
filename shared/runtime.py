"""Process lifecycle: run on uvloop, stop cleanly on SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)


def raise_if_cancelling() -> None:
    """Re-raise a cancellation that a library turned into its own error (PyMongo does, waiting on a dead server).

    A background loop that catches Exception to retry would otherwise never stop, and shutdown would hang.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def settle_heap() -> None:
    """Move what start-up built (modules, classes, schemas, clients) out of the garbage collector's sight.

    A full collection walks every tracked object: measured under load on the ingress, one took 38 ms, all of it in
    a request's latency. Frozen objects are never walked again; what requests create is collected as before.
    """
    gc.collect()
    gc.freeze()


async def run_until_stopped(service: str) -> None:
    """Return when the process is asked to stop; the caller then closes in reverse start order."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("started", extra={"event": "started"})
    await stop.wait()
    log.info("stopping", extra={"event": "stopping"})


class ConnectionCap:
    """Closes a new connection at once, before a byte of it is read, while `limit` connections are open.

    aiohttp has no cap of its own: without one a flood of idle sockets would run the process out of descriptors.
    """

    WARN_EVERY_S = 10.0

    def __init__(self, server: web.Server, limit: int) -> None:
        self.limit = limit
        self.refused = 0
        self._server = server
        self._accepted: set[object] = set()
        self._made, self._lost = server.connection_made, server.connection_lost
        self._warned_at = -self.WARN_EVERY_S
        # The handlers call these on their manager; wrapping the instance's keeps aiohttp's own bookkeeping intact.
        server.connection_made = self._connection_made  # type: ignore[method-assign]
        server.connection_lost = self._connection_lost  # type: ignore[method-assign]

    @property
    def open(self) -> int:
        return len(self._accepted)

    def _connection_made(self, handler, transport: asyncio.Transport) -> None:
        if len(self._accepted) >= self.limit:
            self.refused += 1
            now = time.monotonic()
            if now - self._warned_at >= self.WARN_EVERY_S:
                self._warned_at = now
                log.warning("connection refused: too many open", extra={"open": len(self._accepted), "limit": self.limit,
                                                                        "refused_total": self.refused})
            transport.abort()
            return
        self._accepted.add(handler)
        self._made(handler, transport)

    def _connection_lost(self, handler, exc: BaseException | None = None) -> None:
        if handler in self._accepted:
            self._accepted.discard(handler)
            self._lost(handler, exc)


async def start_server(app: web.Application, host: str, port: int, *, idle_timeout_s: float = 5.0,
                       max_connections: int = 1000) -> tuple[web.AppRunner, ConnectionCap]:
    """Listen on host:port with the limits against slow clients.

    aiohttp's keep-alive timer runs from the moment a connection opens until a whole request head has arrived, and
    again between requests: with `idle_timeout_s` it closes a connection that trickles its headers or sends nothing
    (aiohttp's default is an hour). A body that is slow to arrive is the handlers' business (the ingress gives 2 s).
    """
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=idle_timeout_s)
    await runner.setup()
    assert runner.server is not None
    cap = ConnectionCap(runner.server, max_connections)
    await web.TCPSite(runner, host, port).start()
    return runner, cap


async def serve(app: web.Application, host: str, port: int, service: str, *, idle_timeout_s: float = 5.0,
                max_connections: int = 1000) -> None:
    """Serve `app` until SIGTERM or SIGINT, then stop taking requests; the caller closes what the app used."""
    settle_heap()
    runner, _ = await start_server(app, host, port, idle_timeout_s=idle_timeout_s, max_connections=max_connections)
    try:
        await run_until_stopped(service)
    finally:
        await runner.cleanup()


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    try:
        import uvloop
    except ImportError:  # uvloop is pinned; this only keeps a bare interpreter working
        asyncio.run(main())
    else:
        uvloop.run(main())
