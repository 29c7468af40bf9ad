"""The Telethon adapter through the real Telethon client, with a fake Telegram in place of its network sender."""

from __future__ import annotations

import logging
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from telethon.errors import ServerError
from telethon.tl import functions, types

from services.notifier.messenger import DeliveryDelayed, DeliveryFailed
from services.notifier.telegram import TelethonMessenger
from shared.errors import ConfigurationError
from tests.telegram_fake import TEST_API_HASH, TEST_API_ID, TEST_BOT_TOKEN, FakeTelegram, fake_messenger

ALICE = 111_000_111
BOB = 222_000_222
CHANNEL = -1001234567890
STRANGER = 333_000_333
SECRETS = (TEST_BOT_TOKEN, TEST_BOT_TOKEN.partition(":")[2], TEST_API_HASH)

Connect = Callable[..., Awaitable[tuple[TelethonMessenger, FakeTelegram]]]


@pytest.fixture
async def connect(tmp_path: Path) -> AsyncIterator[Connect]:
    opened: list[TelethonMessenger] = []

    async def _connect(**opts: object) -> tuple[TelethonMessenger, FakeTelegram]:
        opts.setdefault("chats", [ALICE, BOB, CHANNEL])
        messenger, fake = await fake_messenger(tmp_path, **opts)
        opened.append(messenger)
        return messenger, fake

    yield _connect
    for messenger in opened:
        await messenger.close()


def _text_of(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))  # the message, the traceback and every chained cause


async def test_logs_in_as_a_bot_over_a_send_only_connection(connect: Connect) -> None:
    messenger, fake = await connect()

    [login] = fake.requests_of(functions.auth.ImportBotAuthorizationRequest)
    assert (login.query.api_id, login.query.bot_auth_token) == (TEST_API_ID, TEST_BOT_TOKEN)
    [config] = fake.requests_of(functions.help.GetConfigRequest)
    assert config.envelopes == ("InvokeWithLayerRequest", "InvokeWithoutUpdatesRequest", "InitConnectionRequest")
    await messenger.send(ALICE, "hello")
    [send] = fake.requests_of(functions.messages.SendMessageRequest)
    assert send.envelopes == ("InvokeWithoutUpdatesRequest",)  # receive_updates=False: Telegram pushes nothing


async def test_a_restart_reuses_the_session_instead_of_logging_in_again(connect: Connect) -> None:
    first, fake = await connect()
    await first.close()

    second, _ = await connect(fake=fake)
    await second.send(ALICE, "after restart")

    assert fake.logins == 1
    assert [m.text for m in fake.sent] == ["after restart"]


async def test_html_becomes_the_plain_text_and_entities_telethon_parses(connect: Connect) -> None:
    messenger, fake = await connect()

    await messenger.send(ALICE, "<b>BUY</b> 0.01 BTC/USDT:USDT &lt;x&gt;")

    [sent] = fake.sent
    assert sent.chat_id == ALICE
    assert sent.text == "BUY 0.01 BTC/USDT:USDT <x>"
    assert sent.entities == [types.MessageEntityBold(offset=0, length=3)]
    assert sent.no_webpage is True


async def test_channel_ids_are_resolved_to_the_channel(connect: Connect) -> None:
    messenger, fake = await connect()

    await messenger.send(CHANNEL, "<i>kill switch</i> engaged")

    [sent] = fake.sent
    assert sent.chat_id == CHANNEL
    assert isinstance(sent.peer, types.InputPeerChannel)
    assert sent.entities == [types.MessageEntityItalic(offset=0, length=11)]


async def test_a_flood_wait_below_the_threshold_is_slept_through_by_telethon(connect: Connect) -> None:
    messenger, fake = await connect(flood_sleep_threshold=5)
    fake.fail_next("FLOOD_WAIT_1")  # Telethon really sleeps: keep it at one second

    await messenger.send(ALICE, "filled")

    assert fake.send_attempts == 2
    assert [m.text for m in fake.sent] == ["filled"]


async def test_a_flood_wait_above_the_threshold_is_a_delay_of_that_many_seconds(connect: Connect) -> None:
    messenger, fake = await connect(flood_sleep_threshold=5)
    fake.fail_next("FLOOD_WAIT_7")

    with pytest.raises(DeliveryDelayed) as caught:
        await messenger.send(ALICE, "filled")

    assert caught.value.retry_after == 7
    assert "FloodWaitError" in caught.value.reason
    assert fake.send_attempts == 1
    assert fake.sent == []


async def test_a_lost_connection_is_a_delay(connect: Connect) -> None:
    messenger, fake = await connect()
    fake.fail_next(ConnectionError("Connection reset by peer"))

    with pytest.raises(DeliveryDelayed):
        await messenger.send(ALICE, "filled")


async def test_an_invalid_peer_fails_that_message_and_the_next_chat_still_gets_its_own(connect: Connect) -> None:
    messenger, fake = await connect()
    fake.fail_next("PEER_ID_INVALID")

    with pytest.raises(DeliveryFailed) as caught:
        await messenger.send(ALICE, "lost")
    await messenger.send(BOB, "delivered")

    assert "PeerIdInvalidError" in caught.value.reason
    assert [(m.chat_id, m.text) for m in fake.sent] == [(BOB, "delivered")]


async def test_a_user_the_bot_never_met_cannot_be_resolved(connect: Connect) -> None:
    messenger, fake = await connect()

    with pytest.raises(DeliveryFailed) as caught:
        await messenger.send(STRANGER, "hello?")

    assert "Could not find the input entity" in caught.value.reason
    assert fake.sent == []


async def test_a_message_too_long_after_parsing_fails(connect: Connect) -> None:
    messenger, fake = await connect()

    # 4,100 characters of markup but 4,097 of text: the limit counts what is left after parsing.
    with pytest.raises(DeliveryFailed) as caught:
        await messenger.send(ALICE, "<b>" + "x" * 4097 + "</b>")
    await messenger.send(ALICE, "<b>" + "x" * 4096 + "</b>")

    assert "MessageTooLongError" in caught.value.reason
    assert [len(m.text) for m in fake.sent] == [4096]


async def test_a_rejected_bot_token_is_a_configuration_error(connect: Connect) -> None:
    messenger, fake = await connect(start=False)
    fake.fail_next("ACCESS_TOKEN_INVALID", on=functions.auth.ImportBotAuthorizationRequest)

    with pytest.raises(ConfigurationError, match="bot token"):
        await messenger.start()

    assert fake.logins == 0


async def test_telegram_server_errors_are_delays() -> None:
    # Through the client a 500 costs Telethon's five retries two seconds apart, so this mapping is checked alone.
    messenger = TelethonMessenger(
        api_id=TEST_API_ID, api_hash=TEST_API_HASH, bot_token=TEST_BOT_TOKEN, session_path="unused"
    )
    request = functions.messages.SendMessageRequest(peer=types.InputPeerSelf(), message="x")
    error = ServerError(request=request, message="INTERNAL", code=500)

    assert isinstance(messenger._translate(error), DeliveryDelayed)


async def test_the_bot_token_and_api_hash_appear_in_no_log_record_or_exception(
    connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    raised: list[BaseException] = []

    messenger, fake = await connect()
    await messenger.send(ALICE, "<b>fill</b>")
    for error in ("FLOOD_WAIT_7", "PEER_ID_INVALID", "CHAT_WRITE_FORBIDDEN", "USER_IS_BLOCKED"):
        fake.fail_next(error)
        with pytest.raises((DeliveryDelayed, DeliveryFailed)) as caught:
            await messenger.send(ALICE, "x")
        raised.append(caught.value)
    with pytest.raises(DeliveryFailed) as caught:
        await messenger.send(STRANGER, "x")
    raised.append(caught.value)
    await messenger.close()

    rejecting = FakeTelegram(bot_token="7000000001:another-token")
    refused, _ = await connect(fake=rejecting, start=False)
    with pytest.raises(ConfigurationError) as caught:
        await refused.start()
    raised.append(caught.value)

    assert len(raised) == 6
    assert len(caplog.records) > 0  # Telethon and the adapter did log: the check below is not vacuous
    for record in caplog.records:
        text = record.getMessage() + str(record.__dict__) + (record.exc_text or "")
        assert not any(secret in text for secret in SECRETS), record
    for exc in raised:
        assert not any(secret in _text_of(exc) for secret in SECRETS), exc
        assert not any(secret in getattr(exc, "reason", "") for secret in SECRETS), exc


async def test_a_rendered_event_arrives_as_exact_text_and_entities_and_a_silent_one_without_a_sound(connect: Connect) -> None:

    from services.notifier.format import render
    from shared.contracts import OrderFailedV1, utcnow

    messenger, fake = await connect()
    failed = OrderFailedV1(signal_id="sig-<7>", account="default", symbol="ETH/USDT:USDT", action="buy",
                           reason="Insufficient margin <101204> & more", error_type="InsufficientFunds", failed_at=utcnow())
    await messenger.send(ALICE, render(failed), silent=True)
    [sent] = fake.sent
    assert sent.text == "❌ Order failed buy ETH/USDT:USDT\nInsufficient margin <101204> & more\nsignal sig-<7>"
    # Offsets in UTF-16 code units, as Telegram counts them.
    assert sent.entities == [types.MessageEntityBold(offset=2, length=12), types.MessageEntityCode(offset=76, length=7)]
    request = fake.requests_of(functions.messages.SendMessageRequest)[-1].query
    assert request.silent is True
