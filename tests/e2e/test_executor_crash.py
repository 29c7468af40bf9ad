"""The executor killed (SIGKILL) after BingX took its order and before it recorded it: restarted, it finds the order
at BingX by its client order id and records it, and never sends it twice."""

from __future__ import annotations

from decimal import Decimal

import aiohttp
import pytest

from services.executor import domain
from shared import messaging
from shared.contracts import SignalReceivedV1, utcnow
from tests.bingx_sim_support import make_ccxt
from tests.e2e.stack import BINGX_KEY, BINGX_SECRET, Stack
from tests.support import wait_for

pytestmark = pytest.mark.e2e
BTC = "BTC/USDT:USDT"


async def test_an_executor_killed_between_sending_and_recording_places_the_order_once(amqp_url, mongo_uri, mongo_db_name,
                                                                                       mongo_db, tmp_path):
    stack = Stack(amqp_url=amqp_url, mongo_uri=mongo_uri, mongo_db=mongo_db_name, logs=tmp_path)
    venue = make_ccxt(stack.url("bingx_sim"), BINGX_KEY, BINGX_SECRET, sandbox=False)
    connection = await messaging.connect(amqp_url, "e2e-publisher")
    try:
        for name in ("bingx_sim", "control", "executor"):
            stack.start(name)
            await stack.ready(name)
        # BingX carries the order out at once but answers 8 s later: the executor is still waiting when it dies.
        async with aiohttp.ClientSession() as session:
            fault = {"kind": "late_answer", "ms": 8000, "path": "/openApi/swap/v2/trade/order", "method": "POST", "count": 1}
            async with session.post(stack.url("bingx_sim", "/_sim/faults"), json=fault) as response:
                assert response.status == 200, await response.text()
        signal = SignalReceivedV1(signal_id="crash-e2e-1", token_name="e2e", symbol=BTC, action="buy", qty=Decimal("0.01"),
                                  received_at=utcnow())
        publisher = await messaging.Publisher.open(connection)
        await publisher.publish(signal, exchange=messaging.SIGNALS_EXCHANGE, message_id=signal.signal_id)

        async def at_the_venue_only() -> bool:
            document = await mongo_db.signals.find_one({"_id": signal.signal_id})
            return bool(document and document["status"] == "submitting" and await venue.fetch_closed_orders(BTC))

        await wait_for(at_the_venue_only, timeout=10, what="the order to be at BingX and not yet recorded")
        stack.kill("executor")
        assert await mongo_db.orders.count_documents({}) == 0

        stack.start("executor")

        async def placed() -> dict | None:
            document = await mongo_db.signals.find_one({"_id": signal.signal_id})
            return document if document and document["status"] == "placed" else None

        document = await wait_for(placed, timeout=30, what="the restarted executor to record the order")
        [order] = await venue.fetch_closed_orders(BTC)
        assert order["clientOrderId"] == domain.client_order_id(signal.signal_id) and order["amount"] == 0.01
        assert document["order_id"] == order["id"]
        assert await mongo_db.orders.count_documents({"signal_id": signal.signal_id}) == 1
        position = [p for p in await venue.fetch_positions([BTC]) if p["contracts"]]
        assert [(p["side"], p["contracts"]) for p in position] == [("long", 0.01)]
    finally:
        await connection.close()
        await venue.close()
        await stack.stop_all()
