"""The control service over real RabbitMQ and MongoDB: the kill switch's REST door and its distribution."""

from __future__ import annotations

import contextlib

import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.control.app import create_app
from services.control.bootstrap import build
from services.control.settings import ControlSettings
from shared import messaging
from shared.contracts import KillSwitchChangedV1, KillSwitchMode, utcnow
from shared.killswitch import KillSwitchView, stream_reader
from tests.support import wait_for

TOKEN = "control-token-for-tests-0123456789"


def settings(amqp_url: str, mongo_uri: str, db: str, **extra) -> ControlSettings:
    return ControlSettings(amqp_url=amqp_url, mongo_uri=mongo_uri, mongo_db=db, control_api_token=TOKEN, **extra)


@contextlib.asynccontextmanager
async def control_client(config: ControlSettings):
    async with build(config) as control:
        async with TestClient(TestServer(create_app(control))) as client:
            yield client


@contextlib.asynccontextmanager
async def stream_view(amqp_url: str):
    connection = await messaging.connect(amqp_url, "test-reader")
    try:
        channel = await connection.channel()
        await messaging.declare_topology(channel)
        view = KillSwitchView()
        reader = stream_reader(channel, view)
        await reader.start()
        yield view
        await reader.stop()
    finally:
        await connection.close()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_fresh_install_publishes_initial_state_and_put_changes_it(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    async with control_client(settings(amqp_url, mongo_uri, mongo_db_name)) as client:
        response = await client.get("/bot/settings", headers=AUTH)
        body = await response.json()
        assert response.status == 200
        assert body["autotrade"] is True and body["mode"] == "running" and body["version"] == 1
        assert body["set_by"] == "system"

        response = await client.put("/bot/settings", json={"autotrade": False, "reason": "incident 42"}, headers=AUTH)
        body = await response.json()
        assert response.status == 200, body
        assert body == {**body, "autotrade": False, "mode": "halted", "version": 2, "set_by": "api", "reason": "incident 42"}

        history = await (await client.get("/bot/settings/history", headers=AUTH)).json()
        assert [h["version"] for h in history["history"]] == [2, 1]

    # A reader that joins after both changes learns the latest from the broker alone.
    async with stream_view(amqp_url) as view:
        await wait_for(lambda: _known(view), what="the kill-switch state from the stream")
        assert view.mode is KillSwitchMode.HALTED and view.state.version == 2
    docs = await mongo_db.control_history.find({}, {"_id": 0}).sort("version", 1).to_list(None)
    assert [(d["version"], d["mode"], d["actor"]) for d in docs] == [(1, "running", "system"), (2, "halted", "api")]


async def _known(view: KillSwitchView) -> bool:
    return view.known.is_set()


async def test_initial_autotrade_is_off_in_live_mode(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    async with control_client(settings(amqp_url, mongo_uri, mongo_db_name, trading_mode="live")) as client:
        body = await (await client.get("/bot/settings", headers=AUTH)).json()
    assert body["autotrade"] is False and body["mode"] == "halted"


async def test_restart_keeps_state_and_republishes_it(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    config = settings(amqp_url, mongo_uri, mongo_db_name)
    async with control_client(config) as client:
        await client.put("/bot/settings", json={"mode": "entries_off", "reason": "news"}, headers=AUTH)
    async with control_client(config) as client:
        body = await (await client.get("/bot/settings", headers=AUTH)).json()
    assert body["mode"] == "entries_off" and body["version"] == 2
    assert await mongo_db.control_history.count_documents({}) == 2


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}],
)
async def test_settings_need_the_bearer_token(amqp_url, mongo_uri, mongo_db_name, mongo_db, headers):
    async with control_client(settings(amqp_url, mongo_uri, mongo_db_name)) as client:
        for method, path in (("GET", "/bot/settings"), ("PUT", "/bot/settings"), ("GET", "/bot/settings/history")):
            response = await client.request(method, path, json={"autotrade": False}, headers=headers)
            body = await response.text()
            assert response.status == 401, (method, path)
            assert "wrong" not in body.replace("missing or wrong", "")  # nothing presented is echoed
    assert await mongo_db.control_history.count_documents({}) == 1  # only the initial state


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({}, "give 'autotrade'"),
        ({"mode": "sideways"}, "'mode' must be one of"),
        ({"autotrade": True, "mode": "halted"}, "contradicts"),
        ({"autotrade": "maybe"}, "autotrade"),
        ({"autotrade": False, "surprise": 1}, "surprise"),
    ],
)
async def test_bad_settings_requests_are_refused_with_a_reason(amqp_url, mongo_uri, mongo_db_name, mongo_db, payload, reason):
    async with control_client(settings(amqp_url, mongo_uri, mongo_db_name)) as client:
        response = await client.put("/bot/settings", json=payload, headers=AUTH)
        body = await response.json()
    assert response.status == 400
    assert reason in body["reason"]
    assert await mongo_db.control_history.count_documents({}) == 1


async def test_readyz_reports_the_mode(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    async with control_client(settings(amqp_url, mongo_uri, mongo_db_name)) as client:
        response = await client.get("/readyz")
        body = await response.json()
        metrics = await (await client.get("/metrics")).text()
    assert response.status == 200 and body["mode"] == "running"
    assert 'tvtb_killswitch_mode{mode="running"} 1.0' in metrics


async def test_a_change_saved_while_the_broker_refused_it_is_distributed_later(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    async with control_client(settings(amqp_url, mongo_uri, mongo_db_name)) as client, stream_view(amqp_url) as view:
        await wait_for(lambda: _known(view), what="the initial state")
        # What a PUT leaves when its publish fails: the next version saved in Mongo, not on the stream.
        await mongo_db.control_history.insert_one(
            {"version": 2, "mode": "halted", "actor": "api", "reason": "saved during an outage", "changed_at": utcnow()}
        )

        async def halted() -> bool:
            return view.mode is KillSwitchMode.HALTED and view.state.version == 2

        await wait_for(halted, what="the saved change to reach the stream")
        body = await (await client.get("/readyz")).json()
    assert body["mode"] == "halted"


async def test_a_newer_state_on_the_stream_than_in_the_database_is_adopted_not_undercut(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    # The database was restored from an old backup (here: empty) while the stream still says v5 halted.
    connection = await messaging.connect(amqp_url, "test-writer")
    try:
        await messaging.declare_topology(await connection.channel())
        publisher = await messaging.Publisher.open(connection)
        await publisher.publish(
            KillSwitchChangedV1(version=5, mode=KillSwitchMode.HALTED, actor="telegram:42", reason="before the restore", changed_at=utcnow()),
            exchange="", routing_key=messaging.CONTROL_STREAM,
        )
    finally:
        await connection.close()
    async with control_client(settings(amqp_url, mongo_uri, mongo_db_name)) as client:
        body = await (await client.get("/bot/settings", headers=AUTH)).json()
        assert (body["version"], body["mode"], body["set_by"]) == (5, "halted", "telegram:42")  # not a fresh install
        changed = await (await client.put("/bot/settings", json={"autotrade": True}, headers=AUTH)).json()
    assert changed["version"] == 6  # above what every reader has seen, so it takes effect


async def test_a_services_trip_becomes_the_state_once_and_never_loosens_the_switch(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    from shared.contracts import KillSwitchTripV1

    def trip(trip_id: str, mode: KillSwitchMode) -> KillSwitchTripV1:
        return KillSwitchTripV1(trip_id=trip_id, mode=mode, reason="BingX refused the API key", actor="executor",
                                severity="SEV1", signal_id="sig-1", tripped_at=utcnow())

    async def mode_is(client, mode: str, version: int) -> bool:
        body = await (await client.get("/bot/settings", headers=AUTH)).json()
        return body["mode"] == mode and body["version"] == version

    async with control_client(settings(amqp_url, mongo_uri, mongo_db_name)) as client:
        connection = await messaging.connect(amqp_url, "test-executor")
        try:
            publisher = await messaging.Publisher.open(connection)
            revoked = trip("executor:sig-1:halted", KillSwitchMode.HALTED)
            await publisher.publish(revoked, exchange=messaging.EVENTS_EXCHANGE, message_id=revoked.trip_id)
            await wait_for(lambda: mode_is(client, "halted", 2), what="the trip to halt trading")
            body = await (await client.get("/bot/settings", headers=AUTH)).json()
            assert body["set_by"] == "executor" and body["reason"] == "SEV1: BingX refused the API key"

            # An operator looks and turns trading back on; the same trip delivered again must not undo that.
            response = await client.put("/bot/settings", json={"autotrade": True, "reason": "key rotated"}, headers=AUTH)
            assert response.status == 200, await response.text()
            await publisher.publish(revoked, exchange=messaging.EVENTS_EXCHANGE, message_id=revoked.trip_id)
            # A trip to entries_off while halted would loosen the switch: not applied. Sent after the redelivery,
            # it also tells when the redelivery has been handled.
            await client.put("/bot/settings", json={"autotrade": False, "reason": "again"}, headers=AUTH)
            looser = trip("executor:sig-2:entries_off", KillSwitchMode.ENTRIES_OFF)
            await publisher.publish(looser, exchange=messaging.EVENTS_EXCHANGE, message_id=looser.trip_id)

            async def handled() -> bool:
                return await mongo_db.control_trips.count_documents({}) == 2

            await wait_for(handled, what="both trips to be handled")
        finally:
            await connection.close()
        assert await mode_is(client, "halted", 4)
    docs = await mongo_db.control_history.find({}, {"_id": 0}).sort("version", 1).to_list(None)
    assert [(d["version"], d["mode"], d["actor"]) for d in docs] == [
        (1, "running", "system"), (2, "halted", "executor"), (3, "running", "api"), (4, "halted", "api")]
    applied = {d["_id"]: d["applied_version"] for d in await mongo_db.control_trips.find({}).to_list(None)}
    assert applied == {"executor:sig-1:halted": 2, "executor:sig-2:entries_off": None}


async def _record_signal(mongo_db, signal_id: str, status: str, **fields) -> None:
    """A signal as the executor records it (services/executor/handlers.py, _claim then _finish)."""
    from decimal import Decimal
    from datetime import timedelta

    from shared.contracts import Action, SignalReceivedV1

    received = utcnow() - timedelta(minutes=10)
    signal = SignalReceivedV1(signal_id=signal_id, token_name="main", symbol="BTC/USDT:USDT", action=Action.BUY,
                              qty=Decimal("0.01"), max_lag_s=30, alert_time=received, received_at=received,
                              resend_key="fp" if signal_id.startswith("h-") else None)
    await mongo_db.signals.insert_one({"_id": signal_id, "status": status, "symbol": signal.symbol, "action": "buy",
                                       "signal": signal.model_dump(mode="python"), "received_at": received,
                                       "updated_at": received, **fields})


async def test_an_expired_signal_is_parked_and_replayed_once_as_a_fresh_signal(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    from tests.support import drain_signals

    await _record_signal(mongo_db, "late-1", "expired", reason="older than its max lag (600.0s > 30s); parked for replay")
    await _record_signal(mongo_db, "halted-1", "skipped", reason="trading is halted")
    async with control_client(settings(amqp_url, mongo_uri, mongo_db_name)) as client:
        parked = await (await client.get("/bot/signals/parked", headers=AUTH)).json()
        assert [p["signal_id"] for p in parked["parked"]] == ["late-1"]

        assert (await client.post("/bot/signals/late-1/replay")).status == 401  # the bearer token guards it too
        response = await client.post("/bot/signals/late-1/replay", json={"reason": "missed while BingX was down"}, headers=AUTH)
        assert response.status == 202, await response.text()
        assert await response.json() == {"status": "replayed", "signal_id": "late-1.replay", "replay_of": "late-1"}

        # Asked again before the executor saw it (a lost answer, say): the same signal id goes again, run at most once.
        again = await client.post("/bot/signals/late-1/replay", headers=AUTH)
        assert again.status == 202 and (await again.json())["signal_id"] == "late-1.replay"
        await mongo_db.signals.insert_one({"_id": "late-1.replay", "status": "placed"})  # the executor has it now
        third = await client.post("/bot/signals/late-1/replay", headers=AUTH)
        assert third.status == 409 and "already replayed as 'late-1.replay'" in (await third.json())["reason"]
        skipped = await client.post("/bot/signals/halted-1/replay", headers=AUTH)
        assert skipped.status == 409 and "only an expired signal" in (await skipped.json())["reason"]
        unknown = await client.post("/bot/signals/nope/replay", headers=AUTH)
        assert unknown.status == 404 and "no signal 'nope'" in (await unknown.json())["reason"]
        bad = await client.post("/bot/signals/late-1/replay", data=b'{"reason": 5}', headers=AUTH)
        assert bad.status == 400 and "reason" in (await bad.json())["reason"]
        assert (await (await client.get("/bot/signals/parked", headers=AUTH)).json())["parked"] == []

    replay, twice = await drain_signals(amqp_url)
    assert twice.signal_id == replay.signal_id
    assert (replay.signal_id, replay.replay_of, replay.alert_time) == ("late-1.replay", "late-1", None)
    assert (utcnow() - replay.received_at).total_seconds() < 30  # it ages from the replay, not from the alert
    assert str(replay.qty) == "0.01" and replay.max_lag_s == 30
    original = await mongo_db.signals.find_one({"_id": "late-1"})
    assert original["status"] == "expired" and original["replayed_as"] == "late-1.replay" and original["replayed_by"] == "api"
    assert original["replay_reason"] == "missed while BingX was down"


async def test_trading_is_not_turned_back_on_while_signals_wait_unless_forced(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    from shared.contracts import Action, SignalReceivedV1

    async with control_client(settings(amqp_url, mongo_uri, mongo_db_name)) as client:
        assert (await client.put("/bot/settings", json={"autotrade": False, "reason": "incident"}, headers=AUTH)).status == 200
        # No executor runs: three signals wait in its queues (two symbols, so perhaps two shards).
        connection = await messaging.connect(amqp_url, "test-backlog")
        try:
            publisher = await messaging.Publisher.open(connection)
            for n, symbol in enumerate(("BTC/USDT:USDT", "BTC/USDT:USDT", "ETH/USDT:USDT")):
                signal = SignalReceivedV1(signal_id=f"wait-{n}", token_name="t", symbol=symbol, action=Action.BUY, received_at=utcnow())
                await publisher.publish(signal, exchange=messaging.SIGNALS_EXCHANGE, message_id=signal.signal_id)
        finally:
            await connection.close()

        refused = await client.put("/bot/settings", json={"autotrade": True, "reason": "all clear"}, headers=AUTH)
        body = await refused.json()
        assert refused.status == 409 and body["reason"].startswith("3 signals wait in the executor's queues")
        assert sum(body["backlog"].values()) == 3 and set(body["backlog"]) == {s.name for s in messaging.EXECUTOR_SHARDS}
        assert (await (await client.get("/bot/settings", headers=AUTH)).json())["mode"] == "halted"  # nothing changed

        forced = await client.put("/bot/settings", json={"autotrade": True, "reason": "all clear", "force": True}, headers=AUTH)
        body = await forced.json()
        assert forced.status == 200 and body["mode"] == "running" and body["forced"] is True and body["backlog"] == 3
        assert body["reason"] == "all clear (forced with 3 signals waiting)"
        history = (await (await client.get("/bot/settings/history", headers=AUTH)).json())["history"]
        assert history[0]["forced"] is True and history[1]["forced"] is False

        # Turned off and on again with the queues empty: no force needed, nothing recorded as forced.
        from tests.support import drain_signals

        await drain_signals(amqp_url)
        assert (await client.put("/bot/settings", json={"mode": "entries_off"}, headers=AUTH)).status == 200
        again = await client.put("/bot/settings", json={"autotrade": True}, headers=AUTH)
        body = await again.json()
        assert again.status == 200 and body["forced"] is False and body["backlog"] == 0


async def test_status_and_the_latest_signals_and_orders_answer_with_the_token_only(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    from decimal import Decimal

    await _record_signal(mongo_db, "s-1", "placed")
    await mongo_db.orders.insert_one({"client_order_id": "c1", "signal_id": "s-1", "symbol": "BTC/USDT:USDT", "side": "buy",
                                      "amount": Decimal("0.01"), "status": "closed", "order_id": "9", "reduce_only": False,
                                      "placed_at": utcnow()})
    await mongo_db.executor_replicas.insert_one({"_id": "exec-a", "holding": [0, 1, 2, 3], "seen_at": utcnow()})
    async with control_client(settings(amqp_url, mongo_uri, mongo_db_name)) as client:
        for path in ("/status", "/bot/signals", "/bot/orders"):
            assert (await client.get(path)).status == 401
        status = await (await client.get("/status", headers=AUTH)).json()
        assert status["mode"] == "running" and status["set_by"] == "system" and status["backlog_total"] == 0
        assert status["executor_replicas"] == [{"replica": "exec-a", "shards": [0, 1, 2, 3], "seen_at": status["executor_replicas"][0]["seen_at"]}]
        assert status["last_signal"]["signal_id"] == "s-1" and status["last_order"]["order_id"] == "9"
        assert status["telegram_commands"] is None  # not configured
        signals = (await (await client.get("/bot/signals?limit=5", headers=AUTH)).json())["signals"]
        assert [s["signal_id"] for s in signals] == ["s-1"]
        orders = (await (await client.get("/bot/orders", headers=AUTH)).json())["orders"]
        assert [(o["order_id"], o["amount"]) for o in orders] == [("9", "0.01")]
        bad = await client.get("/bot/orders?limit=lots", headers=AUTH)
        assert bad.status == 400 and "limit" in (await bad.json())["reason"]


async def test_the_openapi_description_names_every_route_and_only_those(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    async with build(settings(amqp_url, mongo_uri, mongo_db_name)) as control:
        app = create_app(control)
        served = {(route.method.lower(), route.resource.canonical) for route in app.router.routes()
                  if route.method != "HEAD" and route.resource is not None}
        async with TestClient(TestServer(app)) as client:
            response = await client.get("/openapi.json")  # public: it holds no secret
            spec = await response.json()
    assert response.status == 200 and spec["openapi"].startswith("3.1")
    described = {(method, path) for path, methods in spec["paths"].items() for method in methods}
    assert described == served
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            assert operation.get("summary") and operation.get("responses"), (method, path)


async def test_a_late_reader_learns_the_newest_version_even_after_an_older_one_was_published_last(
        amqp_url, mongo_uri, mongo_db_name, mongo_db):
    from services.control import handlers

    async with build(settings(amqp_url, mongo_uri, mongo_db_name)) as control:
        first = await handlers.bootstrap_state(control.deps, KillSwitchMode.RUNNING)
        halted = await handlers.change_mode(control.deps, KillSwitchMode.HALTED, actor="api", reason="incident")
        # Another writer, late, publishes the version it had (a second control replica, a republish racing a change).
        await handlers.distribute(control.deps, first)
    async with stream_view(amqp_url) as view:  # reads from offset `last`
        await wait_for(lambda: _known(view), what="the late reader to learn the state")
        assert (view.state.version, view.mode) == (halted.version, KillSwitchMode.HALTED)
        # And a stale version arriving now is ignored.
        assert view.apply(first) is False and view.mode is KillSwitchMode.HALTED


async def test_a_change_decided_on_an_older_state_is_refused_not_undoing_a_halt(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    from services.control import handlers

    async with control_client(settings(amqp_url, mongo_uri, mongo_db_name)) as client:
        # A risk-only change read v1 (running); a halt lands before it is written: it must not put running back.
        async with build(settings(amqp_url, mongo_uri, mongo_db_name)) as other:
            await handlers.change_mode(other.deps, KillSwitchMode.HALTED, actor="telegram:1", reason="incident")
            with pytest.raises(handlers.ConcurrentChange):
                await handlers.set_mode(other.deps, KillSwitchMode.RUNNING, actor="api", reason="risk only", expected_version=1)
        state = await (await client.get("/bot/settings", headers=AUTH)).json()
        assert (state["mode"], state["version"]) == ("halted", 2)
        long = await client.put("/bot/settings", json={"autotrade": False, "reason": "x" * 501}, headers=AUTH)
        assert long.status == 400 and "reason" in (await long.json())["reason"]


async def test_a_replay_the_kill_switch_would_skip_or_that_may_double_an_order_is_refused(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    await _record_signal(mongo_db, "late-2", "expired")
    await _record_signal(mongo_db, "late-3", "expired", client_order_id="tvtb0123", legs=[{"client_order_id": "tvtb0123"}])
    async with control_client(settings(amqp_url, mongo_uri, mongo_db_name)) as client:
        assert (await client.put("/bot/settings", json={"mode": "entries_off"}, headers=AUTH)).status == 200
        refused = await client.post("/bot/signals/late-2/replay", headers=AUTH)
        assert refused.status == 409 and "trading is entries_off" in (await refused.json())["reason"]
        assert "replayed_as" not in await mongo_db.signals.find_one({"_id": "late-2"})  # it can still be replayed later
        assert (await client.put("/bot/settings", json={"autotrade": True}, headers=AUTH)).status == 200
        risky = await client.post("/bot/signals/late-3/replay", headers=AUTH)
        assert risky.status == 409 and "may be at BingX" in (await risky.json())["reason"]
        assert (await client.post("/bot/signals/late-2/replay", headers=AUTH)).status == 202
