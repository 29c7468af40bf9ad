"""Process lifecycle: run on uvloop, stop cleanly on SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)


async def run_until_stopped(service: str) -> None:
    """Return when the process is asked to stop; the caller then closes in reverse start order."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("started", extra={"event": "started"})
    await stop.wait()
    log.info("stopping", extra={"event": "stopping"})


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    try:
        import uvloop
    except ImportError:  # uvloop is pinned; this only keeps a bare interpreter working
        asyncio.run(main())
    else:
        uvloop.run(main())
