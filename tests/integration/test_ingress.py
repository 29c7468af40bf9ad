"""The ingress over real RabbitMQ and MongoDB: what is accepted reaches the signals queue; what is refused leaves a record."""

from __future__ import annotations

import contextlib

import aio_pika
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.ingress.app import create_app
from services.ingress.bootstrap import build
from services.ingress.settings import IngressSettings
from shared.contracts import SignalReceivedV1
from shared.messaging import EXECUTOR_SIGNALS
from tests.support import drain, set_policy, wait_for

SECRET = "tv-secret-0123456789abcdef"
OTHER_SECRET = "rotated-secret-abcdef0123456789"


@contextlib.asynccontextmanager
async def ingress_client(amqp_url: str, mongo_uri: str, db: str):
    config = IngressSettings(
        amqp_url=amqp_url, mongo_uri=mongo_uri, mongo_db=db, webhook_tokens=f"main:{SECRET},rotated:{OTHER_SECRET}"
    )
    async with build(config) as ingress:
        async with TestClient(TestServer(create_app(ingress))) as client:
            yield client


async def queued_signals(amqp_url: str) -> list[SignalReceivedV1]:
    """Everything the signals queue holds, read by consuming up to a sentinel published behind it.

    (The queue has a single active consumer, so basic.get is refused; the sentinel tells when it is drained.)
    """
    return [s for s in await drain(amqp_url, EXECUTOR_SIGNALS.name, check=_check_amqp_properties)]


def _check_amqp_properties(message, decoded) -> None:
    assert message.correlation_id == decoded.signal_id
    assert message.headers.get("traceparent")
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT


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


async def test_the_rotated_token_works_and_the_signal_id_defaults_to_a_hash_of_the_body(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    raw = orjson.dumps({"token": OTHER_SECRET, "symbol": "ETH-USDT", "action": "sell", "qty": 1})
    async with ingress_client(amqp_url, mongo_uri, mongo_db_name) as client:
        first = await (await client.post("/webhook/tradingview", data=raw)).json()
        again = await (await client.post("/webhook/tradingview", data=raw)).json()
    assert first["status"] == "accepted" and first["signal_id"].startswith("h-")
    assert again["signal_id"] == first["signal_id"]  # a TradingView resend names the same signal
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
    [record] = await mongo_db.ingress_rejections.find({}).to_list(None)
    assert record["status"] == 401 and record["reason"] == reason and record["token_name"] is None
    assert SECRET not in str(record) and SECRET[:10] not in str(record)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "the body is not valid JSON"),
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
    [record] = await mongo_db.ingress_rejections.find({}).to_list(None)
    assert record["status"] == 400 and reason in record["reason"]
    assert SECRET not in str(record)


async def test_an_oversized_body_gets_413(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    async with ingress_client(amqp_url, mongo_uri, mongo_db_name) as client:
        response = await client.post("/webhook/tradingview", data=b"x" * (64 * 1024 + 1))
        body = await response.json()
    assert response.status == 413 and "64 KiB" in body["reason"]
    assert await mongo_db.ingress_rejections.count_documents({"status": 413}) == 1


async def test_health_readiness_and_metrics(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    async with ingress_client(amqp_url, mongo_uri, mongo_db_name) as client:
        await client.post("/webhook/tradingview", data=orjson.dumps({"token": SECRET, "symbol": "SOLUSDT", "action": "long", "usdt": 20}))
        assert (await client.get("/healthz")).status == 200
        ready = await client.get("/readyz")
        assert ready.status == 200 and (await ready.json())["broker"] is True
        metrics = await (await client.get("/metrics")).text()
    assert 'tvtb_webhook_requests_total{result="accepted"} 1.0' in metrics
    assert "tvtb_webhook_latency_seconds_bucket" in metrics


async def test_503_when_the_broker_does_not_confirm_so_tradingview_resends(broker_vhost, mongo_uri, mongo_db_name, mongo_db):
    vhost, amqp_url = broker_vhost
    async with ingress_client(amqp_url, mongo_uri, mongo_db_name) as client:
        # A full queue that refuses new messages: the broker nacks the publish instead of confirming it.
        set_policy(vhost, "full", "^executor\\.signals$", {"max-length": 0, "overflow": "reject-publish"})

        async def refused() -> tuple[int, dict] | None:
            response = await client.post("/webhook/tradingview", data=orjson.dumps(
                {"token": SECRET, "id": "nacked", "symbol": "BTCUSDT.P", "action": "buy", "qty": 1}))
            return (response.status, await response.json()) if response.status != 200 else None

        status, body = await wait_for(refused, what="the policy to take effect")
    assert status == 503
    assert body == {"status": "unavailable", "reason": "the signal could not be stored; please resend"}
