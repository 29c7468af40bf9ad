"""`make bench`, third part: the notifier's throughput under Telegram's limits, through the real Telethon client.

The notifier runs in-process on the real broker and a SecantusDB, sending through Telethon to the fake Telegram at
its network layer (tests/telegram_fake.py), which timestamps every message it accepts. Two measurements:

- idle: single events a little more than a second apart to one chat; each event's latency from its publish to the
  message Telegram accepted. The floor is one Telegram round trip.
- burst: 1,000 events published at once to 5 chats; how long until every chat was told every event, how many
  messages that took (digests), and the highest message rates seen, per chat and overall, beside Telegram's limits
  (1 message/s per chat, 30/s per bot), which are the ceiling: a notifier that sent faster would be flood-waited.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from services.notifier.bootstrap import build
from services.notifier.consumers import consuming
from services.notifier.settings import NotifierSettings
from shared import messaging
from tests.bench.executor_bench import OUT_DIR, percentile
from tests.integration.test_notifier import placed
from tests.support import ROOT, MongoServer, create_vhost, delete_vhost, wait_for
from tests.telegram_fake import FakeTelegram, fake_messenger

TELEGRAM_PER_CHAT_PER_S = 1
SID = r"\b(n\d+-\d{4})\b"  # the events' signal ids, as the chat reads them
TELEGRAM_PER_BOT_PER_S = 30


class Stamped(list):
    """FakeTelegram.sent, with the moment each message was accepted."""

    def __init__(self) -> None:
        super().__init__()
        self.at: list[float] = []

    def append(self, item) -> None:
        self.at.append(time.monotonic())
        super().append(item)


def told(fake: FakeTelegram, chat: int) -> set[str]:
    return {sid for m in fake.sent if m.chat_id == chat for sid in re.findall(SID, m.text)}


def peak_rate(times: list[float]) -> int:
    """The most messages accepted within any one second."""
    best, start = 0, 0
    for end in range(len(times)):
        while times[end] - times[start] >= 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


async def run(chats: list[int], events: int, spacing_s: float, tmp: Path, mongo_uri: str, amqp_url: str) -> dict:
    fake = FakeTelegram(chats=chats)
    fake.sent = Stamped()
    tmp.mkdir(parents=True, exist_ok=True)
    messenger, _ = await fake_messenger(tmp, fake=fake, start=False)  # the notifier starts and stops it
    config = NotifierSettings(amqp_url=amqp_url, mongo_uri=mongo_uri, mongo_db=f"bench_{len(chats)}_{events}",
                              telegram_chat_ids=chats)
    connection = await messaging.connect(amqp_url, "bench-events")
    published: dict[str, float] = {}
    try:
        publisher = await messaging.Publisher.open(connection)
        async with build(config, messenger=messenger) as running, consuming(running):
            started = time.monotonic()
            for n in range(events):
                sid = f"n{len(chats)}-{n:04d}"
                published[sid] = time.monotonic()
                await publisher.publish(placed(sid), exchange=messaging.EVENTS_EXCHANGE, message_id=f"{sid}:OrderPlacedV1")
                if spacing_s:
                    await asyncio.sleep(spacing_s)  # the load's pace, not a wait for a result

            async def everyone_told() -> bool:
                return all(len(told(fake, chat)) == events for chat in chats)

            await wait_for(everyone_told, timeout=events * 2 + 60, interval=0.05, what="every chat told every event")
            finished = time.monotonic()
    finally:
        await connection.close()
    first_seen: dict[str, float] = {}
    for message, at in zip(fake.sent, fake.sent.at):
        for sid in re.findall(SID, message.text):
            first_seen.setdefault(sid, at)
    per_chat = Counter(m.chat_id for m in fake.sent)
    by_chat = {chat: [at for m, at in zip(fake.sent, fake.sent.at) if m.chat_id == chat] for chat in chats}
    return {
        "chats": len(chats), "events": events, "messages": len(fake.sent), "seconds": finished - started,
        "events_told_per_s": events * len(chats) / (finished - started),
        "peak_messages_per_s_overall": peak_rate(fake.sent.at),
        "min_gap_per_chat_ms": min((min((b - a for a, b in zip(t, t[1:])), default=float("inf")) for t in by_chat.values()),
                                   default=float("inf")) * 1000,
        "max_messages_to_one_chat": max(per_chat.values()),
        "latency_ms": [(first_seen[sid] - published[sid]) * 1000 for sid in published],
    }


async def main_async(burst: int) -> int:
    mongo = MongoServer()
    mongo.start()
    vhost, amqp_url = create_vhost()
    tmp = Path(tempfile.mkdtemp(prefix="tvtb-notifier-bench-"))
    try:
        print("notifier bench: idle latency, 10 events 1.1 s apart to one chat", flush=True)
        idle = await run([111], 10, 1.1, tmp / "idle", mongo.uri, amqp_url)
        print(f"notifier bench: burst, {burst} events at once to 5 chats", flush=True)
        burst_result = await run([111, 222, 333, 444, 555], burst, 0, tmp / "burst", mongo.uri, amqp_url)
    finally:
        delete_vhost(vhost)
        mongo.stop()
    lat = idle["latency_ms"]
    lines = [
        "",
        f"idle: event to Telegram p50 {percentile(lat, 50):.1f} ms, p99 {percentile(lat, 99):.1f} ms, max {max(lat):.1f} ms",
        f"burst: {burst_result['events']} events x {burst_result['chats']} chats told in {burst_result['seconds']:.1f} s "
        f"({burst_result['events_told_per_s']:.0f} event-chats/s) in {burst_result['messages']} messages (digests)",
        f"fastest gap between two messages to one chat {burst_result['min_gap_per_chat_ms']:.0f} ms "
        f"(Telegram's limit: {TELEGRAM_PER_CHAT_PER_S}/s), "
        f"overall {burst_result['peak_messages_per_s_overall']} (limit {TELEGRAM_PER_BOT_PER_S})",
    ]
    print("\n".join(lines), flush=True)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    document = {"idle": idle, "burst": {k: v for k, v in burst_result.items() if k != "latency_ms"},
                "limits": {"per_chat_per_s": TELEGRAM_PER_CHAT_PER_S, "per_bot_per_s": TELEGRAM_PER_BOT_PER_S}}
    (OUT_DIR / "notifier.json").write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nresults: {(OUT_DIR / 'notifier.json').relative_to(ROOT)}", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--burst", type=int, default=1000, help="events in the burst (default 1000)")
    arguments = parser.parse_args()
    if not 1 <= arguments.burst <= 10_000:
        parser.error("--burst must be between 1 and 10000")
    return asyncio.run(main_async(arguments.burst))


if __name__ == "__main__":
    sys.exit(main())
