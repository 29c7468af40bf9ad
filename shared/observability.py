"""Logging, tracing and metrics: JSON log lines with trace and signal ids, OpenTelemetry, Prometheus, health routes."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson
from aiohttp import web
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

_signal_id: ContextVar[str | None] = ContextVar("signal_id", default=None)
_service: ContextVar[str] = ContextVar("service", default="tvtb")

# Attributes every LogRecord has; anything else passed through `extra=` is written as a field of its own.
_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


@contextlib.contextmanager
def bound_signal(signal_id: str | None) -> Iterator[None]:
    """Every log line written inside carries this signal_id."""
    token = _signal_id.set(signal_id)
    try:
        yield
    finally:
        _signal_id.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, service, logger, message, trace_id, span_id, signal_id, extras.

    `secrets` are replaced in every value as a last line of defence: code never logs them on purpose.
    """

    def __init__(self, service: str, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.service = service
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            entry["trace_id"] = format(context.trace_id, "032x")
            entry["span_id"] = format(context.span_id, "016x")
        signal_id = getattr(record, "signal_id", None) or _signal_id.get()
        if signal_id:
            entry["signal_id"] = signal_id
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        # Redact the values before encoding: JSON escaping would hide a secret that holds a quote or a backslash.
        line = orjson.dumps({k: self._redact(v) for k, v in entry.items()}, default=str).decode()
        return self._redact(line)

    def _redact(self, value: Any) -> Any:
        if not self.secrets:
            return value
        if not isinstance(value, str):
            if isinstance(value, (int, float, bool)) or value is None:
                return value
            value = str(value)
        for secret in self.secrets:
            value = value.replace(secret, "[redacted]")
        return value


# Third-party chatter at INFO drowns the trading log and can carry request URLs; ccxt's DEBUG lines carry every request's
# headers, the BingX API key among them.
QUIET_LOGGERS = ("aio_pika", "aiormq", "pymongo", "telethon", "aiohttp.access", "ccxt")


def setup_logging(service: str, level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    _service.set(service)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service, secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def setup_tracing(service: str, otlp_endpoint: str | None) -> TracerProvider:
    """A tracer provider for the process; spans are exported over OTLP/HTTP only when an endpoint is configured."""
    # With nowhere to send spans, record none: trace and span ids still exist and propagate (logs carry them,
    # AMQP headers carry traceparent), but building full spans would only cost time on the hot path.
    sampler = ParentBased(ALWAYS_ON if otlp_endpoint else ALWAYS_OFF)
    provider = TracerProvider(resource=Resource.create({"service.name": f"tvtb-{service}"}), sampler=sampler)
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{otlp_endpoint.rstrip('/')}/v1/traces")))
    trace.set_tracer_provider(provider)
    return provider


def setup_observability(service: str, settings) -> None:
    """Logging then tracing, as every service's entry point does before anything connects."""
    setup_logging(service, settings.log_level, secrets=settings.secret_values())
    setup_tracing(service, settings.otel_exporter_otlp_endpoint)


def inject_trace(headers: dict[str, Any]) -> dict[str, Any]:
    """Write the current trace context (W3C traceparent) into AMQP headers."""
    propagate.inject(headers)
    return headers


def extract_trace(headers: dict[str, Any] | None):
    carrier = {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in (headers or {}).items()}
    return propagate.extract(carrier)


_http_tracer = trace.get_tracer("tvtb.http")


@web.middleware
async def tracing_middleware(request: web.Request, handler):
    """A server span per request, continuing the caller's trace when it sent a traceparent."""
    if request.path in ("/healthz", "/readyz", "/metrics"):
        return await handler(request)
    # TradingView sends no traceparent: skip building a carrier for nothing (this runs on every alert).
    context = propagate.extract(dict(request.headers)) if "traceparent" in request.headers else None
    resource = request.match_info.route.resource
    # The route's pattern, never the raw path: a path may carry a token.
    # start_span and attach by hand: start_as_current_span's two generator context managers cost more than the span
    # itself, on every alert. An exception is recorded on the span as start_as_current_span would.
    span = _http_tracer.start_span(
        f"{request.method} {resource.canonical if resource is not None else 'unmatched'}",
        context=context,
        kind=trace.SpanKind.SERVER,
    )
    token = otel_context.attach(trace.set_span_in_context(span, context))
    try:
        response = await handler(request)
        span.set_attribute("http.response.status_code", response.status)
        return response
    except BaseException as error:
        if isinstance(error, Exception):
            span.record_exception(error)
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        raise
    finally:
        otel_context.detach(token)
        span.end()


@dataclass
class Readiness:
    ready: bool
    detail: dict[str, Any] = field(default_factory=dict)


ReadinessProbe = Callable[[], Awaitable[Readiness]]

REGISTRY_KEY = web.AppKey("metrics_registry", CollectorRegistry)
READINESS_KEY = web.AppKey("readiness_probe", object)


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    probe: ReadinessProbe = request.app[READINESS_KEY]  # type: ignore[assignment]
    result = await probe()
    body = {"status": "ready" if result.ready else "not ready", **result.detail}
    return web.json_response(body, status=200 if result.ready else 503, dumps=lambda o: orjson.dumps(o, default=str).decode())


async def _metrics(request: web.Request) -> web.Response:
    payload = generate_latest(request.app[REGISTRY_KEY])
    return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_health_routes(app: web.Application, registry: CollectorRegistry, readiness: ReadinessProbe) -> None:
    """`/healthz` (the process lives), `/readyz` (it can do its job), `/metrics` (Prometheus)."""
    app[REGISTRY_KEY] = registry
    app[READINESS_KEY] = readiness
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)


# Milliseconds up to the 3-second TradingView budget and beyond.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)
