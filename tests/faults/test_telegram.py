"""Telegram flooding and then unreachable while alerts stream in: the ingress, executor, control and the simulated
venue run as processes (the Stack), the notifier in this process with the real Telethon client over a FakeTelegram
(tests/telegram_fake.py) that answers FLOOD_WAIT and then drops the connection for a while. Trading does not wait on
Telegram (the books balance, every alert at the exchange once), and once Telegram is back every order is told to the
chat exactly once: none lost, none doubled."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from tests.faults.books import assert_clean
from tests.faults.harness import AlertStream, close_books, make_alerts, start_stack
from tests.integration.test_notifier import notifier
from tests.support import wait_for
from tests.telegram_fake import fake_messenger

pytestmark = pytest.mark.e2e
COUNT = 40
CHAT = 111
DROPS = 4  # sends failing with a dropped connection after the flood wait, each tried again after a second


async def test_telegram_flooding_then_unreachable_while_orders_flow(stack, mongo_db, amqp_url, mongo_uri, mongo_db_name, tmp_path):
    await start_stack(stack)
    messenger, fake = await fake_messenger(tmp_path, chats=[CHAT], flood_sleep_threshold=1, start=False)
    async with notifier(amqp_url, mongo_uri, mongo_db_name, messenger, chat_ids=(CHAT,)):
        started = time.monotonic()
        alerts = make_alerts("telegram", COUNT)
        stream = AlertStream(stack, alerts, interval=0.1)
        sending = asyncio.create_task(stream.run())
        await stream.reached(5)
        # Flood control above the client's threshold (the notifier waits it out), then the network gone.
        fake.fail_next("FLOOD_WAIT_2")
        fake.fail_next(ConnectionError("Connection to Telegram failed 5 time(s)"), times=DROPS)
        await sending
        books = await close_books(stack, mongo_db, amqp_url, alerts, "telegram flooding then unreachable", started)
        placed = [d["_id"] for d in await mongo_db.signals.find({"status": "placed"}).to_list(None)]

        async def told() -> bool:
            return await mongo_db.notifications.count_documents({"signal_id": {"$in": placed}, "sent": True}) >= len(placed)

        await wait_for(told, timeout=30, interval=0.2, what="every placed order to be told to the chat")

    assert_clean(books)  # trading unaffected by Telegram
    assert books["accepted"] == books["sent"] == COUNT
    assert books["at_exchange"] == COUNT and len(placed) == COUNT
    assert fake.send_attempts >= len(fake.sent) + 1 + DROPS  # every queued failure was met
    text = "\n".join(message.text for message in fake.sent)
    # As Telegram shows it (the HTML already parsed into entities): each order's signal id once, alone or in a digest.
    counts = {signal_id: len(re.findall(rf"(?<![\w-]){re.escape(signal_id)}(?![\w-])", text)) for signal_id in placed}
    assert all(n == 1 for n in counts.values()), {k: n for k, n in counts.items() if n != 1}  # none lost, none doubled
    assert all(m.chat_id == CHAT and len(m.text) <= 4096 for m in fake.sent), [(m.chat_id, len(m.text)) for m in fake.sent]
    records = await mongo_db.notifications.find({"signal_id": {"$in": placed}}).to_list(None)
    assert len(records) == COUNT and all(r["sent"] for r in records)
    assert len({r["event_id"] for r in records}) == COUNT
