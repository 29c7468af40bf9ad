"""The control service's HTTP door: /bot/settings behind a bearer token, plus health and metrics."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.control import handlers, openapi
from services.control.bootstrap import Control
from services.control.commands import CommandTable
from services.control.telegram import TelegramCommands
from services.control.domain import InvalidChange, initial_mode, requested_mode
from shared import mongo
from shared.contracts import KillSwitchChangedV1, KillSwitchMode, KillSwitchTripV1, Message, RiskLimitsV1, WireDecimal
from shared.errors import ConfigurationError, PermanentError
from shared.messaging import CONTROL_TRIPS, Consumer, PublishFailed
from shared.runtime import raise_if_cancelling
from shared.observability import tracing_middleware, Readiness, add_health_routes
from shared.redaction import redact

log = logging.getLogger(__name__)

CONTROL_KEY = web.AppKey("control", Control)
REASON_MAX = 500  # a reason is echoed in /status, the history and Telegram
METRICS_KEY = web.AppKey("control_metrics", object)
TELEGRAM_KEY = web.AppKey("control_telegram", object)
SECRETS_KEY = web.AppKey("control_secrets", tuple)


class RiskChange(RiskLimitsV1):
    """The limits a request may set: numbers the database stores exactly (a Decimal128 holds 34 digits, an integer 8
    bytes). Beyond them the write failed after the request was accepted, and the answer was a 500."""

    max_notional_usdt: WireDecimal | None = Field(default=None, ge=0, max_digits=34)
    max_orders_per_minute: int | None = Field(default=None, ge=0, le=2**63 - 1)
    daily_loss_limit_usdt: WireDecimal | None = Field(default=None, ge=0, max_digits=34)


class SettingsChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    autotrade: bool | None = None
    mode: str | None = None
    reason: str = Field("", max_length=REASON_MAX)
    force: bool = False  # turn trading on even with signals waiting in the executor's queues
    risk: RiskChange | None = None  # limits over the executor's RISK_* settings; a null one goes back to its setting


class ControlMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.mode = Gauge("tvtb_killswitch_mode", "Kill-switch mode this service believes (1 for the current one)", ["mode"], registry=registry)
        self.requests = Counter("tvtb_control_requests_total", "Control API requests by result", ["endpoint", "result"], registry=registry)

    def show(self, state: KillSwitchChangedV1) -> None:
        for mode in KillSwitchMode:
            self.mode.labels(mode.value).set(1 if mode is state.mode else 0)


def _json(body: dict, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=lambda o: orjson.dumps(o, default=str).decode())


def _error(status: int, reason: str) -> web.Response:
    return _json({"status": "error", "reason": reason}, status)


def _invalid(error: ValidationError, what: str) -> web.Response:
    first = error.errors(include_input=False)[0]
    return _error(400, f"invalid {what} request: {'.'.join(str(p) for p in first['loc']) or 'body'}: {first['msg']}")


def state_body(state: KillSwitchChangedV1 | None) -> dict:
    if state is None:
        return {"autotrade": False, "mode": None, "version": 0, "set_by": None, "reason": None, "changed_at": None}
    return {
        "autotrade": state.autotrade,
        "mode": state.mode.value,
        "version": state.version,
        "set_by": state.actor,
        "reason": state.reason,
        "changed_at": state.changed_at.isoformat(),
        "forced": state.forced,
        "backlog": state.backlog,
        "flatten": state.flatten,
        "risk": state.risk_limits.model_dump(mode="json") if state.risk_limits else None,
    }


@web.middleware
async def json_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Every refusal is JSON with a reason, and no reason carries a secret.

    A refusal aiohttp raises itself (no such route or method, a body over the size limit) is answered as the API's
    own; the path is never quoted. A reason may quote input (a field's name, a signal id from the path), and input may
    hold a token pasted in the wrong place: every secret the service holds is taken out, as the ingress does.
    """
    try:
        response = await handler(request)
    except web.HTTPException as error:
        if not 400 <= error.status < 500 or error.content_type == "application/json":
            raise
        reasons = {404: "no such route (GET /openapi.json lists them)", 405: f"{request.method} is not allowed on this route"}
        response = _error(error.status, reasons.get(error.status, error.text or error.reason))
        if "Allow" in error.headers:
            response.headers["Allow"] = error.headers["Allow"]
    if (response.status >= 400 and isinstance(response, web.Response) and response.content_type == "application/json"
            and isinstance(response.body, bytes) and response.body):
        body = orjson.loads(response.body)
        cleaned = _redacted(body, request.app[SECRETS_KEY])
        if cleaned != body:
            response.body = orjson.dumps(cleaned)
    return response


def _without_secrets(request: web.Request, reason: str) -> str:
    """A reason is kept in the history, published, logged and shown in Telegram: a token pasted into it is taken out
    (***), never refused, so that turning trading off or flattening in an incident can never be turned away."""
    return redact(reason, request.app[SECRETS_KEY])


def _redacted(value: object, secrets: tuple[str, ...]) -> object:
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):
        return {key: _redacted(item, secrets) for key, item in value.items()}
    if isinstance(value, list):
        return [_redacted(item, secrets) for item in value]
    return value


@web.middleware
async def bearer_auth(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Everything under /bot needs `Authorization: Bearer $CONTROL_API_TOKEN`, compared in constant time."""
    if request.path.startswith("/bot") or request.path == "/status":
        expected = request.app[CONTROL_KEY].settings.control_api_token.get_secret_value().encode()
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), expected):
            # The route's pattern, never the raw path: a path may hold anything (a token pasted into it), and a label
            # per path would let anyone grow the public /metrics without end.
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            log.warning("control request refused: missing or wrong bearer token", extra={"path": route, "peer": request.remote})
            request.app[METRICS_KEY].requests.labels(route, "unauthorized").inc()
            return _error(401, "missing or wrong bearer token")
    return await handler(request)


async def get_settings(request: web.Request) -> web.Response:
    control = request.app[CONTROL_KEY]
    state = await handlers.current_state(control.deps)
    request.app[METRICS_KEY].requests.labels("/bot/settings", "read").inc()
    return _json(state_body(state))


async def put_settings(request: web.Request) -> web.Response:
    control = request.app[CONTROL_KEY]
    metrics: ControlMetrics = request.app[METRICS_KEY]
    try:
        change = SettingsChange.model_validate_json(await request.read())
        current = await handlers.current_state(control.deps)
        if change.risk is not None and change.autotrade is None and change.mode is None and current is not None:
            mode = current.mode  # only the limits change
        else:
            mode = requested_mode(change.autotrade, change.mode)
    except ValidationError as error:
        return _invalid(error, "settings")
    except InvalidChange as error:
        return _error(400, str(error))
    change.reason = _without_secrets(request, change.reason)
    try:
        risk = handlers.merged_risk(current.risk_limits if current else None, change.risk) if change.risk is not None else None
        state = await handlers.set_mode(control.deps, mode, actor="api", reason=change.reason or "changed through the API",
                                        force=change.force, risk_limits=risk, expected_version=current.version if current else 0)
    except handlers.BacklogNotEmpty as error:
        metrics.requests.labels("/bot/settings", "backlog").inc()
        return _json({"status": "error", "reason": str(error), "backlog": error.backlog}, 409)
    except handlers.BacklogUnknown as error:
        return _error(503, f"{error}; trading stays as it is (send force to turn it on without knowing the backlog)")
    except handlers.ConcurrentChange as error:
        return _error(409, str(error))
    except PublishFailed as error:
        metrics.requests.labels("/bot/settings", "not_distributed").inc()
        # Saved in Mongo but not yet on the stream: say so; start-up or the next change republishes it.
        return _error(503, f"the change was saved but not yet distributed to the services ({error}); "
                           "it is sent as soon as the broker takes it")
    metrics.show(state)
    metrics.requests.labels("/bot/settings", "changed").inc()
    return _json(state_body(state))


async def get_history(request: web.Request) -> web.Response:
    control = request.app[CONTROL_KEY]
    states = await handlers.history(control.deps)
    return _json({"history": [state_body(s) for s in states]})


async def get_openapi(request: web.Request) -> web.Response:
    return _json(openapi.SPEC)


async def get_status(request: web.Request) -> web.Response:
    """GET /status: the mode and who set it, the executor's backlog and replicas, the latest signal and order."""
    body = await handlers.status(request.app[CONTROL_KEY].deps)
    bot = request.app[TELEGRAM_KEY]
    body["telegram_commands"] = None if bot is None else ("connected" if bot.connected else "not connected")
    return _json(body)


async def get_account(request: web.Request) -> web.Response:
    """GET /bot/account: positions and balance as an executor last read them at BingX, with when."""
    snapshot = await handlers.account(request.app[CONTROL_KEY].deps)
    if snapshot is None:
        return _error(404, "no executor has read the account yet")
    return _json(snapshot)


async def get_recent_signals(request: web.Request) -> web.Response:
    return _json({"signals": await handlers.recent_signals(request.app[CONTROL_KEY].deps, _limit(request))})


async def get_recent_orders(request: web.Request) -> web.Response:
    return _json({"orders": await handlers.recent_orders(request.app[CONTROL_KEY].deps, _limit(request))})


def _limit(request: web.Request) -> int:
    try:
        return min(max(int(request.query.get("limit", handlers.STATUS_RECENT)), 1), 200)
    except ValueError:
        raise web.HTTPBadRequest(text='{"status": "error", "reason": "limit must be a number from 1 to 200"}',
                                 content_type="application/json") from None


class FlattenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("", max_length=REASON_MAX)
    confirm: str | None = None


async def post_flatten(request: web.Request) -> web.Response:
    """POST /bot/flatten: the first call asks for a confirmation; the same call with `confirm` within 60 s flattens."""
    control = request.app[CONTROL_KEY]
    metrics: ControlMetrics = request.app[METRICS_KEY]
    raw = await request.read()
    try:
        body = FlattenRequest.model_validate_json(raw) if raw.strip() else FlattenRequest()
    except ValidationError as error:
        return _invalid(error, "flatten")
    body.reason = _without_secrets(request, body.reason)
    if body.confirm is None:
        code = await handlers.ask_flatten(control.deps, actor="api", reason=body.reason or "flatten through the API")
        metrics.requests.labels("/bot/flatten", "asked").inc()
        return _json({"status": "confirm", "confirm": code, "expires_in_s": handlers.FLATTEN_CONFIRM_S,
                      "reason": handlers.FLATTEN_WARNING}, 202)
    try:
        state = await handlers.confirm_flatten(control.deps, body.confirm, actor="api")
    except handlers.ConfirmationRefused as error:
        metrics.requests.labels("/bot/flatten", "refused").inc()
        return _error(409, str(error))
    except handlers.ConcurrentChange as error:
        return _error(409, str(error))
    except PublishFailed as error:
        metrics.requests.labels("/bot/flatten", "not_distributed").inc()
        return _error(503, f"the flatten was saved but not yet distributed to the services ({error}); "
                           "it is sent as soon as the broker takes it")
    metrics.show(state)
    metrics.requests.labels("/bot/flatten", "flattening").inc()
    return _json({"status": "flattening", **state_body(state)}, 202)


async def get_flatten(request: web.Request) -> web.Response:
    """GET /bot/flatten: how the latest flatten went (an executor records it in flatten_runs)."""
    run = await handlers.latest_flatten(request.app[CONTROL_KEY].deps)
    if run is None:
        return _error(404, "no flatten was ever run")
    return _json({"version": run["_id"], "status": run["status"], "complete": run.get("complete"), "by": run.get("by"),
                  "started_at": run.get("started_at"), "result": run.get("result")})


class ReplayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("", max_length=REASON_MAX)


async def get_parked(request: web.Request) -> web.Response:
    control = request.app[CONTROL_KEY]
    parked = await handlers.parked_signals(control.deps)
    return _json({"parked": [{"signal_id": d.pop("_id"), **d} for d in parked]})


async def post_replay(request: web.Request) -> web.Response:
    """POST /bot/signals/{signal_id}/replay: run an expired (parked) signal now, once."""
    control = request.app[CONTROL_KEY]
    metrics: ControlMetrics = request.app[METRICS_KEY]
    signal_id = request.match_info["signal_id"]
    raw = await request.read()
    try:
        change = ReplayRequest.model_validate_json(raw) if raw.strip() else ReplayRequest()
    except ValidationError as error:
        return _invalid(error, "replay")
    change.reason = _without_secrets(request, change.reason)
    try:
        replay = await handlers.replay_signal(control.deps, signal_id, actor="api", reason=change.reason or "replayed through the API")
    except handlers.ReplayRefused as error:
        metrics.requests.labels("/bot/signals/replay", "refused").inc()
        return _error(error.status, str(error))
    except PublishFailed as error:
        metrics.requests.labels("/bot/signals/replay", "not_sent").inc()
        return _error(503, f"the replay was not sent ({error}); try again: it is sent at most once")
    metrics.requests.labels("/bot/signals/replay", "sent").inc()
    return _json({"status": "replayed", "signal_id": replay.signal_id, "replay_of": signal_id}, 202)


async def _keep_distributed(control: Control, metrics: ControlMetrics, interval_s: float = 1.0) -> None:
    """A change saved while the broker was unreachable must still reach every service: retry until it does."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            state = await handlers.distribute_pending(control.deps)
        except Exception as error:  # broker or database away: the next round tries again
            raise_if_cancelling()
            log.warning("kill-switch state not distributed yet", extra={"error": f"{type(error).__name__}: {error}"[:300]})
            continue
        if state is not None:
            metrics.show(state)


async def _keep_telegram(bot: TelegramCommands) -> None:
    """Log the control bot in, trying again while Telegram is unreachable; REST works meanwhile."""
    delay = 1.0
    while True:
        try:
            await bot.start()
            return
        except ConfigurationError as error:
            # A bad token or api id: retrying would not help. REST goes on; say it loudly, once.
            log.error("telegram control bot not started: %s", error)
            return
        except Exception as error:
            raise_if_cancelling()
            log.warning("telegram control bot not connected yet", extra={"error": type(error).__name__, "retry_in_s": delay})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)


def telegram_bot(control: Control, client_factory=None) -> TelegramCommands | None:
    settings = control.settings
    if not settings.telegram_enabled:
        return None
    assert settings.telegram_api_id is not None and settings.telegram_api_hash is not None and settings.telegram_bot_token is not None
    return TelegramCommands(api_id=settings.telegram_api_id, api_hash=settings.telegram_api_hash.get_secret_value(),
                            bot_token=settings.telegram_bot_token.get_secret_value(),
                            session_path=settings.telegram_control_session_path,
                            table=CommandTable(control.deps, frozenset(settings.telegram_admin_ids)), client_factory=client_factory)


def create_app(control: Control, registry: CollectorRegistry | None = None, *, telegram_client_factory=None) -> web.Application:
    registry = registry or CollectorRegistry()
    app = web.Application(middlewares=[tracing_middleware, json_errors, bearer_auth], client_max_size=64 * 1024)
    app[CONTROL_KEY] = control
    app[SECRETS_KEY] = tuple(secret for secret in control.settings.secret_values() if secret)
    app[METRICS_KEY] = ControlMetrics(registry)
    app[TELEGRAM_KEY] = telegram_bot(control, telegram_client_factory)
    app.router.add_get("/bot/settings", get_settings)
    app.router.add_put("/bot/settings", put_settings)
    app.router.add_get("/bot/settings/history", get_history)
    app.router.add_get("/openapi.json", get_openapi)
    app.router.add_get("/status", get_status)
    app.router.add_get("/bot/signals", get_recent_signals)
    app.router.add_get("/bot/orders", get_recent_orders)
    app.router.add_get("/bot/account", get_account)
    app.router.add_post("/bot/flatten", post_flatten)
    app.router.add_get("/bot/flatten", get_flatten)
    app.router.add_get("/bot/signals/parked", get_parked)
    app.router.add_post("/bot/signals/{signal_id}/replay", post_replay)

    async def readiness() -> Readiness:
        state = await handlers.current_state(control.deps) if await mongo.ping(control.deps.db) else None
        broker = not control.connection.is_closed
        bot = app[TELEGRAM_KEY]
        detail = {"broker": broker, "mongo": state is not None, "mode": state.mode.value if state else None,
                  "telegram": bot.connected if bot is not None else None}
        return Readiness(ready=broker and state is not None, detail=detail)

    add_health_routes(app, registry, readiness)

    async def distribute_state(app: web.Application):
        state = await handlers.bootstrap_state(control.deps, initial_mode(control.settings.initial_autotrade_effective))
        app[METRICS_KEY].show(state)
        keeper = asyncio.create_task(_keep_distributed(control, app[METRICS_KEY]))

        async def on_trip(message: Message, _raw: object) -> None:
            if not isinstance(message, KillSwitchTripV1):
                raise PermanentError(f"{type(message).__name__} does not belong on {CONTROL_TRIPS.name}")
            tripped = await handlers.apply_trip(control.deps, message)
            if tripped is not None:
                app[METRICS_KEY].show(tripped)

        trips = Consumer(channel=await control.connection.channel(), queue_name=CONTROL_TRIPS.name, handler=on_trip, name="control")
        await trips.start()
        bot_task = None
        if app[TELEGRAM_KEY] is not None:
            bot_task = asyncio.create_task(_keep_telegram(app[TELEGRAM_KEY]))
        yield
        if bot_task is not None:
            bot_task.cancel()
            await asyncio.gather(bot_task, return_exceptions=True)
            await app[TELEGRAM_KEY].close()
        await trips.stop()
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)

    app.cleanup_ctx.append(distribute_state)
    return app
