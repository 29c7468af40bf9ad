"""Risk limits set through the control service reach every executor with the kill-switch state, over RISK_*."""

from __future__ import annotations

from decimal import Decimal

from services.executor.bootstrap import build as build_executor
from services.executor.consumers import consuming
from services.executor.settings import ExecutorSettings
from shared import messaging
from shared.contracts import Action, SignalReceivedV1, utcnow
from tests.bingx_sim_support import running_sim
from tests.integration.test_control import AUTH, control_client, settings
from tests.support import wait_for

KEY, SECRET = "sim-key", "sim-secret-0123456789"


async def test_a_limit_set_through_the_api_refuses_entries_and_survives_mode_changes(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    async with running_sim(api_key=KEY, api_secret=SECRET, balance="10000", prices={"BTC-USDT": "60000"}) as base_url:
        executor_settings = ExecutorSettings(amqp_url=amqp_url, mongo_uri=mongo_uri, mongo_db=mongo_db_name, bingx_api_key=KEY,
                                             bingx_api_secret=SECRET, bingx_base_url=base_url, risk_max_leverage=20)
        async with control_client(settings(amqp_url, mongo_uri, mongo_db_name)) as client, \
                build_executor(executor_settings) as executor, consuming(executor):
            connection = await messaging.connect(amqp_url, "test-risk")
            try:
                publisher = await messaging.Publisher.open(connection)

                async def entry(signal_id: str, leverage: int) -> dict:
                    signal = SignalReceivedV1(signal_id=signal_id, token_name="t", symbol="BTC/USDT:USDT", action=Action.BUY,
                                              qty=Decimal("0.01"), leverage=leverage, received_at=utcnow())
                    await publisher.publish(signal, exchange=messaging.SIGNALS_EXCHANGE, message_id=signal_id)
                    return await wait_for(lambda: mongo_db.signals.find_one({"_id": signal_id, "status": {"$in": ["placed", "failed"]}}),
                                          what=f"{signal_id} to settle")

                response = await client.put("/bot/settings", json={"risk": {"max_leverage": 5}, "reason": "tighten"}, headers=AUTH)
                state = await response.json()
                assert response.status == 200 and state["mode"] == "running" and state["version"] == 2
                assert state["risk"] == {"max_leverage": 5, "max_notional_usdt": None, "max_orders_per_minute": None,
                                         "daily_loss_limit_usdt": None}
                await wait_for(lambda: _version_is(executor, 2), what="the executor to learn v2")
                refused = await entry("lev-10", 10)
                assert refused["status"] == "failed"
                assert refused["reason"] == "leverage 10x is over the limit of 5x (set through the control service)"

                # A change of mode keeps the limits; null gives the limit back to RISK_MAX_LEVERAGE (20 here).
                state = await (await client.put("/bot/settings", json={"mode": "entries_off"}, headers=AUTH)).json()
                assert state["risk"]["max_leverage"] == 5
                state = await (await client.put("/bot/settings", json={"autotrade": True, "risk": {"max_leverage": None}},
                                                headers=AUTH)).json()
                assert state["mode"] == "running" and state["risk"]["max_leverage"] is None
                await wait_for(lambda: _version_is(executor, state["version"]), what="the executor to learn the change")
                assert (await entry("lev-10-again", 10))["status"] == "placed"
                over_setting = await entry("lev-25", 25)
                assert over_setting["reason"] == "leverage 25x is over the limit of 20x (RISK_MAX_LEVERAGE)"

                bad = await client.put("/bot/settings", json={"risk": {"max_leverage": -1}}, headers=AUTH)
                assert bad.status == 400 and "risk.max_leverage" in (await bad.json())["reason"]
                history = (await (await client.get("/bot/settings/history", headers=AUTH)).json())["history"]
                assert [h["risk"]["max_leverage"] if h["risk"] else None for h in history] == [None, 5, 5, None]
            finally:
                await connection.close()


async def _version_is(executor, version: int) -> bool:
    state = executor.deps.view.state
    return state is not None and state.version == version
