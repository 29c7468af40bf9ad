"""The services' HTTP server writes no access log: the webhook's path may hold a token
(`POST /webhook/tradingview/{token}`), and an access log line would carry it into the logs."""

from __future__ import annotations

import logging

import aiohttp
from aiohttp import web

from shared.runtime import start_server
from tests.support import free_port


async def test_a_request_with_a_token_in_its_path_leaves_no_log_record(caplog):
    caplog.set_level(logging.DEBUG)

    async def accept(request: web.Request) -> web.Response:
        return web.json_response({"status": "accepted"})

    app = web.Application()
    app.router.add_post("/webhook/tradingview/{token}", accept)
    port = free_port()
    runner, _ = await start_server(app, "127.0.0.1", port)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{port}/webhook/tradingview/path-token-0123456789") as response:
                assert response.status == 200
    finally:
        await runner.cleanup()
    assert not [r for r in caplog.records if "path-token-0123456789" in r.getMessage()]
    assert not [r for r in caplog.records if r.name == "aiohttp.access"]
