"""One trace per alert, across processes: the services export to an OTLP receiver on loopback."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from tests.e2e.stack import WEBHOOK_SECRET, Stack
from tests.e2e.test_walking_skeleton import put_settings
from tests.otlp_receiver import OtlpReceiver
from tests.support import wait_for

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
async def traced_stack(amqp_url, mongo_uri, mongo_db_name, mongo_db, tmp_path):
    receiver = OtlpReceiver()
    await receiver.start()
    # The batch processor's default is to export every 5 s; a fifth of a second keeps the test short.
    running = Stack(amqp_url=amqp_url, mongo_uri=mongo_uri, mongo_db=mongo_db_name, logs=tmp_path,
                    extra_env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"})
    try:
        await running.start_all()
        yield running, receiver
    finally:
        await running.stop_all()
        await receiver.stop()


@pytest.mark.parametrize("traceparent", [True, False], ids=["behind-a-tracing-proxy", "as-tradingview-sends-it"])
async def test_one_alert_is_one_trace_from_the_webhook_through_the_exchange_call_to_the_notification(
        traced_stack, mongo_db, traceparent):
    stack, receiver = traced_stack
    await put_settings(stack, autotrade=True, reason="e2e: tracing")
    body = {"token": WEBHOOK_SECRET, "id": "traced-e2e", "symbol": "BTCUSDT.P", "action": "buy", "qty": "0.01"}
    # A sampled W3C traceparent, as a proxy in front of the ingress would send: the trace to follow. TradingView
    # sends none: then the ingress starts the trace, found by its webhook span.
    headers = {"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"} if traceparent else {}
    async with aiohttp.ClientSession() as session:
        async with session.post(stack.url("ingress", "/webhook/tradingview"), data=orjson.dumps(body),
                                headers=headers) as response:
            assert response.status == 200

    async def webhook_trace() -> str | None:
        roots = [s for s in receiver.spans if s.service == "tvtb-ingress" and s.name == "POST /webhook/tradingview"]
        return roots[0].trace_id if roots else None

    trace_id = TRACE_ID if traceparent else await wait_for(webhook_trace, timeout=30, what="the webhook's span")

    def told() -> list:
        """The notifier's send of this alert: in its trace when it went alone, linked to it when in a digest."""
        return [s for s in receiver.spans if s.service == "tvtb-notifier" and s.name.startswith("telegram send")
                and (s.trace_id == trace_id or any(linked == trace_id for linked, _ in s.links))]

    async def whole_trace() -> bool:
        names = {(s.service, s.name) for s in receiver.of_trace(trace_id)}
        return ({("tvtb-ingress", "POST /webhook/tradingview"), ("tvtb-executor", "bingx create_order"),
                 ("tvtb-notifier", "process notifier.events")} <= names) and bool(told())

    await wait_for(whole_trace, timeout=30, interval=0.2, what="the alert's spans from the three services")
    spans = receiver.of_trace(trace_id)
    by_id = {s.span_id: s for s in spans}
    order = next(s for s in spans if s.name == "bingx create_order")
    # The exchange call sits inside the executor's handling of the signal, which continues the ingress's publish.
    chain = []
    span = order
    while span.parent_span_id in by_id:
        span = by_id[span.parent_span_id]
        chain.append((span.service, span.name))
    assert chain[-1] == ("tvtb-ingress", "POST /webhook/tradingview")
    assert any(service == "tvtb-executor" and name.startswith("process executor.signals.") for service, name in chain)
    assert {s.service for s in spans} >= {"tvtb-ingress", "tvtb-executor", "tvtb-notifier"}
    print("\n" + "\n".join(f"{s.service:14} {s.name}" for s in spans))
