"""Bare aiohttp webhook handlers, the baselines of `make bench`: `parse` only, or `publish` with a publisher confirm."""

from __future__ import annotations

import argparse
import asyncio
import signal

import aio_pika
import orjson
import uvloop
from aiohttp import web

QUEUE = "bench.bare"
# Well inside TradingView's 3-second budget; a slower confirm is an error here, as it would be in the service.
PUBLISH_TIMEOUT_S = 2.5


def _json(status: int, body: dict) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


async def _parse_only(request: web.Request) -> web.Response:
    payload = orjson.loads(await request.read())
    return _json(200, {"status": "accepted", "signal_id": payload.get("id")})


def _publishing_handler(channel: aio_pika.abc.AbstractChannel):
    async def handler(request: web.Request) -> web.Response:
        raw = await request.read()
        payload = orjson.loads(raw)
        message = aio_pika.Message(
            body=raw,
            content_type="application/json",
            message_id=str(payload.get("id")),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        try:
            # With publisher_confirms the awaited publish returns only once the broker has confirmed the message.
            await channel.default_exchange.publish(message, routing_key=QUEUE, timeout=PUBLISH_TIMEOUT_S)
        except (asyncio.TimeoutError, aio_pika.exceptions.AMQPError, ConnectionError) as error:
            return _json(503, {"status": "unavailable", "reason": type(error).__name__})
        return _json(200, {"status": "accepted", "signal_id": payload.get("id")})

    return handler


async def _ready(request: web.Request) -> web.Response:
    return _json(200, {"status": "ready"})


async def main(mode: str, port: int, amqp_url: str | None) -> None:
    connection = None
    app = web.Application()
    app.router.add_get("/readyz", _ready)
    if mode == "publish":
        if not amqp_url:
            raise SystemExit("--amqp-url is required in publish mode")
        connection = await aio_pika.connect_robust(amqp_url, client_properties={"connection_name": "bench-bare"})
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
        app.router.add_post("/webhook/tradingview", _publishing_handler(channel))
    else:
        app.router.add_post("/webhook/tradingview", _parse_only)

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await stop.wait()
    finally:
        await runner.cleanup()
        if connection is not None:
            await connection.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=("parse", "publish"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--amqp-url")
    arguments = parser.parse_args()
    uvloop.run(main(arguments.mode, arguments.port, arguments.amqp_url))
