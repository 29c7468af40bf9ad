"""The network between the ingress and RabbitMQ cut and restored while alerts stream in (tests/proxy.py): the ingress
keeps answering 200 from its Mongo outbox, relays it once the broker is back, and the books balance."""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import pytest

from tests.faults.books import assert_clean
from tests.faults.harness import AlertStream, close_books, make_alerts, start_stack
from tests.proxy import TcpProxy
from tests.support import RABBIT_HOST, RABBIT_PORT

pytestmark = pytest.mark.e2e


async def outboxed(stack) -> float:
    async with aiohttp.ClientSession() as session, session.get(stack.url("ingress", "/metrics")) as response:
        text = await response.text()
    match = re.search(r"^tvtb_webhook_outbox_total (\S+)$", text, re.M)
    assert match, "the ingress shows no tvtb_webhook_outbox_total"
    return float(match.group(1))


async def test_broker_link_cut_and_restored_under_the_ingress(stack, mongo_db, amqp_url):
    proxy = await TcpProxy(RABBIT_HOST, RABBIT_PORT).start()
    try:
        stack.service_env["ingress"] = {"AMQP_URL": amqp_url.replace(f":{RABBIT_PORT}/", f":{proxy.port}/")}
        await start_stack(stack)
        started = time.monotonic()
        alerts = make_alerts("brokercut", 60)
        stream = AlertStream(stack, alerts, interval=0.04)
        sending = asyncio.create_task(stream.run())
        await stream.reached(12)
        proxy.cut()  # every AMQP connection of the ingress reset, new ones refused
        await stream.reached(42)  # 1.2 s of alerts with no broker
        proxy.restore()
        await sending

        books = await close_books(stack, mongo_db, amqp_url, alerts, "broker link cut under the ingress", started,
                                  outboxed=await outboxed(stack))
        assert_clean(books)
        assert books["accepted"] == books["sent"] == 60
        assert books["at_exchange"] == 60
        assert books["outboxed"] >= 10  # the cut was felt: those went through the outbox
    finally:
        if "ingress" in stack.processes:
            await stack.stop("ingress")  # while its broker is reachable: it would wait for it on the way out
        await proxy.stop()
