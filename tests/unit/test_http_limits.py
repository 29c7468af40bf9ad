"""Slow and hostile clients against a real listening socket: closed in time, capped in number, others still served."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from shared.runtime import start_server
from tests.support import free_port


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> float | None:
    """Seconds until the server closed the connection (EOF or reset), or None if it stayed open for `within`."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(within):
            while await reader.read(1024):
                pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - started


async def get(port: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status_line = await asyncio.wait_for(reader.readline(), 5)
        return int(status_line.split()[1])
    finally:
        writer.close()


async def server(**limits):
    app = web.Application()
    app.router.add_get("/", ok)
    port = free_port()
    runner, cap = await start_server(app, "127.0.0.1", port, **limits)
    return runner, cap, port


async def test_a_client_trickling_its_headers_is_cut_off_while_others_are_served():
    runner, _, port = await server(idle_timeout_s=1.0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /webhook/tradingview HTTP/1.1\r\nHost: x\r\n")

        async def trickle() -> None:  # one header byte every 100 ms, never finishing the head
            for _ in range(100):
                writer.write(b"X")
                await asyncio.sleep(0.1)

        trickling = asyncio.create_task(trickle())
        assert await get(port) == 200  # served meanwhile
        after = await closed_by_server(reader, within=5.0)
        trickling.cancel()
        writer.close()
        assert after is not None and after < 2.0, after  # aiohttp's default would have kept it for an hour
    finally:
        await runner.cleanup()


async def test_a_connection_that_sends_nothing_is_closed():
    runner, _, port = await server(idle_timeout_s=0.5)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await closed_by_server(reader, within=5.0) is not None
        writer.close()
    finally:
        await runner.cleanup()


async def test_beyond_the_cap_new_connections_are_closed_at_once_and_service_resumes_when_they_go():
    runner, cap, port = await server(idle_timeout_s=30.0, max_connections=5)
    try:
        hogs = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
        deadline = time.monotonic() + 5
        while cap.open < 5:  # the server registers each as the loop gets to it
            assert time.monotonic() < deadline, f"only {cap.open} connections registered"
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await closed_by_server(reader, within=2.0) is not None
        writer.close()
        assert cap.refused >= 1
        for _, hog in hogs:
            hog.close()
        deadline = time.monotonic() + 5
        while True:  # the slots come back as the server sees the hogs go
            try:
                if await get(port) == 200:
                    break
            except (ConnectionError, ValueError, IndexError, TimeoutError):
                pass
            assert time.monotonic() < deadline, "the server did not serve again after the connections closed"
            await asyncio.sleep(0.05)
        assert cap.open <= 1
    finally:
        await runner.cleanup()
