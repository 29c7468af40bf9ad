"""The notifier within Telegram's limits, on a real broker and database: bursts as digests, flood waits, routing."""

from __future__ import annotations

import re
import time
from decimal import Decimal

from services.notifier.messenger import DeliveryDelayed
from shared import messaging
from shared.contracts import Action, KillSwitchMode, KillSwitchTripV1, OrderFailedV1, SignalSkippedV1, utcnow
from tests.integration.test_notifier import notifier, placed
from tests.support import wait_for
from tests.telegram_fake import fake_messenger


class TimedMessenger:
    """Records each message with when it was sent; `down` makes every send a delay, as when Telegram is away."""

    name = "timed"

    def __init__(self, delays: list[float] | None = None) -> None:
        self.sent: list[tuple[int, str, bool, float]] = []
        self.attempts: list[float] = []
        self.delays = list(delays or [])  # the next sends answer DeliveryDelayed(retry_after=each)
        self.down = False

    async def start(self) -> None:
        return None

    async def send(self, chat_id: int, html: str, *, silent: bool = False) -> None:
        self.attempts.append(time.monotonic())
        if self.down:
            raise DeliveryDelayed("Telegram unreachable", retry_after=0.2)
        if self.delays:
            raise DeliveryDelayed("FLOOD_WAIT", retry_after=self.delays.pop(0))
        self.sent.append((chat_id, html, silent, time.monotonic()))

    async def close(self) -> None:
        return None


async def sent_count(mongo_db, n: int) -> bool:
    return await mongo_db.notifications.count_documents({"sent": True}) >= n


async def test_a_burst_of_500_events_reaches_the_chat_within_its_limit_and_loses_none(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    messenger = TimedMessenger()
    async with notifier(amqp_url, mongo_uri, mongo_db_name, messenger, chat_ids=(111,)) as publisher:
        started = time.monotonic()
        for n in range(500):
            await publisher.publish(placed(f"b-{n:03d}"), exchange=messaging.EVENTS_EXCHANGE, message_id=f"b-{n:03d}:OrderPlacedV1")
        published_in = time.monotonic() - started
        await wait_for(lambda: sent_count(mongo_db, 500), timeout=60, interval=0.2, what="every event to be told")
    print(f"\n500 events published in {published_in:.2f}s, told in {len(messenger.sent)} messages "
          f"over {messenger.sent[-1][3] - started:.1f}s")
    times = [at for _, _, _, at in messenger.sent]
    assert all(later - earlier >= 0.95 for earlier, later in zip(times, times[1:]))  # 1 message/s to the chat
    assert all(len(text) <= 4096 for _, text, _, _ in messenger.sent)
    told = re.findall(r"<code>(b-\d{3})</code>", "\n".join(text for _, text, _, _ in messenger.sent))
    assert sorted(told) == [f"b-{n:03d}" for n in range(500)]  # every event, once
    assert len(messenger.sent) <= 15 and "📋 <b>" in messenger.sent[1][1]  # coalesced into digests
    records = await mongo_db.notifications.find({"sent": True}).to_list(None)
    assert len(records) == 500 and len({r["event_id"] for r in records}) == 500


async def test_a_flood_wait_holds_the_chat_for_as_long_as_telegram_asked(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    messenger = TimedMessenger(delays=[1.5])
    async with notifier(amqp_url, mongo_uri, mongo_db_name, messenger, chat_ids=(111,)) as publisher:
        await publisher.publish(placed("f-1"), exchange=messaging.EVENTS_EXCHANGE, message_id="f-1:OrderPlacedV1")
        await wait_for(lambda: sent_count(mongo_db, 1), timeout=10, what="the event after the flood wait")
    assert len(messenger.sent) == 1 and messenger.sent[0][3] - messenger.attempts[0] >= 1.5


async def test_each_kind_goes_on_silent_or_off_as_configured_and_a_sev1_always_goes(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    def skipped(signal_id: str) -> SignalSkippedV1:
        return SignalSkippedV1(signal_id=signal_id, account="default", symbol="BTC/USDT:USDT", action=Action.BUY,
                               reason="trading is halted", mode=KillSwitchMode.HALTED, skipped_at=utcnow())

    def trip(severity: str) -> KillSwitchTripV1:
        return KillSwitchTripV1(trip_id=severity, mode=KillSwitchMode.HALTED, reason=f"{severity} reason", actor="executor",
                                severity=severity, tripped_at=utcnow())

    messenger = TimedMessenger()
    async with notifier(amqp_url, mongo_uri, mongo_db_name, messenger, chat_ids=(111,),
                        notify_events="placed=off,skipped=silent,trip=off") as publisher:
        events = [("p", placed("k-0")), ("s", skipped("k-1")), ("t1", trip("SEV1")), ("t2", trip("SEV2")), ("s2", skipped("k-2"))]
        for message_id, event in events:
            await publisher.publish(event, exchange=messaging.EVENTS_EXCHANGE, message_id=message_id)
        # The last one goes: once it is recorded, everything before it was handled (one chat, in order).
        await wait_for(lambda: mongo_db.notifications.find_one({"event_id": "s2", "sent": True}), timeout=10, what="the last event")
    told = "\n".join(text for _, text, _, _ in messenger.sent)
    assert "SEV1 reason" in told and "k-1" in told and "k-2" in told
    assert "SEV2 reason" not in told and "k-0" not in told  # off: not told, not recorded
    assert sorted(r["event_id"] for r in await mongo_db.notifications.find({}).to_list(None)) == ["s", "s2", "t1"]
    assert [silent for _, text, silent, _ in messenger.sent if "SEV1" in text] == [False]
    assert all(silent for _, text, silent, _ in messenger.sent if "SEV1" not in text)  # skipped: silent


async def test_while_telegram_is_away_events_wait_in_the_queue_and_go_out_in_order_after_a_restart(
        amqp_url, mongo_uri, mongo_db_name, mongo_db):
    away = TimedMessenger()
    away.down = True
    async with notifier(amqp_url, mongo_uri, mongo_db_name, away, chat_ids=(111,)) as publisher:
        for n in range(3):
            await publisher.publish(placed(f"w-{n}"), exchange=messaging.EVENTS_EXCHANGE, message_id=f"w-{n}:OrderPlacedV1")
        await wait_for(lambda: _tried(away, 3), what="a few tries while Telegram is away")
    assert away.sent == [] and await mongo_db.notifications.count_documents({"sent": True}) == 0
    back = TimedMessenger()  # the notifier restarted, Telegram back: nothing was lost, nothing was acked meanwhile
    async with notifier(amqp_url, mongo_uri, mongo_db_name, back, chat_ids=(111,)):
        await wait_for(lambda: sent_count(mongo_db, 3), timeout=15, what="the held events")
    told = re.findall(r"<code>(w-\d)</code>", "\n".join(text for _, text, _, _ in back.sent))
    assert told == ["w-0", "w-1", "w-2"]


async def _tried(messenger: TimedMessenger, n: int) -> bool:
    return len(messenger.attempts) >= n


async def test_through_telethon_a_flood_wait_above_the_threshold_and_a_long_message_are_handled(
        amqp_url, mongo_uri, mongo_db_name, mongo_db, tmp_path):
    # The real Telethon client (the notifier starts and stops it) over a fake Telegram at its network layer.
    messenger, fake = await fake_messenger(tmp_path, chats=[111], flood_sleep_threshold=1, start=False)
    fake.fail_next("FLOOD_WAIT_2")  # above the threshold: Telethon raises, the notifier waits it out itself
    async with notifier(amqp_url, mongo_uri, mongo_db_name, messenger, chat_ids=(111,)) as publisher:
        long_reason = " ".join(f"word{n}" for n in range(2000))  # about 14,000 characters
        failed = OrderFailedV1(signal_id="long-1", account="default", symbol="ETH/USDT:USDT", action="buy",
                               reason=long_reason, error_type="Rejected", failed_at=utcnow())
        started = time.monotonic()
        await publisher.publish(failed, exchange=messaging.EVENTS_EXCHANGE, message_id="long-1:OrderFailedV1")
        await wait_for(lambda: sent_count(mongo_db, 1), timeout=20, what="the long message after the flood wait")
        took = time.monotonic() - started
    assert took >= 2.0  # Telegram's FLOOD_WAIT_2, waited out
    # Split on Telegram's limit, in order, nothing lost: MESSAGE_TOO_LONG (which the fake enforces) never reached.
    assert len(fake.sent) >= 4 and all(len(m.text) <= 4096 for m in fake.sent)
    words = re.findall(r"word\d+", " ".join(m.text for m in fake.sent))
    assert words == [f"word{n}" for n in range(2000)]


async def test_with_telegram_down_orders_keep_going_and_their_events_wait_in_the_notifiers_queue(
        broker_vhost, mongo_uri, mongo_db_name, mongo_db, venue):
    from statistics import median

    from tests.integration.test_executor import harness
    from tests.support import queue_info

    vhost, amqp_url = broker_vhost
    away = TimedMessenger()
    away.down = True
    async with harness(amqp_url, mongo_uri, mongo_db_name, mongo_db, venue) as (h, _), \
            notifier(amqp_url, mongo_uri, mongo_db_name, away, chat_ids=(111,)):
        await h.set_mode(KillSwitchMode.RUNNING)
        signals = []
        for n in range(10):
            action = "buy" if n % 2 == 0 else "sell"
            signals.append(await h.send(qty=Decimal("0.01"), action=action))
            await h.settled(signals[-1])  # one after the other, as a strategy's alerts come
        documents = [await mongo_db.signals.find_one({"_id": s.signal_id}) for s in signals]
        assert [d["status"] for d in documents] == ["placed"] * 10
        latencies = [(d["updated_at"] - d["received_at"]).total_seconds() for d in documents]
        print(f"\nwith Telegram down: alert to recorded order, median {median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")
        assert max(latencies) < 1.0  # the executor never waits on the notifier

        async def held() -> bool:  # the broker's figures refresh every few seconds
            info = queue_info(vhost, "notifier.events")
            return info.get("messages_unacknowledged", 0) + info.get("messages_ready", 0) >= 10

        await wait_for(held, timeout=20, interval=0.5, what="the events to wait in notifier.events")
        assert away.sent == [] and await mongo_db.notifications.count_documents({"sent": True}) == 0




class ScriptedMessenger(TimedMessenger):
    """Answers the n-th send as scripted: an exception to raise, or None to deliver."""

    def __init__(self, script: dict[int, BaseException]) -> None:
        super().__init__()
        self.script = script

    async def send(self, chat_id: int, html: str, *, silent: bool = False) -> None:
        self.attempts.append(time.monotonic())
        error = self.script.get(len(self.attempts))
        if error is not None:
            raise error
        self.sent.append((chat_id, html, silent, time.monotonic()))


def long_failure(signal_id: str) -> OrderFailedV1:
    reason = " ".join(f"word{n}" for n in range(2000))  # about 14,000 characters: four parts
    return OrderFailedV1(signal_id=signal_id, account="default", symbol="ETH/USDT:USDT", action="buy", reason=reason,
                         error_type="Rejected", failed_at=utcnow())


async def test_a_flood_wait_in_the_middle_of_a_long_message_resumes_after_the_parts_already_sent(
        amqp_url, mongo_uri, mongo_db_name, mongo_db):
    messenger = ScriptedMessenger({2: DeliveryDelayed("FLOOD_WAIT_1", retry_after=1.0)})
    async with notifier(amqp_url, mongo_uri, mongo_db_name, messenger, chat_ids=(111,)) as publisher:
        await publisher.publish(long_failure("long-2"), exchange=messaging.EVENTS_EXCHANGE, message_id="long-2:OrderFailedV1")
        await wait_for(lambda: _tried(messenger, 2), what="the flood wait")
        # Another event comes while the long one waits: the rest of the long one still goes first, alone and whole.
        await publisher.publish(placed("after-1"), exchange=messaging.EVENTS_EXCHANGE, message_id="after-1:OrderPlacedV1")
        await wait_for(lambda: sent_count(mongo_db, 2), timeout=20, what="both events")
    texts = [text for _, text, _, _ in messenger.sent]
    words = re.findall(r"word\d+", " ".join(texts))
    assert words == [f"word{n}" for n in range(2000)]  # every part once, in order: none sent again after the wait
    assert "<code>after-1</code>" in texts[-1] and all("word" not in t for t in texts[-1:])


async def test_a_long_message_refused_at_its_first_part_is_recorded_failed_and_its_other_parts_not_sent(
        amqp_url, mongo_uri, mongo_db_name, mongo_db):
    from services.notifier.messenger import DeliveryFailed

    messenger = ScriptedMessenger({1: DeliveryFailed("CHAT_WRITE_FORBIDDEN")})
    async with notifier(amqp_url, mongo_uri, mongo_db_name, messenger, chat_ids=(111,)) as publisher:
        await publisher.publish(long_failure("long-3"), exchange=messaging.EVENTS_EXCHANGE, message_id="long-3:OrderFailedV1")
        record = await wait_for(lambda: mongo_db.notifications.find_one({"event_id": "long-3:OrderFailedV1"}), what="the record")
    assert record["sent"] is False and record["error"] == "CHAT_WRITE_FORBIDDEN"
    assert messenger.sent == [] and len(messenger.attempts) == 1


async def test_an_event_that_keeps_failing_unexpectedly_is_recorded_failed_and_does_not_hold_the_chat(
        amqp_url, mongo_uri, mongo_db_name, mongo_db):
    bug = RuntimeError("a bug in a messenger")
    messenger = ScriptedMessenger({1: bug, 2: bug, 3: bug})
    async with notifier(amqp_url, mongo_uri, mongo_db_name, messenger, chat_ids=(111,)) as publisher:
        await publisher.publish(placed("bad-1"), exchange=messaging.EVENTS_EXCHANGE, message_id="bad-1:OrderPlacedV1")
        await publisher.publish(placed("next-1"), exchange=messaging.EVENTS_EXCHANGE, message_id="next-1:OrderPlacedV1")
        await wait_for(lambda: sent_count(mongo_db, 1), timeout=20, what="the next event")
        stuck = await mongo_db.notifications.find_one({"event_id": "bad-1:OrderPlacedV1"})
    assert stuck["sent"] is False and "a bug in a messenger" in stuck["error"]
    assert "<code>next-1</code>" in messenger.sent[-1][1] and "bad-1" not in messenger.sent[-1][1]


async def test_a_group_gets_at_most_one_message_every_three_seconds(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    messenger = TimedMessenger()
    async with notifier(amqp_url, mongo_uri, mongo_db_name, messenger, chat_ids=(-100123,)) as publisher:
        await publisher.publish(placed("g-1"), exchange=messaging.EVENTS_EXCHANGE, message_id="g-1:OrderPlacedV1")
        await wait_for(lambda: sent_count(mongo_db, 1), what="the first")
        await publisher.publish(placed("g-2"), exchange=messaging.EVENTS_EXCHANGE, message_id="g-2:OrderPlacedV1")
        await wait_for(lambda: sent_count(mongo_db, 2), timeout=10, what="the second")
    assert messenger.sent[1][3] - messenger.sent[0][3] >= 2.9  # 20 a minute for a group, not 1 a second


async def test_stopping_while_a_told_event_is_being_recorded_gives_the_event_back_and_stops(
        broker_vhost, mongo_uri, mongo_db_name, mongo_db):
    """SIGTERM between Telegram accepting a message and its record being written: the notifier must still stop (it
    used to wait for ever on the event's handler), and the event goes back to its queue, since its outcome is not
    recorded."""
    import asyncio
    from urllib.parse import urlsplit

    from tests.proxy import TcpProxy
    from tests.support import queue_info

    vhost, amqp_url = broker_vhost
    target = urlsplit(mongo_uri)
    proxy = await TcpProxy(target.hostname, target.port).start()
    through = mongo_uri.replace(f":{target.port}/", f":{proxy.port}/")
    # directConnection: the test server names itself as a member on its own port, which would bypass the proxy.
    through += ("&" if "?" in through else "?") + "directConnection=true&serverSelectionTimeoutMS=300"

    class CutAfterSending(TimedMessenger):
        async def send(self, chat_id: int, html: str, *, silent: bool = False) -> None:
            await super().send(chat_id, html, silent=silent)
            proxy.cut()  # the record of what was just told cannot be written now

    messenger = CutAfterSending()
    try:
        async def run() -> None:
            async with notifier(amqp_url, through, mongo_db_name, messenger, chat_ids=(111,)) as publisher:
                await publisher.publish(placed("stop-1"), exchange=messaging.EVENTS_EXCHANGE, message_id="stop-1:OrderPlacedV1")
                await wait_for(lambda: _sent(messenger), timeout=10, what="Telegram to accept the message")

        await asyncio.wait_for(run(), timeout=20)  # the notifier stops, though the record never got written
    finally:
        proxy.restore()
        await proxy.stop()
    assert len(messenger.sent) == 1
    assert await mongo_db.notifications.count_documents({}) == 0

    async def returned() -> bool:
        return queue_info(vhost, "notifier.events").get("messages") == 1  # the broker's counts lag a little

    await wait_for(returned, timeout=10, what="the event back in notifier.events")


async def _sent(messenger) -> bool:
    return bool(messenger.sent)
