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
from tests.integration.test_executor import harness
from tests.support import wait_for


async def test_the_executor_serves_its_metrics(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue):  # noqa: F811
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue) as (h, _):
        await h.set_mode(KillSwitchMode.RUNNING)
        async with TestClient(TestServer(executor_app(h.executor, h.consumer))) as client:
            before = await (await client.get("/metrics")).text()
            assert (await h.settled(await h.send(qty=Decimal("0.01"))))["status"] == "placed"
            # Below BTC's minimum quantity: refused before it is sent, and counted as a failure all the same.
            assert (await h.settled(await h.send(qty=Decimal("0.00001"))))["status"] == "failed"

            async def counted() -> str | None:
                # The counter moves just after the record is written, so it is polled, not read once.
                response = await client.get("/metrics")
                assert response.status == 200 and response.content_type == "text/plain"
                text = await response.text()
                return text if 'tvtb_signals_total{outcome="placed"} 1.0' in text else None

            text = await wait_for(counted, what="the placed signal in /metrics")
    # Series the alert rules take increase() of exist at 0 before anything happened: the first trip is seen.
    assert 'tvtb_alerts_total{kind="kill_switch_tripped",severity="SEV1"} 0.0' in before
    assert 'tvtb_order_failures_total{reason="AuthenticationFailed"} 0.0' in before
    assert 'tvtb_order_failures_total{reason="CannotPlace"} 1.0' in text
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
    assert 'tvtb_notifications_total{result="failed"} 0.0' in text  # there at 0 for increase() in NotifierFailing


async def test_the_ingress_and_the_notifier_show_the_kill_switch_mode_they_believe(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    from services.ingress.app import create_app as ingress_app
    from services.ingress.bootstrap import build as build_ingress
    from services.ingress.settings import IngressSettings
    from shared.contracts import KillSwitchChangedV1

    connection = await messaging.connect(amqp_url, "test-control")
    try:
        await messaging.declare_topology(await connection.channel())
        publisher = await messaging.Publisher.open(connection)

        async def set_mode(version: int, mode: KillSwitchMode) -> None:
            state = KillSwitchChangedV1(version=version, mode=mode, actor="test", reason="test", changed_at=utcnow())
            await publisher.publish(state, exchange="", routing_key=messaging.CONTROL_STREAM)

        await set_mode(1, KillSwitchMode.RUNNING)
        ingress_settings = IngressSettings(amqp_url=amqp_url, mongo_uri=mongo_uri, mongo_db=mongo_db_name,
                                           webhook_tokens="main:tv-secret-0123456789abcdef")
        notifier_settings = NotifierSettings(amqp_url=amqp_url, mongo_uri=mongo_uri, mongo_db=mongo_db_name, telegram_chat_ids=[111])
        async with build_ingress(ingress_settings) as ingress, build_notifier(notifier_settings, messenger=LogMessenger()) as notifier, \
                notifier_consuming(notifier) as consumer, TestClient(TestServer(ingress_app(ingress))) as ingress_http, \
                TestClient(TestServer(notifier_app(notifier, consumer))) as notifier_http:
            await set_mode(2, KillSwitchMode.ENTRIES_OFF)  # a change while they run, too

            async def shown(client) -> bool:
                ready = await (await client.get("/readyz")).json()
                metrics = await (await client.get("/metrics")).text()
                return (ready.get("killswitch") == {"known": True, "mode": "entries_off", "version": 2}
                        and 'tvtb_killswitch_mode{mode="entries_off"} 1.0' in metrics
                        and 'tvtb_killswitch_mode{mode="running"} 0.0' in metrics)

            await wait_for(lambda: shown(ingress_http), what="the ingress to show entries_off")
            await wait_for(lambda: shown(notifier_http), what="the notifier to show entries_off")
    finally:
        await connection.close()
