"""The ingress over real RabbitMQ and MongoDB: what is accepted reaches the signals queue; what is refused leaves a record."""

from __future__ import annotations

import contextlib
import time

import aio_pika
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pymongo import AsyncMongoClient

from services.ingress.app import create_app
from services.ingress.bootstrap import build
from services.ingress.settings import IngressSettings
from services.ingress.store import request_records
from shared.contracts import SignalBatchV1, SignalReceivedV1
from tests.support import MongoServer, drain_signals, set_policy, wait_for

SECRET = "tv-secret-0123456789abcdef"
OTHER_SECRET = "rotated-secret-abcdef0123456789"


@contextlib.asynccontextmanager
async def ingress_client(amqp_url: str, mongo_uri: str, db: str, **extra):
    config = IngressSettings(
        amqp_url=amqp_url, mongo_uri=mongo_uri, mongo_db=db, webhook_tokens=f"main:{SECRET},rotated:{OTHER_SECRET}", **extra
    )
    async with build(config) as ingress:
        async with TestClient(TestServer(create_app(ingress))) as client:
            yield client


async def queued_signals(amqp_url: str) -> list[SignalReceivedV1]:
    """Everything the signals queue holds, read by consuming up to a sentinel published behind it.

    (The queue has a single active consumer, so basic.get is refused; the sentinel tells when it is drained.)
    """
    return [s for s in await drain_signals(amqp_url, check=_check_amqp_properties)]


def _check_amqp_properties(message, decoded) -> None:
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    if isinstance(decoded, SignalBatchV1):  # alerts accepted together: each keeps its own trace, one shard per batch
        assert len(decoded.traces) == len(decoded.signals) and all(t.get("traceparent") for t in decoded.traces)
        assert len({s.routing_key() for s in decoded.signals}) == 1 and message.routing_key == decoded.signals[0].routing_key()
    else:
        assert message.correlation_id == decoded.signal_id
        assert message.headers.get("traceparent")


async def test_an_alert_is_accepted_once_the_broker_has_it(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    async with ingress_client(amqp_url, mongo_uri, mongo_db_name) as client:
        response = await client.post(
            "/webhook/tradingview",
            data=orjson.dumps({"token": SECRET, "id": "alert-1", "symbol": "BINANCE:BTCUSDT.P", "action": "buy", "qty": "0.01"}),
            headers={"Content-Type": "text/plain"},  # TradingView's content type is not to be trusted
        )
        body = await response.json()
    assert response.status == 200
    assert body == {"status": "accepted", "signal_id": "alert-1"}
    [signal] = await queued_signals(amqp_url)
    assert signal.signal_id == "alert-1" and signal.symbol == "BTC/USDT:USDT" and signal.token_name == "main"
    assert str(signal.qty) == "0.01" and signal.action.value == "buy"


async def test_a_caller_s_trace_is_continued_into_the_published_signal(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    # A sampled W3C traceparent, as a proxy in front of the ingress would send: the signal must carry that trace on.
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers_seen: list[str] = []
    async with ingress_client(amqp_url, mongo_uri, mongo_db_name) as client:
        response = await client.post(
            "/webhook/tradingview",
            data=orjson.dumps({"token": SECRET, "id": "traced-1", "symbol": "BTCUSDT", "action": "buy", "qty": "0.01"}),
            headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
        )
        assert response.status == 200

    def keep(message, decoded) -> None:
        headers_seen.append(message.headers["traceparent"] if not isinstance(decoded, SignalBatchV1) else decoded.traces[0]["traceparent"])

    [signal] = await drain_signals(amqp_url, check=keep)
    assert signal.signal_id == "traced-1" and headers_seen[0].split("-")[1] == trace_id


async def test_the_rotated_token_works_and_the_signal_id_defaults_to_a_hash_of_the_body(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    raw = orjson.dumps({"token": OTHER_SECRET, "symbol": "ETH-USDT", "action": "sell", "qty": 1})
    async with ingress_client(amqp_url, mongo_uri, mongo_db_name) as client:
        first = await (await client.post("/webhook/tradingview", data=raw)).json()
        again = await (await client.post("/webhook/tradingview", data=raw)).json()
    assert first["status"] == "accepted" and first["signal_id"].startswith("h-")
    assert again == {"status": "duplicate", "signal_id": first["signal_id"]}  # a TradingView resend names the same signal
    assert {s.token_name for s in await queued_signals(amqp_url)} == {"rotated"}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"symbol": "BTCUSDT.P", "action": "buy", "qty": 1}, "missing token"),
        ({"token": "guess-" + SECRET[:10], "symbol": "BTCUSDT.P", "action": "buy", "qty": 1}, "unknown token"),
        ({"token": 12345, "symbol": "BTCUSDT.P", "action": "buy", "qty": 1}, "unknown token"),
    ],
)
async def test_a_wrong_or_missing_token_is_refused_and_changes_nothing(amqp_url, mongo_uri, mongo_db_name, mongo_db, body, reason):
    async with ingress_client(amqp_url, mongo_uri, mongo_db_name) as client:
        response = await client.post("/webhook/tradingview", data=orjson.dumps(body))
        text = await response.text()
    assert response.status == 401
    assert orjson.loads(text) == {"status": "rejected", "reason": reason}
    if isinstance(body.get("token"), str):
        assert body["token"] not in text
    assert await queued_signals(amqp_url) == []
    [record] = await records(mongo_db, 1)
    assert record["status"] == 401 and record["reason"] == reason and record["token_name"] is None
    assert SECRET not in str(record) and SECRET[:10] not in str(record)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "the body is not valid JSON"),
        (b"just some words", "the body is neither JSON nor KEY=VALUE text"),
        (b"SYMBOL=BTCUSDT.P\nnonsense", "part 2 of the text is not KEY=VALUE"),
        (b"[1, 2]", "the body must be a JSON object"),
        (orjson.dumps({"token": SECRET, "symbol": "BTCUSDT.P", "action": "moon", "qty": 1}), "unknown action 'moon'"),
        (orjson.dumps({"token": SECRET, "symbol": "BTCUSDT.P", "action": "buy", "qty": "{{strategy.order.contracts}}"}),
         "'qty' holds an unfilled TradingView placeholder"),
        (orjson.dumps({"token": SECRET, "symbol": "BTCUSDT.P", "action": "buy", "qty": -1}), "'qty' must be greater than zero"),
        (orjson.dumps({"token": SECRET, "symbol": "BTCUSDT.P", "action": "buy"}), "a size is missing"),
        (orjson.dumps({"token": SECRET, "symbol": "BTCUSDT.P", "action": "buy", "qty": 1, "usdt": 50}), "give exactly one size"),
        (orjson.dumps({"token": SECRET, "symbol": "BTCEUR", "action": "buy", "qty": 1}), "is not a USDT perpetual"),
        (orjson.dumps({"token": SECRET, "action": "buy", "qty": 1}), "'symbol' is missing"),
    ],
)
async def test_an_invalid_body_gets_400_with_a_reason_and_a_record(amqp_url, mongo_uri, mongo_db_name, mongo_db, raw, reason):
    async with ingress_client(amqp_url, mongo_uri, mongo_db_name) as client:
        response = await client.post("/webhook/tradingview", data=raw)
        body = await response.json()
    assert response.status == 400
    assert body["status"] == "rejected" and reason in body["reason"], body
    assert await queued_signals(amqp_url) == []
    [record] = await records(mongo_db, 1)
    assert record["status"] == 400 and reason in record["reason"]
    assert SECRET not in str(record)
    # The README's way to read the records one by one out of their buckets.
    pipeline = [{"$unwind": "$records"}, {"$replaceRoot": {"newRoot": "$records"}}, {"$match": {"result": "invalid"}}]
    assert await (await mongo_db.webhook_requests.aggregate(pipeline)).to_list(None) == [record]


async def records(db, count: int) -> list[dict]:
    """The request records, once `count` of them are written (they are written in batches, after the answer)."""

    async def written() -> list[dict] | None:
        found = [record async for record in request_records(db.webhook_requests)]
        return found if len(found) >= count else None

    return await wait_for(written, what=f"{count} request records")


async def test_an_oversized_body_gets_413(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    async with ingress_client(amqp_url, mongo_uri, mongo_db_name) as client:
        response = await client.post("/webhook/tradingview", data=b"x" * (64 * 1024 + 1))
        body = await response.json()
    assert response.status == 413 and "64 KiB" in body["reason"]
    [record] = await records(mongo_db, 1)
    assert record["status"] == 413 and record["result"] == "too_large"


async def test_health_readiness_and_metrics(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    async with ingress_client(amqp_url, mongo_uri, mongo_db_name) as client:
        await client.post("/webhook/tradingview", data=orjson.dumps({"token": SECRET, "symbol": "SOLUSDT", "action": "long", "usdt": 20}))
        assert (await client.get("/healthz")).status == 200
        ready = await client.get("/readyz")
        assert ready.status == 200 and (await ready.json())["broker"] is True
        metrics = await (await client.get("/metrics")).text()
    assert 'tvtb_webhook_requests_total{result="accepted"} 1.0' in metrics
    assert "tvtb_webhook_latency_seconds_bucket" in metrics


async def test_a_nacked_signal_waits_in_the_outbox_and_503_only_when_the_database_fails_too(broker_vhost, mongo_db_name):
    vhost, amqp_url = broker_vhost
    private = MongoServer()  # a database of this test's own, to take away
    private.start()
    try:
        async with ingress_client(amqp_url, private.uri, mongo_db_name) as client:
            # A full queue that refuses new messages: the broker nacks the publish instead of confirming it.
            set_policy(vhost, "full", "^executor\\.signals\\.[0-9]+$", {"max-length": 0, "overflow": "reject-publish"})

            async def outboxed() -> dict | None:
                response = await client.post("/webhook/tradingview", data=alert(f"o-{time.monotonic_ns()}"))
                body = await response.json()
                metrics = await (await client.get("/metrics")).text()
                return body if "tvtb_webhook_outbox_total 1.0" in metrics else None

            body = await wait_for(outboxed, what="the policy to take effect")
            assert body["status"] == "accepted"
            outboxed_id = body["signal_id"]

            private.stop()
            response = await client.post("/webhook/tradingview", data=alert("both-down"))
            assert response.status == 503
            assert await response.json() == {"status": "unavailable", "reason": "the signal could not be stored; please resend"}
    finally:
        private.stop()
    assert outboxed_id.startswith("o-")


def alert(signal_id: str, **fields) -> bytes:
    return orjson.dumps({"token": SECRET, "id": signal_id, "symbol": "BTCUSDT.P", "action": "buy", "qty": 1, **fields})


async def test_a_resend_after_a_503_carries_the_same_signal_id_so_it_can_never_trade_twice(broker_vhost, mongo_db_name):
    """A 503 may follow a write that landed after its deadline: the resend must be the same signal, not a new one."""
    vhost, amqp_url = broker_vhost
    private = MongoServer()
    private.start()
    try:
        async with ingress_client(amqp_url, private.uri, mongo_db_name) as client:
            set_policy(vhost, "full", "^executor\\.signals\\.[0-9]+$", {"max-length": 0, "overflow": "reject-publish"})

            async def refused_by_broker() -> bool:
                metrics = await (await client.get("/metrics")).text()
                response = await client.post("/webhook/tradingview", data=alert(f"p-{time.monotonic_ns()}"))
                return response.status == 200 and "tvtb_webhook_outbox_total 0.0" not in metrics

            await wait_for(refused_by_broker, what="the policy to take effect")
            no_id = orjson.dumps({"token": SECRET, "symbol": "BTCUSDT.P", "action": "buy", "qty": 1})
            private.stop()
            first = await client.post("/webhook/tradingview", data=no_id)
            assert first.status == 503
            private.start()  # the database is back (same address); the broker still refuses: the outbox takes it

            async def resent() -> dict | None:
                response = await client.post("/webhook/tradingview", data=no_id)
                return await response.json() if response.status == 200 else None

            accepted = await wait_for(resent, timeout=30, what="the resend to be accepted")
            assert accepted["status"] == "accepted"
            db = AsyncMongoClient(private.uri, tz_aware=True)[mongo_db_name]
            try:
                async def both_recorded() -> list[dict] | None:
                    found = [r async for r in request_records(db.webhook_requests)]
                    failed = [r for r in found if r["result"] == "unavailable"]
                    mine = [r for r in found if failed and r["fingerprint"] == failed[0]["fingerprint"]]
                    return mine if {"unavailable", "accepted"} <= {r["result"] for r in mine} else None

                mine = await wait_for(both_recorded, timeout=15, what="the 503 and the accepted resend to be recorded")
                assert {r["signal_id"] for r in mine} == {accepted["signal_id"]}
            finally:
                await db.client.close()
    finally:
        private.stop()


async def test_a_refused_alert_with_a_valid_token_is_told_to_the_trader_once_and_a_stranger_s_is_not(
        amqp_url, mongo_uri, mongo_db_name, mongo_db):
    from shared import messaging
    from shared.contracts import decode

    connection = await messaging.connect(amqp_url, "test-events")
    told: list = []
    try:
        channel = await connection.channel()
        await messaging.declare_topology(channel)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(messaging.EVENTS_EXCHANGE, routing_key="signal.rejected.v1")

        async def keep(message) -> None:
            told.append((message.message_id, decode(message.type, message.body)))
            await message.ack()

        await queue.consume(keep)
        bad = orjson.dumps({"token": SECRET, "symbol": "{{ticker}}", "action": "buy", "qty": 1})
        async with ingress_client(amqp_url, mongo_uri, mongo_db_name) as client:
            for _ in range(2):  # TradingView resends the same text
                response = await client.post("/webhook/tradingview", data=bad)
                assert response.status == 400
            assert (await client.post("/webhook/tradingview", data=orjson.dumps({"token": "wrong", "action": "buy"}))).status == 401
            await wait_for(lambda: _at_least(told, 2), what="the two notices")
            # The stranger's refusal was answered before these arrived; a notice for it would come in order with them.
            marker = orjson.dumps({"token": SECRET, "symbol": "BTCUSDT", "action": "dance", "qty": 1})
            assert (await client.post("/webhook/tradingview", data=marker)).status == 400
            await wait_for(lambda: _at_least(told, 3), what="the marker's notice")
        [(first_id, notice), (second_id, _), (_, marker_notice)] = told
        assert "dance" in marker_notice.reason
    finally:
        await connection.close()
    assert first_id == second_id  # one message id: the notifier tells it once
    assert notice.token_name == "main" and notice.status == 400 and "{{ticker}}" in notice.reason and notice.format == "native"


async def _at_least(items: list, n: int) -> bool:
    return len(items) >= n


async def test_a_token_pasted_into_another_field_is_not_echoed_in_the_reason_the_record_or_the_notice(
        amqp_url, mongo_uri, mongo_db_name, mongo_db):
    from shared import messaging

    connection = await messaging.connect(amqp_url, "test-events")
    told: list = []
    try:
        channel = await connection.channel()
        await messaging.declare_topology(channel)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(messaging.EVENTS_EXCHANGE, routing_key="signal.rejected.v1")

        async def keep(message) -> None:
            told.append(message.body.decode())
            await message.ack()

        await queue.consume(keep)
        async with ingress_client(amqp_url, mongo_uri, mongo_db_name) as client:
            response = await client.post("/webhook/tradingview", data=orjson.dumps(
                {"token": SECRET, "symbol": "BTCUSDT", "action": OTHER_SECRET, "qty": 1}))
            body = await response.json()
            await wait_for(lambda: _at_least(told, 1), what="the notice")

            async def recorded() -> list:
                return [r async for r in request_records(mongo_db.webhook_requests) if r["result"] == "invalid"]

            [record] = await wait_for(recorded, what="the record")
    finally:
        await connection.close()
    assert response.status == 400 and body["reason"].startswith("unknown action '***'")
    for text in (body["reason"], record["reason"], told[0]):
        assert OTHER_SECRET[:8] not in text and SECRET not in text
