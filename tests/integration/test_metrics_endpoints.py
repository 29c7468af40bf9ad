"""GET /metrics on the executor's and the notifier's ports answers Prometheus text with the tvtb_ metrics."""

from __future__ import annotations

from decimal import Decimal

from aiohttp.test_utils import TestClient, TestServer

from services.executor.app import create_app as executor_app
from services.notifier.app import create_app as notifier_app
from services.notifier.bootstrap import build as build_notifier
from services.notifier.consumers import consuming as notifier_consuming
from services.notifier.messenger import LogMessenger
from services.notifier.settings import NotifierSettings
from shared import messaging
from shared.contracts import KillSwitchMode, OrderPlacedV1, utcnow
from tests.integration.test_executor import harness, venue  # noqa: F401 (venue is a fixture)
from tests.support import wait_for


async def test_the_executor_serves_its_metrics(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):  # noqa: F811
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        assert (await h.settled(await h.send(qty=Decimal("0.01"))))["status"] == "placed"
        async with TestClient(TestServer(executor_app(h.executor, h.consumer))) as client:
            async def counted() -> str | None:
                # The counter moves just after the record is written, so it is polled, not read once.
                response = await client.get("/metrics")
                assert response.status == 200 and response.content_type == "text/plain"
                text = await response.text()
                return text if 'tvtb_signals_total{outcome="placed"} 1.0' in text else None

            text = await wait_for(counted, what="the placed signal in /metrics")
    assert 'tvtb_killswitch_mode{mode="running"} 1.0' in text
    assert "# TYPE tvtb_signal_to_order_seconds histogram" in text


async def test_the_notifier_serves_its_metrics(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    settings = NotifierSettings(amqp_url=amqp_url, mongo_uri=mongo_uri, mongo_db=mongo_db_name, telegram_chat_ids=[111])
    connection = await messaging.connect(amqp_url, "test-events")
    try:
        publisher = await messaging.Publisher.open(connection)
        async with build_notifier(settings, messenger=LogMessenger()) as notifier, notifier_consuming(notifier) as consumer:
            event = OrderPlacedV1(signal_id="sig-m", account="default", symbol="BTC/USDT:USDT", side="buy", amount=Decimal("0.01"),
                                  order_id="1", client_order_id="tvtbm", status="closed", placed_at=utcnow())
            await publisher.publish(event, exchange=messaging.EVENTS_EXCHANGE, message_id="sig-m:OrderPlacedV1")
            await wait_for(lambda: mongo_db.notifications.find_one({"signal_id": "sig-m"}), what="the notification record")
            async with TestClient(TestServer(notifier_app(notifier, consumer))) as client:
                response = await client.get("/metrics")
                text = await response.text()
    finally:
        await connection.close()
    assert response.status == 200 and response.content_type == "text/plain"
    assert 'tvtb_notifications_total{result="sent"} 1.0' in text
