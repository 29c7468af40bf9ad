"""Process lifecycle: run on uvloop, stop cleanly on SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
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


async def run_until_stopped(service: str) -> None:
    """Return when the process is asked to stop; the caller then closes in reverse start order."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("started", extra={"event": "started"})
    await stop.wait()
    log.info("stopping", extra={"event": "stopping"})


async def serve(app: web.Application, host: str, port: int, service: str) -> None:
    """Serve `app` until SIGTERM or SIGINT, then stop taking requests; the caller closes what the app used."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
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
