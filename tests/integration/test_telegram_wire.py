"""The notifier's Telethon messenger over the wire: a small MTProto server on 127.0.0.1, the client unmodified."""

from __future__ import annotations

import contextlib

import pytest
from telethon import TelegramClient

from services.notifier.messenger import DeliveryDelayed
from services.notifier.telegram import TelethonMessenger
from tests.mtproto_server import MTProtoServer
from tests.support import wait_for
from tests.telegram_fake import TEST_API_HASH, TEST_API_ID, TEST_BOT_TOKEN, FakeTelegram

ALICE = 424242


@contextlib.asynccontextmanager
async def over_the_wire(*, flood_sleep_threshold: int = 5):
    fake = FakeTelegram(chats=[ALICE])
    server = MTProtoServer(fake)
    await server.start()

    def client_factory(_session_path, *args, **kwargs) -> TelegramClient:
        return TelegramClient(server.session(), *args, **kwargs)

    messenger = TelethonMessenger(api_id=TEST_API_ID, api_hash=TEST_API_HASH, bot_token=TEST_BOT_TOKEN, session_path="unused",
                                  flood_sleep_threshold=flood_sleep_threshold, client_factory=client_factory, send_timeout=10)
    try:
        await messenger.start()
        yield messenger, fake, server
    finally:
        await messenger.close()
        await server.stop()


async def test_the_bot_logs_in_with_its_token_and_sends_over_the_wire():
    async with over_the_wire() as (messenger, fake, server):
        await messenger.send(ALICE, "<b>BUY</b> 0.01 BTC/USDT:USDT")
    assert fake.logins == 1 and server.connections == 1
    [message] = fake.sent
    assert message.chat_id == ALICE and message.text == "BUY 0.01 BTC/USDT:USDT"
    assert [type(e).__name__ for e in message.entities] == ["MessageEntityBold"]


async def test_a_flood_wait_over_the_wire_is_slept_below_the_threshold_and_raised_above_it():
    async with over_the_wire(flood_sleep_threshold=5) as (messenger, fake, _):
        fake.fail_next("FLOOD_WAIT_1")
        await messenger.send(ALICE, "after a short wait")  # Telethon slept 1 s and sent again
        assert fake.send_attempts == 2 and [m.text for m in fake.sent] == ["after a short wait"]
    async with over_the_wire(flood_sleep_threshold=0) as (messenger, fake, _):
        fake.fail_next("FLOOD_WAIT_30")
        with pytest.raises(DeliveryDelayed) as delayed:
            await messenger.send(ALICE, "too long a wait")
        assert delayed.value.retry_after == 30 and fake.sent == []


async def test_after_the_socket_drops_the_client_reconnects_and_sends_without_logging_in_again():
    async with over_the_wire() as (messenger, fake, server):
        await messenger.send(ALICE, "before")
        server.drop_connections()

        async def sent_after() -> bool:
            try:
                await messenger.send(ALICE, "after")
                return True
            except DeliveryDelayed:
                return False  # still reconnecting: the notifier would try again

        await wait_for(sent_after, timeout=15, interval=0.2, what="a send after the reconnect")
    assert [m.text for m in fake.sent][:1] == ["before"] and "after" in [m.text for m in fake.sent]
    assert server.connections >= 2 and fake.logins == 1
