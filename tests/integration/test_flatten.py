"""`flatten` end to end on real servers: the control service's two-step door, an executor doing it at the simulator."""

from __future__ import annotations

import contextlib

import aio_pika

from services.executor.bootstrap import build as build_executor
from services.executor.consumers import consuming
from services.executor.settings import ExecutorSettings
from shared import messaging
from shared.contracts import KillSwitchMode, decode
from tests.bingx_sim_support import make_ccxt, running_sim
from tests.integration.test_control import AUTH, control_client, settings
from tests.support import wait_for

KEY, SECRET = "sim-key", "sim-secret-0123456789"
BTC, ETH = "BTC/USDT:USDT", "ETH/USDT:USDT"


@contextlib.asynccontextmanager
async def events(amqp_url: str):
    """Every event published on tvtb.events while inside."""
    seen: list = []
    connection = await messaging.connect(amqp_url, "test-events")
    try:
        channel = await connection.channel()
        await messaging.declare_topology(channel)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(messaging.EVENTS_EXCHANGE, routing_key="#")

        async def keep(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            seen.append(decode(message.type, message.body))
            await message.ack()

        await queue.consume(keep)
        yield seen
    finally:
        await connection.close()


async def open_positions(venue) -> list[tuple[str, str, float]]:
    return [(p["symbol"], p["side"], p["contracts"]) for p in await venue.fetch_positions() if p["contracts"]]


async def test_flatten_waits_for_its_confirmation_then_closes_everything_and_halts(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    async with running_sim(api_key=KEY, api_secret=SECRET, balance="10000", prices={"BTC-USDT": "60000", "ETH-USDT": "3000"}) as base_url:
        venue = make_ccxt(base_url, KEY, SECRET, sandbox=False)
        executor_settings = ExecutorSettings(amqp_url=amqp_url, mongo_uri=mongo_uri, mongo_db=mongo_db_name,
                                             bingx_api_key=KEY, bingx_api_secret=SECRET, bingx_base_url=base_url)
        try:
            async with events(amqp_url) as told, control_client(settings(amqp_url, mongo_uri, mongo_db_name)) as client, \
                    build_executor(executor_settings) as executor, consuming(executor):
                await venue.load_markets()
                await venue.create_order(BTC, "market", "buy", 0.01)
                await venue.create_order(ETH, "market", "sell", 0.1)
                await venue.create_order(BTC, "limit", "buy", 0.01, 50000)
                assert sorted(await open_positions(venue)) == [(BTC, "long", 0.01), (ETH, "short", 0.1)]

                asked = await client.post("/bot/flatten", json={"reason": "drill"}, headers=AUTH)
                body = await asked.json()
                assert asked.status == 202 and body["status"] == "confirm" and "closes every position" in body["reason"]
                code = body["confirm"]
                # Asked, not confirmed: nothing happens.
                assert (await (await client.get("/bot/settings", headers=AUTH)).json())["mode"] == "running"
                assert len(await open_positions(venue)) == 2 and len(await venue.fetch_open_orders()) == 1

                wrong = await client.post("/bot/flatten", json={"confirm": "00000000"}, headers=AUTH)
                assert wrong.status == 409 and "ask again" in (await wrong.json())["reason"]
                assert (await client.post("/bot/flatten", json={"confirm": code})).status == 401

                confirmed = await client.post("/bot/flatten", json={"confirm": code}, headers=AUTH)
                state = await confirmed.json()
                assert confirmed.status == 202 and state["status"] == "flattening"
                assert state["mode"] == "halted" and state["flatten"] is True and state["reason"] == "flatten: drill"
                used = await client.post("/bot/flatten", json={"confirm": code}, headers=AUTH)
                assert used.status == 409  # one confirmation, one flatten

                run = await wait_for(lambda: mongo_db.flatten_runs.find_one({"_id": state["version"], "status": "done"}),
                                     what="the executor to flatten")
                assert run["complete"] is True
                assert await open_positions(venue) == [] and await venue.fetch_open_orders() == []
                assert executor.deps.view.mode is KillSwitchMode.HALTED
                assert (await (await client.get("/bot/settings", headers=AUTH)).json())["mode"] == "halted"
                report = await (await client.get("/bot/flatten", headers=AUTH)).json()
                assert report["complete"] is True and report["version"] == state["version"]

                async def flattened():
                    return [e for e in told if e.TYPE == "FlattenedV1"]

                [event] = await wait_for(flattened, what="FlattenedV1")
                assert sorted((p.symbol, p.side, str(p.amount)) for p in event.closed) == [(BTC, "long", "0.01"), (ETH, "short", "0.1")]
                assert set(event.cancelled_symbols) == {BTC, ETH} and event.remaining == () and event.errors == ()
        finally:
            await venue.close()


async def test_a_flatten_superseded_before_it_ran_is_not_run(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    from datetime import timedelta

    from services.executor.flatten import flatten
    from shared.contracts import KillSwitchChangedV1, utcnow

    async with running_sim(api_key=KEY, api_secret=SECRET, balance="10000", prices={"BTC-USDT": "60000"}) as base_url:
        venue = make_ccxt(base_url, KEY, SECRET, sandbox=False)
        executor_settings = ExecutorSettings(amqp_url=amqp_url, mongo_uri=mongo_uri, mongo_db=mongo_db_name,
                                             bingx_api_key=KEY, bingx_api_secret=SECRET, bingx_base_url=base_url)
        try:
            async with build_executor(executor_settings) as executor:
                await venue.load_markets()
                await venue.create_order(BTC, "market", "buy", 0.01)
                old = KillSwitchChangedV1(version=5, mode=KillSwitchMode.HALTED, actor="api", reason="flatten: x",
                                          changed_at=utcnow() - timedelta(seconds=5), flatten=True)
                # Trading was turned back on (v6) before this replica got to v5's flatten: it must not close anything.
                executor.deps.view.apply(old.model_copy(update={"version": 6, "mode": KillSwitchMode.RUNNING, "flatten": False}))
                await executor.exchange_ready.wait()
                assert await flatten(executor.deps, old) is None
                assert await open_positions(venue) == [(BTC, "long", 0.01)]
                assert await mongo_db.flatten_runs.count_documents({}) == 0
        finally:
            await venue.close()


async def test_a_flatten_stops_when_trading_is_turned_back_on_midway(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    from datetime import timedelta

    from services.executor.flatten import flatten
    from shared.contracts import KillSwitchChangedV1, utcnow

    async with running_sim(api_key=KEY, api_secret=SECRET, balance="10000", prices={"BTC-USDT": "60000", "ETH-USDT": "3000"}) as base_url:
        venue = make_ccxt(base_url, KEY, SECRET, sandbox=False)
        executor_settings = ExecutorSettings(amqp_url=amqp_url, mongo_uri=mongo_uri, mongo_db=mongo_db_name,
                                             bingx_api_key=KEY, bingx_api_secret=SECRET, bingx_base_url=base_url)
        try:
            async with build_executor(executor_settings) as executor:
                await venue.load_markets()
                await venue.create_order(BTC, "market", "buy", 0.01)
                await venue.create_order(ETH, "market", "sell", 0.1)
                state = KillSwitchChangedV1(version=5, mode=KillSwitchMode.HALTED, actor="api", reason="flatten: x",
                                            changed_at=utcnow() - timedelta(seconds=1), flatten=True)
                executor.deps.view.apply(state)
                await executor.exchange_ready.wait()
                cancel = executor.deps.exchange.cancel_all_orders

                async def cancel_then_turn_on(symbol: str) -> None:
                    await cancel(symbol)
                    # Someone turns trading back on while the flatten is under way.
                    executor.deps.view.apply(state.model_copy(update={"version": 6, "mode": KillSwitchMode.RUNNING, "flatten": False}))

                executor.deps.exchange.cancel_all_orders = cancel_then_turn_on
                result = await flatten(executor.deps, state)
                assert result is not None and result.complete is False and result.closed == ()
                assert result.errors[0].startswith("stopped: version 6 (running, by api) came meanwhile")
                assert sorted(await open_positions(venue)) == [(BTC, "long", 0.01), (ETH, "short", 0.1)]  # nothing closed
        finally:
            await venue.close()
