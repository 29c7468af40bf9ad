"""Telegram commands through the real Telethon client (a fake Telegram under it), on a real broker and database."""

from __future__ import annotations

import contextlib
import datetime
import time
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer
from telethon import TelegramClient

from services.control.app import create_app
from services.control.bootstrap import build
from shared import messaging
from shared.contracts import Action, KillSwitchMode, SignalReceivedV1, utcnow
from tests.integration.test_control import AUTH, settings, stream_view
from tests.support import drain_signals, wait_for
from tests.telegram_fake import TEST_API_HASH, TEST_API_ID, TEST_BOT_TOKEN, FakeTelegram

ADMIN, STRANGER = 111111, 222222


@contextlib.asynccontextmanager
async def control_with_bot(amqp_url: str, mongo_uri: str, db: str, tmp_path: Path, *, fake: FakeTelegram | None = None,
                           logged_in: bool = True):
    fake = fake or FakeTelegram(chats=[ADMIN, STRANGER])
    clients: list[TelegramClient] = []

    def client_factory(*args, **kwargs) -> TelegramClient:
        client = TelegramClient(*args, **kwargs)
        fake.install(client)
        clients.append(client)
        return client

    config = settings(amqp_url, mongo_uri, db, telegram_api_id=TEST_API_ID, telegram_api_hash=TEST_API_HASH,
                      telegram_bot_token=TEST_BOT_TOKEN, telegram_admin_ids=str(ADMIN),
                      telegram_control_session_path=str(tmp_path / "control.session"))
    async with build(config) as control:
        async with TestClient(TestServer(create_app(control, telegram_client_factory=client_factory))) as http:
            async def connected() -> bool:
                return bool(clients) and clients[0].is_connected() and fake.logins > 0

            if logged_in:
                await wait_for(connected, what="the control bot to log in")
            yield http, fake, clients[0] if clients else None


async def say(fake: FakeTelegram, client: TelegramClient, user: int, text: str, **kwargs) -> str:
    """`user` sends `text`; returns the bot's answer to them (plain text, as Telegram shows it)."""
    before = len([m for m in fake.sent if m.chat_id == user])
    fake.incoming(client, user, text, **kwargs)

    async def answered():
        mine = [m for m in fake.sent if m.chat_id == user]
        return mine[before].text if len(mine) > before else None

    return await wait_for(answered, what=f"the bot to answer {text!r}")


async def mode_now(http) -> dict:
    return await (await http.get("/bot/settings", headers=AUTH)).json()


async def test_an_admin_halts_trading_from_telegram_and_every_service_learns_it_within_a_second(
        amqp_url, mongo_uri, mongo_db_name, mongo_db, tmp_path):
    async with stream_view(amqp_url) as view, control_with_bot(amqp_url, mongo_uri, mongo_db_name, tmp_path) as (http, fake, client):
        await wait_for(lambda: _mode_is(view, KillSwitchMode.RUNNING), what="the initial state on the stream")
        started = time.perf_counter()
        fake.incoming(client, ADMIN, "/autotrade off")
        await wait_for(lambda: _mode_is(view, KillSwitchMode.HALTED), interval=0.005, what="the halt on the stream")
        took = time.perf_counter() - started
        print(f"\n/autotrade off to a service's view halted: {took * 1000:.0f} ms")
        assert took < 1.0
        assert view.state.actor == f"telegram:{ADMIN}" and view.state.reason == "/autotrade off"

        async def answer():
            return next((m for m in fake.sent if m.chat_id == ADMIN), None)

        reply = await wait_for(answer, what="the bot's answer")
        assert reply.text == f"Mode halted, version {view.state.version}."
        assert [type(e).__name__ for e in reply.entities] == ["MessageEntityBold"]  # HTML, parsed by Telethon

        status = await say(fake, client, ADMIN, "/status")
        assert status.startswith(f"Mode halted, version {view.state.version}, set by telegram:{ADMIN}: /autotrade off")
        assert "Waiting in the executor's queues: 0" in status
        assert (await say(fake, client, ADMIN, "/help")).startswith("Commands\n/autotrade on | off | status")
        assert "Unknown command /sell" in await say(fake, client, ADMIN, "/sell@tvtb_test_bot")

        # REST sees the same function: the readiness says the bot is connected.
        assert (await (await http.get("/readyz")).json())["telegram"] is True
        body = await (await http.get("/status", headers=AUTH)).json()
        assert body["mode"] == "halted" and body["telegram_commands"] == "connected" and body["backlog_total"] == 0
        assert (await http.get("/status")).status == 401


async def test_a_stranger_and_a_stale_command_change_nothing_and_get_no_answer(
        amqp_url, mongo_uri, mongo_db_name, mongo_db, tmp_path, caplog):
    async with control_with_bot(amqp_url, mongo_uri, mongo_db_name, tmp_path) as (http, fake, client):
        assert (await mode_now(http))["mode"] == "running"
        fake.incoming(client, STRANGER, "/autotrade off")
        fake.incoming(client, ADMIN, "/autotrade off", date=utcnow() - datetime.timedelta(minutes=2))
        assert (await say(fake, client, ADMIN, "/autotrade status")).startswith("Mode running, version 1")

        async def both_logged() -> bool:
            messages = {r.getMessage() for r in caplog.records}
            return {"telegram command refused: the sender is not an admin", "telegram command dropped: too old to run"} <= messages

        await wait_for(both_logged, what="the refusal and the drop to be logged")
        # Both handled (logged), and neither changed anything nor got an answer.
        assert (await mode_now(http))["mode"] == "running" and (await mode_now(http))["version"] == 1
        assert [m for m in fake.sent if m.chat_id == STRANGER] == []
        assert len([m for m in fake.sent if m.chat_id == ADMIN]) == 1  # the status answer only


async def test_flatten_from_telegram_needs_the_confirmation_it_was_given(amqp_url, mongo_uri, mongo_db_name, mongo_db, tmp_path):
    async with control_with_bot(amqp_url, mongo_uri, mongo_db_name, tmp_path) as (http, fake, client):
        asked = await say(fake, client, ADMIN, "/flatten")
        assert "closes every position" in asked and "To go ahead, send /flatten " in asked
        code = asked.split("send /flatten ", 1)[1].split()[0]
        assert (await mode_now(http))["mode"] == "running"  # nothing happened yet
        assert "ask again" in await say(fake, client, ADMIN, "/flatten 00000000")
        assert (await mode_now(http))["mode"] == "running"
        done = await say(fake, client, ADMIN, f"/flatten {code}")
        assert done.startswith("🧹 Flattening: trading is halted")
        state = await mode_now(http)
        assert state["mode"] == "halted" and state["flatten"] is True and state["set_by"] == f"telegram:{ADMIN}"


async def test_turning_trading_on_from_telegram_reports_the_backlog_and_needs_force(
        amqp_url, mongo_uri, mongo_db_name, mongo_db, tmp_path):
    async with control_with_bot(amqp_url, mongo_uri, mongo_db_name, tmp_path) as (http, fake, client):
        assert (await say(fake, client, ADMIN, "/entries_off")).startswith("Mode entries_off")
        connection = await messaging.connect(amqp_url, "test-backlog")
        try:
            publisher = await messaging.Publisher.open(connection)
            for n in range(2):
                signal = SignalReceivedV1(signal_id=f"w-{n}", token_name="t", symbol="BTC/USDT:USDT", action=Action.BUY, received_at=utcnow())
                await publisher.publish(signal, exchange=messaging.SIGNALS_EXCHANGE, message_id=signal.signal_id)
        finally:
            await connection.close()
        refused = await say(fake, client, ADMIN, "/autotrade on")
        assert refused.startswith("⛔ Not turned on: 2 signals wait in the executor's queues")
        assert (await mode_now(http))["mode"] == "entries_off"
        forced = await say(fake, client, ADMIN, "/autotrade on force")
        assert forced.startswith("Mode running (forced)")
        state = await mode_now(http)
        assert state["forced"] is True and state["backlog"] == 2 and state["reason"] == "/autotrade on force (forced with 2 signals waiting)"
        await drain_signals(amqp_url)


async def _mode_is(view, mode: KillSwitchMode) -> bool:
    return view.mode is mode


async def test_positions_and_balance_come_from_the_executors_snapshot_with_its_age(amqp_url, mongo_uri, mongo_db_name, mongo_db, tmp_path):
    from services.executor.bootstrap import build as build_executor
    from services.executor.settings import ExecutorSettings
    from tests.bingx_sim_support import make_ccxt, running_sim
    from tests.integration.test_bingx_sim import admin

    key, secret = "sim-key", "sim-secret-0123456789"
    async with running_sim(api_key=key, api_secret=secret, balance="10000", prices={"BTC-USDT": "60000"}) as base_url:
        venue = make_ccxt(base_url, key, secret, sandbox=False)
        try:
            await venue.load_markets()
            await venue.create_order("BTC/USDT:USDT", "market", "buy", 0.01)
            async with control_with_bot(amqp_url, mongo_uri, mongo_db_name, tmp_path) as (http, fake, client):
                assert await say(fake, client, ADMIN, "/positions") == "No executor has read the account at BingX yet."
                executor_settings = ExecutorSettings(amqp_url=amqp_url, mongo_uri=mongo_uri, mongo_db=mongo_db_name, bingx_api_key=key,
                                                     bingx_api_secret=secret, bingx_base_url=base_url, account_snapshot_s=0.1)
                async with build_executor(executor_settings):
                    await wait_for(lambda: mongo_db.account_snapshot.find_one({"reachable": True}), what="the first snapshot")
                    positions = await say(fake, client, ADMIN, "/positions")
                    assert positions.startswith("Positions (as of ") and "\nBTC/USDT:USDT long 0.01 @ 60000" in positions
                    balance = await say(fake, client, ADMIN, "/balance")
                    assert balance.startswith("Balance (as of ") and "equity " in balance and "free margin " in balance
                    status = await (await http.get("/status", headers=AUTH)).json()
                    assert status["exchange"]["reachable"] is True and status["exchange"]["error"] is None
                    account = await (await http.get("/bot/account", headers=AUTH)).json()
                    assert account["positions"][0]["symbol"] == "BTC/USDT:USDT" and account["positions"][0]["side"] == "long"

                    # BingX stops answering: the snapshot says so, and keeps the last figures it had.
                    assert (await admin(base_url, "POST", "/_sim/faults", {"kind": "http", "status": 503}))[0] == 200
                    await wait_for(lambda: mongo_db.account_snapshot.find_one({"reachable": False}), what="the venue to be seen away")
                    status = await (await http.get("/status", headers=AUTH)).json()
                    assert status["exchange"]["reachable"] is False and status["exchange"]["error"]
                    away = await say(fake, client, ADMIN, "/positions")
                    assert "BingX did not answer since:" in away and "BTC/USDT:USDT long 0.01" in away
                    await admin(base_url, "DELETE", "/_sim/faults")
        finally:
            await venue.close()


async def test_a_bot_token_telegram_refuses_is_logged_and_rest_still_works(amqp_url, mongo_uri, mongo_db_name, mongo_db, tmp_path, caplog):
    another_bot = FakeTelegram(bot_token="7000000002:AAHanother-bot-token-not-this-one_0123", chats=[ADMIN])
    async with control_with_bot(amqp_url, mongo_uri, mongo_db_name, tmp_path, fake=another_bot, logged_in=False) as (http, _, _):
        async def logged() -> bool:
            return any(r.getMessage().startswith("telegram control bot not started: Telegram rejected the bot token")
                       for r in caplog.records)

        await wait_for(logged, what="the refused token to be logged")
        assert (await (await http.get("/readyz")).json())["telegram"] is False
        assert (await http.put("/bot/settings", json={"autotrade": False}, headers=AUTH)).status == 200
    assert not any(TEST_BOT_TOKEN in r.getMessage() or TEST_BOT_TOKEN.split(":")[1] in str(r.__dict__) for r in caplog.records)
