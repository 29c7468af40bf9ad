"""The ingress's HTTP door: POST /webhook/tradingview (token in the body or the path), plus health and metrics.

Answer fast, lose nothing: 200 only once the broker confirmed the signal or, while the broker is unreachable, once
it is in the Mongo outbox; 503 when neither worked, so TradingView resends.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.ingress.bootstrap import Ingress
from services.ingress.domain import (
    InvalidAlert, OutOfScope, build_signal, check_scope, fingerprint, match_token, secret_in_signal,
)
from services.ingress.durable import Unavailable
from services.ingress.formats import UnreadableBody, parse_body
from services.ingress.guards import client_address, source_allowed
from shared import mongo
from shared.killswitch import expose_mode
from shared.contracts import SignalRejectedV1, utcnow
from shared.observability import LATENCY_BUCKETS, Readiness, add_health_routes, bound_signal, tracing_middleware
from shared.redaction import redact

log = logging.getLogger(__name__)

INGRESS_KEY = web.AppKey("ingress", Ingress)
METRICS_KEY = web.AppKey("ingress_metrics", object)
MAX_BODY_BYTES = 64 * 1024
ANSWER_WITHIN_S = 2.5  # TradingView cancels at 3 s
# Refusals of an alert whose token was valid: the trader's own alert is wrong, and only Telegram can tell them.
TOLD_TO_TRADER = {"invalid", "forbidden", "conflict"}
RESULTS = ("accepted", "duplicate", "invalid", "unauthorized", "forbidden", "rate_limited", "too_large", "timeout",
           "conflict", "unavailable", "error")


class IngressMetrics:
    def __init__(self, registry: CollectorRegistry, ingress: Ingress) -> None:
        requests = Counter("tvtb_webhook_requests_total", "Webhook requests by result", ["result"], registry=registry)
        latency = Histogram(
            "tvtb_webhook_latency_seconds", "Time to answer a webhook, by result", ["result"], buckets=LATENCY_BUCKETS, registry=registry
        )
        # Label lookups cost more than the increments: resolve each result's children once.
        self.by_result = {result: (requests.labels(result), latency.labels(result)) for result in RESULTS}
        self.outboxed = Counter("tvtb_webhook_outbox_total", "Signals made durable in the outbox while the broker was away", registry=registry)
        outbox_pending = Gauge("tvtb_webhook_outbox_pending", "1 while signals wait in the outbox", registry=registry)
        outbox_pending.set_function(lambda: 1.0 if ingress.outbox.pending else 0.0)


@dataclass
class Exchange:
    """One request's facts, gathered as it is read, for its answer, its record and its metrics."""

    request: web.Request
    started: float = field(default_factory=time.perf_counter)
    started_monotonic: float = field(default_factory=time.monotonic)
    peer: str | None = None
    token_name: str | None = None
    signal_id: str | None = None
    fingerprint: str | None = None
    format: str | None = None
    body_bytes: int = 0

    def answer(self, status: int, result: str, body: dict, *, reason: str | None = None, durable: str | None = None,
               keyed_by_id: bool | None = None) -> web.Response:
        ingress: Ingress = self.request.app[INGRESS_KEY]
        metrics: IngressMetrics = self.request.app[METRICS_KEY]
        record = {
            "at": utcnow(), "result": result, "status": status, "reason": reason, "peer": self.peer,
            "token_name": self.token_name, "signal_id": self.signal_id, "fingerprint": self.fingerprint,
            "format": self.format, "body_bytes": self.body_bytes, "durable": durable, "keyed_by_id": keyed_by_id,
        }
        # Never the body or the path: either may carry a token.
        ingress.recorder.record(record)
        level = logging.INFO if status < 400 else logging.WARNING
        if log.isEnabledFor(level):
            log.log(level, "webhook %s", result, extra={k: v for k, v in record.items() if k != "at" and v is not None})
        counter, histogram = metrics.by_result[result]
        counter.inc()
        histogram.observe(time.perf_counter() - self.started)
        return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")

    def refuse(self, status: int, result: str, reason: str) -> web.Response:
        ingress: Ingress = self.request.app[INGRESS_KEY]
        # A reason may quote the alert (an unknown action, a placeholder); a token pasted into the wrong field must not
        # come back in the answer, the record or the Telegram notice.
        reason = redact(reason, ingress.secrets)
        if self.token_name is not None and result in TOLD_TO_TRADER and ingress.rejections is not None:
            # Once per distinct alert: TradingView's resends of the same text carry the same message id.
            ingress.rejections.tell(
                SignalRejectedV1(token_name=self.token_name, status=status, reason=reason, format=self.format, rejected_at=utcnow()),
                message_id=f"rejected:{self.fingerprint or self.signal_id or uuid.uuid4().hex}:{status}")
        return self.answer(status, result, {"status": "rejected", "reason": reason}, reason=reason)


async def webhook(request: web.Request) -> web.Response:
    ingress: Ingress = request.app[INGRESS_KEY]
    settings = ingress.settings
    exchange = Exchange(request)
    # Every X-Forwarded-For line, in order: a proxy may add its own line after one the client forged.
    forwarded = ",".join(request.headers.getall("X-Forwarded-For", [])) or None
    exchange.peer = client_address(request.remote, forwarded, settings.webhook_trusted_proxies)

    if not source_allowed(exchange.peer, settings.webhook_allowed_sources):
        return exchange.refuse(403, "forbidden", "this source address may not send alerts")
    if not ingress.ip_limiter.allow(exchange.peer or "unknown"):
        return exchange.refuse(429, "rate_limited", "too many requests from this address")
    try:
        if request.content.is_eof():  # the whole body came with the headers, as an alert's does: nothing to wait for
            raw = await request.read()
        else:
            async with asyncio.timeout(settings.body_timeout_s):
                raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return exchange.refuse(413, "too_large", f"the body is larger than {MAX_BODY_BYTES // 1024} KiB")
    except asyncio.TimeoutError:
        return exchange.refuse(408, "timeout", "the body did not arrive in time")
    exchange.body_bytes = len(raw)
    try:
        parsed = parse_body(raw)
    except UnreadableBody as error:
        return exchange.refuse(400, "invalid", str(error))
    exchange.format = parsed.format

    presented = request.match_info.get("token") or parsed.token
    token = match_token(presented, settings.webhook_tokens)
    if token is None:
        return exchange.refuse(401, "unauthorized", "unknown token" if presented else "missing token")
    exchange.token_name = token.name
    if not ingress.token_limiter.allow(token.name):
        return exchange.refuse(429, "rate_limited", f"too many requests for token '{token.name}'")

    exchange.fingerprint = fingerprint(token.name, parsed.payload)
    payload_id = parsed.payload.get("id") if isinstance(parsed.payload.get("id"), str) else None
    key = ingress.recent.key(payload_id, exchange.fingerprint)
    now = time.time()

    # An identical delivery still in flight: wait for its outcome rather than publish twice.
    while (pending := ingress.inflight.get(key)) is not None:
        await asyncio.shield(pending)
    known = ingress.recent.get(key, now)
    if known is not None:
        exchange.signal_id = known[0]
        if known[1] == exchange.fingerprint:
            return exchange.answer(200, "duplicate", {"status": "duplicate", "signal_id": known[0]})
        return exchange.refuse(409, "conflict", f"the id '{known[0]}' was already used by a different alert")

    try:
        signal = build_signal(parsed.payload, token_name=token.name, received_at=utcnow(), fingerprint_=exchange.fingerprint,
                              signal_id=ingress.recent.unsettled(key, now), resend_window_s=settings.webhook_resend_window_s)
        check_scope(signal, settings.webhook_token_symbols, settings.webhook_token_strategies)
    except InvalidAlert as error:
        return exchange.refuse(400, "invalid", str(error))
    except OutOfScope as error:
        return exchange.refuse(403, "forbidden", str(error))
    if (field_name := secret_in_signal(signal, ingress.token_secrets)) is not None:
        return exchange.refuse(400, "invalid", f"'{field_name}' holds a webhook token: send the token only as 'token' "
                                               "(or in the URL path), never in another field")
    exchange.signal_id = signal.signal_id

    with bound_signal(signal.signal_id):
        done = asyncio.get_running_loop().create_future()
        ingress.inflight[key] = done
        try:
            durable = await ingress.committer.commit(signal, deadline=exchange.started_monotonic + ANSWER_WITHIN_S)
        except Unavailable:
            ingress.recent.put_unsettled(key, signal.signal_id, now)
            return exchange.answer(503, "unavailable", {"status": "unavailable", "reason": "the signal could not be stored; please resend"})
        finally:
            del ingress.inflight[key]
            done.set_result(None)
        ingress.recent.put(key, signal.signal_id, exchange.fingerprint, now)
        if durable == "outbox":
            request.app[METRICS_KEY].outboxed.inc()
        return exchange.answer(200, "accepted", {"status": "accepted", "signal_id": signal.signal_id}, durable=durable,
                               keyed_by_id=payload_id is not None)


async def guarded_webhook(request: web.Request) -> web.Response:
    """A bug must not crash the door: the request gets a 500 (TradingView resends) and a record."""
    try:
        return await webhook(request)
    except Exception:
        log.exception("webhook failed unexpectedly")
        exchange = Exchange(request)
        return exchange.answer(500, "error", {"status": "error", "reason": "internal error; please resend"}, reason="internal error")


def create_app(ingress: Ingress, registry: CollectorRegistry | None = None) -> web.Application:
    registry = registry or CollectorRegistry()
    app = web.Application(middlewares=[tracing_middleware], client_max_size=MAX_BODY_BYTES)
    app[INGRESS_KEY] = ingress
    app[METRICS_KEY] = IngressMetrics(registry, ingress)
    expose_mode(registry, ingress.killswitch)
    app.router.add_post("/webhook/tradingview", guarded_webhook)
    app.router.add_post("/webhook/tradingview/{token}", guarded_webhook)

    async def readiness() -> Readiness:
        broker = not ingress.connection.is_closed
        database = await mongo.ping(ingress.db)
        detail = {"broker": broker, "mongo": database, "outbox_pending": ingress.outbox.pending, **ingress.killswitch.describe()}
        # Either one is enough to accept alerts durably.
        return Readiness(ready=broker or database, detail=detail)

    add_health_routes(app, registry, readiness)
    return app
