"""No secret ever comes out: the whole chain runs in-process (ingress, executor trading at the BingX simulator, notifier
and control with their Telegram bots on a fake Telegram, on the real broker and database), every door is given the
secrets in the wrong places, the venue refuses the key once (a revoked key), and then everything the services
produced is looked through: every log record, every HTTP answer, every document of every collection, every event on
the broker, every Telegram message. None may hold a piece of any secret (secrets_scan.py).
"""

from __future__ import annotations

import contextlib

import aio_pika
import orjson

from services.executor.bootstrap import build as build_executor
from services.executor.consumers import consuming as executor_consuming
from services.executor.settings import ExecutorSettings
from services.notifier.bootstrap import build as build_notifier
from services.notifier.consumers import consuming as notifier_consuming
from services.notifier.settings import NotifierSettings
from shared import messaging
from shared.contracts import decode
from tests.abuse.apps import ADMIN, AUTH, STRANGER, answer, control_client, ingress_client
from tests.abuse.secrets_scan import (
    BINGX_API_KEY,
    BINGX_API_SECRET,
    CONTROL_API_TOKEN,
    TELEGRAM_API_HASH,
    TELEGRAM_BOT_TOKEN,
    WEBHOOK_OTHER_SECRET,
    WEBHOOK_SECRET,
)
from tests.bingx_sim_support import running_sim
from tests.integration.test_bingx_sim import admin
from tests.support import wait_for
from tests.telegram_fake import FakeTelegram, fake_messenger

WEBHOOK = "/webhook/tradingview"


@contextlib.asynccontextmanager
async def events_seen(amqp_url: str):
    """Every event published on tvtb.events while inside, with its message id."""
    connection = await messaging.connect(amqp_url, "test-events")
    seen: list[tuple[str, object]] = []
    try:
        channel = await connection.channel()
        await messaging.declare_topology(channel)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(messaging.EVENTS_EXCHANGE, routing_key="#")

        async def keep(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            seen.append((message.message_id, decode(message.type, message.body)))
            await message.ack()

        await queue.consume(keep)
        yield seen
    finally:
        await connection.close()


def alert(**fields) -> bytes:
    return orjson.dumps({"token": WEBHOOK_SECRET, "symbol": "BTCUSDT.P", "action": "buy", "qty": "0.01", **fields})


async def test_no_secret_reaches_a_log_an_answer_a_document_an_event_or_a_telegram_message(
        amqp_url, mongo_uri, mongo_db_name, mongo_db, tmp_path, secret_scan):
    # Two Telegram servers, one per bot client: one account-wide pts sequence shared by two clients would look like a
    # gap to each (and a gap makes Telethon drop what it cannot fetch again from the fake).
    fake = FakeTelegram(bot_token=TELEGRAM_BOT_TOKEN, chats=[ADMIN, STRANGER])
    notifier_fake = FakeTelegram(bot_token=TELEGRAM_BOT_TOKEN, chats=[ADMIN])
    messenger, _ = await fake_messenger(tmp_path, fake=notifier_fake, bot_token=TELEGRAM_BOT_TOKEN, start=False)
    notifier_settings = NotifierSettings(amqp_url=amqp_url, mongo_uri=mongo_uri, mongo_db=mongo_db_name, telegram_chat_ids=[ADMIN])
    async with contextlib.AsyncExitStack() as stack:
        events = await stack.enter_async_context(events_seen(amqp_url))
        base_url = await stack.enter_async_context(running_sim(api_key=BINGX_API_KEY, api_secret=BINGX_API_SECRET, balance="10000"))
        control, _, bot = await stack.enter_async_context(control_client(amqp_url, mongo_uri, mongo_db_name, tmp_path=tmp_path, fake=fake))
        notifier = await stack.enter_async_context(build_notifier(notifier_settings, messenger=messenger))
        await stack.enter_async_context(notifier_consuming(notifier))
        executor_settings = ExecutorSettings(amqp_url=amqp_url, mongo_uri=mongo_uri, mongo_db=mongo_db_name, bingx_api_key=BINGX_API_KEY,
                                             bingx_api_secret=BINGX_API_SECRET, bingx_base_url=base_url)
        executor = await stack.enter_async_context(build_executor(executor_settings))
        await stack.enter_async_context(executor_consuming(executor))
        ingress = await stack.enter_async_context(ingress_client(amqp_url, mongo_uri, mongo_db_name))

        # A trade, end to end: accepted, placed at the venue with the key, told in Telegram.
        status, text, body = await answer(secret_scan, ingress, "POST", WEBHOOK, data=alert(id="trade-1"))
        assert status == 200, text
        await wait_for(lambda: mongo_db.signals.find_one({"_id": "trade-1", "status": "placed"}), timeout=20, what="the order")

        # The ingress, given its tokens in every wrong place: refused, told to the trader, never repeated.
        for field in ("id", "strategy", "account", "order_type", "action", "symbol", "qty", "timestamp", "margin_mode"):
            for secret in (WEBHOOK_OTHER_SECRET, WEBHOOK_SECRET.lower()):
                status, text, _ = await answer(secret_scan, ingress, "POST", WEBHOOK, data=alert(**{field: secret}))
                assert status == 400, (field, text)
        octobot = f"SYMBOL=BTCUSDT.P\nSIGNAL=BUY\nVOLUME=1\nORDER_TYPE={WEBHOOK_SECRET}\nTOKEN={WEBHOOK_SECRET}"
        assert (await answer(secret_scan, ingress, "POST", WEBHOOK, data=octobot))[0] == 400
        for path in (f"{WEBHOOK}/{WEBHOOK_SECRET}x", f"{WEBHOOK}/{WEBHOOK_SECRET[:-2]}"):
            assert (await answer(secret_scan, ingress, "POST", path, data=alert(token=None)))[0] == 401
        assert (await answer(secret_scan, ingress, "POST", WEBHOOK, data=alert(token=WEBHOOK_SECRET + " ")))[0] in (200, 401)

        # The control API, given its token (and Telegram's secrets) in the wrong places, with and without the right one.
        for kwargs in ({"headers": {"Authorization": f"Basic {CONTROL_API_TOKEN}"}}, {"params": {"token": CONTROL_API_TOKEN}},
                       {"headers": {"Authorization": f"Bearer {TELEGRAM_BOT_TOKEN}"}}):
            assert (await answer(secret_scan, control, "PUT", "/bot/settings", json={"autotrade": False}, **kwargs))[0] == 401
        for method, path, payload in [
            ("PUT", "/bot/settings", {CONTROL_API_TOKEN: True}),
            ("PUT", "/bot/settings", {"mode": CONTROL_API_TOKEN}),
            ("PUT", "/bot/settings", {"autotrade": TELEGRAM_API_HASH}),
            ("PUT", "/bot/settings", {"risk": {"max_notional_usdt": TELEGRAM_BOT_TOKEN}}),
            ("POST", "/bot/flatten", {"confirm": CONTROL_API_TOKEN}),
            ("POST", "/bot/flatten", {TELEGRAM_BOT_TOKEN: 1}),
            ("POST", f"/bot/signals/{CONTROL_API_TOKEN}/replay", {}),
            ("GET", f"/bot/signals?limit={CONTROL_API_TOKEN}", None),
            ("GET", f"/bot/{TELEGRAM_API_HASH}", None),
        ]:
            status, text, _ = await answer(secret_scan, control, method, path, json=payload, headers=AUTH)
            assert 400 <= status < 500, (method, path, text)

        # Telegram: the admin and a stranger send commands with secrets as their arguments.
        sent_before = len(fake.sent)
        for user in (ADMIN, STRANGER):
            for text in (f"/autotrade {CONTROL_API_TOKEN}", f"/flatten {TELEGRAM_BOT_TOKEN}", f"/status {BINGX_API_SECRET}",
                         f"/autotrade on {CONTROL_API_TOKEN}"):
                fake.incoming(bot, user, text)

        async def admin_answered() -> bool:
            return len([m for m in fake.sent[sent_before:] if m.chat_id == ADMIN]) >= 4

        await wait_for(admin_answered, timeout=20, what="the bot to answer the admin")

        # The venue refuses the key (revoked): the order fails, the executor trips the kill switch, everyone is told.
        fault = {"kind": "error", "code": 100413, "msg": "Incorrect apiKey", "path": "/openApi/swap/v2/trade/order", "method": "POST"}
        assert (await admin(base_url, "POST", "/_sim/faults", fault))[0] == 200
        assert (await answer(secret_scan, ingress, "POST", WEBHOOK, data=alert(id="revoked-1")))[0] == 200
        await wait_for(lambda: mongo_db.signals.find_one({"_id": "revoked-1", "status": "failed"}), timeout=20, what="the refused order")

        async def halted() -> bool:
            return (await (await control.get("/bot/settings", headers=AUTH)).json())["mode"] == "halted"

        await wait_for(halted, timeout=20, what="the trip to halt trading")

        # Every event went out to Telegram (or was recorded as not sent) before anything is looked at.
        async def all_told() -> bool:
            ids = [message_id for message_id, _ in events]
            return bool(ids) and await mongo_db.notifications.count_documents({"event_id": {"$in": ids}}) >= len(set(ids))

        await wait_for(all_told, timeout=30, interval=0.1, what="every event to be told in Telegram")
        kinds = {type(event).__name__ for _, event in events}
        assert {"OrderPlacedV1", "SignalRejectedV1", "OrderFailedV1", "KillSwitchTripV1", "KillSwitchChangedV1"} <= kinds, kinds
        secret_scan.add_messages("event on tvtb.events", [event for _, event in events])
        assert secret_scan.add_telegram(fake) > 0 and secret_scan.add_telegram(notifier_fake) > 0
        status, text, _ = await answer(secret_scan, control, "GET", "/status", headers=AUTH)
        for path in ("/metrics", "/readyz"):
            await answer(secret_scan, control, "GET", path)
            await answer(secret_scan, ingress, "GET", path)
    assert await secret_scan.add_database(mongo_db) > 20
    assert any("Incorrect apiKey" in text or "revoked" in text for _, text in secret_scan.seen)  # the failure was looked at
