"""The notifier on real RabbitMQ and MongoDB: every event is told once per chat, and every outcome is recorded."""

from __future__ import annotations

import contextlib
from decimal import Decimal

from services.notifier.bootstrap import build
from services.notifier.consumers import consuming
from services.notifier.messenger import DeliveryFailed
from services.notifier.settings import NotifierSettings
from shared import messaging
from shared.contracts import OrderFailedV1, OrderPlacedV1, utcnow
from tests.support import wait_for


class RecordingMessenger:
    """A Messenger that records what it was asked to send and refuses the chats it is told are unknown."""

    name = "recording"

    def __init__(self, unknown_chats: tuple[int, ...] = ()) -> None:
        self.sent: list[tuple[int, str]] = []
        self.unknown_chats = unknown_chats

    async def start(self) -> None:
        return None

    async def send(self, chat_id: int, html: str, *, silent: bool = False) -> None:
        if chat_id in self.unknown_chats:
            raise DeliveryFailed("PEER_ID_INVALID: the chat is unknown to the bot")
        self.sent.append((chat_id, html))

    async def close(self) -> None:
        return None


@contextlib.asynccontextmanager
async def notifier(amqp_url, mongo_uri, mongo_db_name, messenger, chat_ids=(111, 222), **extra):
    config = NotifierSettings(amqp_url=amqp_url, mongo_uri=mongo_uri, mongo_db=mongo_db_name, telegram_chat_ids=list(chat_ids), **extra)
    connection = await messaging.connect(amqp_url, "test-events")
    try:
        publisher = await messaging.Publisher.open(connection)
        async with build(config, messenger=messenger) as running, consuming(running):
            yield publisher
    finally:
        await connection.close()


def placed(signal_id: str) -> OrderPlacedV1:
    return OrderPlacedV1(signal_id=signal_id, account="default", symbol="BTC/USDT:USDT", side="buy", amount=Decimal("0.0100"),
                         order_id="1900000000000000007", client_order_id="tvtbabc", status="closed", average=Decimal("60000.0"),
                         placed_at=utcnow())


async def test_an_event_reaches_every_chat_once_even_when_redelivered(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    messenger = RecordingMessenger()
    async with notifier(amqp_url, mongo_uri, mongo_db_name, messenger) as publisher:
        event = placed("sig-1")
        await publisher.publish(event, exchange=messaging.EVENTS_EXCHANGE, message_id="sig-1:OrderPlacedV1")
        await publisher.publish(event, exchange=messaging.EVENTS_EXCHANGE, message_id="sig-1:OrderPlacedV1")
        await publisher.publish(placed("sig-2"), exchange=messaging.EVENTS_EXCHANGE, message_id="sig-2:OrderPlacedV1")
        await wait_for(lambda: mongo_db.notifications.count_documents({"signal_id": "sig-2"}), what="the marker notification")
    # Each chat has its own sender: what matters is what each chat gets, in order, once (not how chats interleave).
    for chat in (111, 222):
        texts = [text for to, text in messenger.sent if to == chat]
        assert len(texts) == 2 and "<code>sig-1</code>" in texts[0] and "<code>sig-2</code>" in texts[1]
    assert messenger.sent[0][1] == (
        "✅ <b>BUY</b> 0.01 BTC/USDT:USDT @ 60000\norder 1900000000000000007 · closed · signal <code>sig-1</code>"
    )
    records = await mongo_db.notifications.find({"signal_id": "sig-1"}).to_list(None)
    assert sorted((r["chat_id"], r["sent"]) for r in records) == [(111, True), (222, True)]


async def test_an_unknown_chat_is_recorded_and_the_others_still_get_theirs(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    messenger = RecordingMessenger(unknown_chats=(111,))
    async with notifier(amqp_url, mongo_uri, mongo_db_name, messenger) as publisher:
        failed = OrderFailedV1(signal_id="sig-9", account="default", symbol="ETH/USDT:USDT", action="buy",
                               reason="Insufficient margin <101204> & more", error_type="InsufficientFunds", failed_at=utcnow())
        await publisher.publish(failed, exchange=messaging.EVENTS_EXCHANGE, message_id="sig-9:OrderFailedV1")
        async def both_recorded() -> bool:
            return await mongo_db.notifications.count_documents({"signal_id": "sig-9"}) == 2

        await wait_for(both_recorded, what="both records")
    assert [chat for chat, _ in messenger.sent] == [222]
    assert "Insufficient margin &lt;101204&gt; &amp; more" in messenger.sent[0][1]  # escaped for Telegram's HTML
    refused = await mongo_db.notifications.find_one({"signal_id": "sig-9", "chat_id": 111})
    assert refused["sent"] is False and "PEER_ID_INVALID" in refused["error"]


def test_a_limit_entry_tells_its_price_and_protection():
    from services.notifier.format import render

    event = OrderPlacedV1(signal_id="sig-2", account="default", symbol="BTC/USDT:USDT", side="buy", amount=Decimal("0.01"),
                          order_id="7", client_order_id="c", status="open", price=Decimal("59000"), stop_loss=Decimal("58410"),
                          take_profit=Decimal("61000"), placed_at=utcnow())
    assert render(event) == ("✅ <b>BUY</b> 0.01 BTC/USDT:USDT limit @ 59000\nSL 58410 · TP 61000\n"
                             "order 7 · open · signal <code>sig-2</code>")


def test_a_trip_is_told_with_its_severity_and_reason_escaped():
    from services.notifier.format import render
    from shared.contracts import KillSwitchMode, KillSwitchTripV1

    trip = KillSwitchTripV1(trip_id="t", mode=KillSwitchMode.HALTED, reason="BingX said <key revoked>", actor="executor",
                            severity="SEV1", tripped_at=utcnow())
    assert render(trip) == "🚨 <b>SEV1: the executor stopped trading (halted)</b>\nBingX said &lt;key revoked&gt;"


def test_a_drift_says_what_the_strategy_claims_and_what_bingx_holds():
    from services.notifier.format import render
    from shared.contracts import PositionDriftV1

    drift = PositionDriftV1(signal_id="sig-3", account="default", symbol="BTC/USDT:USDT", claimed_side="flat",
                            venue_long=Decimal("0.01"), venue_short=Decimal("0"), detected_at=utcnow())
    assert render(drift) == ("⚠️ <b>Position drift</b> BTC/USDT:USDT\nthe strategy says flat; BingX holds long 0.01, short 0\n"
                             "signal <code>sig-3</code>")


def test_a_fill_tells_what_filled_and_at_what_price():
    from services.notifier.format import render
    from shared.contracts import OrderFilledV1

    fill = OrderFilledV1(signal_id="sig-4", account="default", symbol="BTC/USDT:USDT", side="buy", amount=Decimal("0.02"),
                         filled=Decimal("0.01"), average=Decimal("59000"), order_id="9", client_order_id="c", status="canceled",
                         filled_at=utcnow())
    assert render(fill) == "🎯 <b>FILLED</b> BUY 0.01 of 0.02 BTC/USDT:USDT @ 59000\norder 9 · signal <code>sig-4</code>"


def test_an_expired_signal_tells_how_to_replay_it_with_its_full_id():
    from services.notifier.format import render
    from shared.contracts import Action, SignalExpiredV1

    expired = SignalExpiredV1(signal_id="tv-strategy-long-entry-42", account="default", symbol="BTC/USDT:USDT",
                              action=Action.BUY, age_s=95.25, max_lag_s=60, expired_at=utcnow())
    assert render(expired) == ("⌛ <b>Signal expired</b> buy BTC/USDT:USDT\n95.2s old, max lag 60s; parked for replay\n"
                               "signal <code>tv-strategy-lo…</code>\n"
                               "to run it now: <code>POST /bot/signals/tv-strategy-long-entry-42/replay</code>")


def test_a_flatten_tells_what_it_closed_and_what_is_left():
    from services.notifier.format import render
    from shared.contracts import FlattenedPosition, FlattenedV1

    done = FlattenedV1(version=7, actor="api", complete=True, finished_at=utcnow(),
                       closed=(FlattenedPosition(symbol="BTC/USDT:USDT", side="long", amount=Decimal("0.01")),),
                       cancelled_symbols=("BTC/USDT:USDT",))
    assert render(done) == ("🧹 <b>Flatten done</b> (v7, by api)\nclosed BTC/USDT:USDT long 0.01\n"
                            "orders cancelled on BTC/USDT:USDT\ntrading stays halted")
    left = FlattenedV1(version=8, actor="42", complete=False, finished_at=utcnow(),
                       remaining=(FlattenedPosition(symbol="ETH/USDT:USDT", side="short", amount=Decimal("0.1")),),
                       errors=("ETH/USDT:USDT short: not closed: <busy>",))
    assert render(left) == ("🧹 <b>Flatten INCOMPLETE: check BingX</b> (v8, by 42)\nstill open ETH/USDT:USDT short 0.1\n"
                            "ETH/USDT:USDT short: not closed: &lt;busy&gt;\ntrading stays halted")


def test_a_refused_alert_is_told_with_its_reason_escaped():
    from services.notifier.format import render
    from shared.contracts import SignalRejectedV1

    notice = SignalRejectedV1(token_name="main", status=400, reason="'symbol' holds an unfilled placeholder ({{ticker}}) <x>",
                              format="json", rejected_at=utcnow())
    assert render(notice) == ("🚫 <b>Alert refused</b> (token main, HTTP 400)\n"
                              "&#x27;symbol&#x27; holds an unfilled placeholder ({{ticker}}) &lt;x&gt;\n"
                              "TradingView shows nothing of this: correct the alert's message")
