"""The ingress's HTTP door: POST /webhook/tradingview, plus health and metrics."""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

from services.ingress.bootstrap import Ingress
from services.ingress.domain import InvalidAlert, build_signal, match_token
from shared import mongo
from shared.contracts import utcnow
from shared.messaging import SIGNALS_EXCHANGE, PublishFailed
from shared.observability import tracing_middleware, LATENCY_BUCKETS, Readiness, add_health_routes, bound_signal

log = logging.getLogger(__name__)

INGRESS_KEY = web.AppKey("ingress", Ingress)
METRICS_KEY = web.AppKey("ingress_metrics", object)
MAX_BODY_BYTES = 64 * 1024
RECORD_TIMEOUT_S = 0.5


class IngressMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("tvtb_webhook_requests_total", "Webhook requests by result", ["result"], registry=registry)
        self.latency = Histogram(
            "tvtb_webhook_latency_seconds", "Time to answer a webhook, by result", ["result"], buckets=LATENCY_BUCKETS, registry=registry
        )


def _answer(status: int, body: dict) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


async def _record_rejection(ingress: Ingress, request: web.Request, status: int, reason: str, token_name: str | None, size: int) -> None:
    """Leave a record of a refused request: who, why, how big. Never the body: it may carry a secret."""
    document = {
        "at": utcnow(),
        "status": status,
        "reason": reason,
        "peer": request.remote,
        "path": request.path,
        "token_name": token_name,
        "body_bytes": size,
        "content_type": request.content_type,
    }
    try:
        await asyncio.wait_for(ingress.db.ingress_rejections.insert_one(document), RECORD_TIMEOUT_S)
    except Exception as error:  # the answer stands; the log line below is the record of last resort
        log.warning("could not store the rejection record", extra={"error": type(error).__name__})
    log.warning("webhook refused", extra={k: v for k, v in document.items() if k != "at"})


async def webhook(request: web.Request) -> web.Response:
    started = time.perf_counter()
    ingress = request.app[INGRESS_KEY]
    metrics: IngressMetrics = request.app[METRICS_KEY]

    async def refuse(status: int, result: str, reason: str, token_name: str | None = None, size: int = 0) -> web.Response:
        await _record_rejection(ingress, request, status, reason, token_name, size)
        metrics.requests.labels(result).inc()
        metrics.latency.labels(result).observe(time.perf_counter() - started)
        return _answer(status, {"status": "rejected", "reason": reason})

    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return await refuse(413, "too_large", f"the body is larger than {MAX_BODY_BYTES // 1024} KiB")
    # By content, not by header: TradingView sends JSON as text/plain when the alert text has a typo elsewhere.
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        return await refuse(400, "invalid", f"the body is not valid JSON ({error.msg} at character {error.pos})", size=len(raw))
    if not isinstance(payload, dict):
        return await refuse(400, "invalid", "the body must be a JSON object", size=len(raw))

    presented = payload.get("token")
    token = match_token(presented if isinstance(presented, str) else None, ingress.settings.webhook_tokens)
    if token is None:
        reason = "missing token" if not presented else "unknown token"
        return await refuse(401, "unauthorized", reason, size=len(raw))

    try:
        signal = build_signal(payload, token_name=token.name, raw_body=raw, received_at=utcnow())
    except InvalidAlert as error:
        return await refuse(400, "invalid", str(error), token_name=token.name, size=len(raw))

    with bound_signal(signal.signal_id):
        try:
            await ingress.publisher.publish(signal, exchange=SIGNALS_EXCHANGE, message_id=signal.signal_id)
        except PublishFailed as error:
            # Nothing was made durable: 503 makes TradingView resend, and the resend dedupes by signal_id.
            log.error("signal not accepted: the broker did not confirm it", extra={"error": str(error)})
            metrics.requests.labels("unavailable").inc()
            metrics.latency.labels("unavailable").observe(time.perf_counter() - started)
            return _answer(503, {"status": "unavailable", "reason": "the signal could not be stored; please resend"})
        log.info("signal accepted", extra={"token_name": token.name, "symbol": signal.symbol, "action": signal.action.value})
    metrics.requests.labels("accepted").inc()
    metrics.latency.labels("accepted").observe(time.perf_counter() - started)
    return _answer(200, {"status": "accepted", "signal_id": signal.signal_id})


def create_app(ingress: Ingress, registry: CollectorRegistry | None = None) -> web.Application:
    registry = registry or CollectorRegistry()
    app = web.Application(middlewares=[tracing_middleware], client_max_size=MAX_BODY_BYTES)
    app[INGRESS_KEY] = ingress
    app[METRICS_KEY] = IngressMetrics(registry)
    app.router.add_post("/webhook/tradingview", webhook)

    async def readiness() -> Readiness:
        broker = not ingress.connection.is_closed
        database = await mongo.ping(ingress.db)
        return Readiness(ready=broker and database, detail={"broker": broker, "mongo": database})

    add_health_routes(app, registry, readiness)
    return app
