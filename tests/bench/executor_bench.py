"""`make bench`, second part: alert-to-exchange-order latency at a steady rate, beside the venue call alone.

The whole stack runs as processes (tests/e2e/stack.py) on loopback, paper trading at the simulator. Alerts go to the
ingress over HTTP at a fixed rate (open loop: one is sent every 1/rate s whatever the answers), over the eight symbols
the stack's simulator lists, taking turns, as a trader's strategies on several markets would: the executor's shards
are by symbol, so one symbol alone would run on one shard (`--symbols 1` measures that). Each alert's latency is from the ingress accepting it (`signals.received_at`)
to the executor recording BingX's answer (`orders.placed_at`). The baseline, measured in the same run against the
same simulator: one ccxt `create_order` at the same rate, which is the floor any executor pays per order.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

from tests.bingx_sim_support import make_ccxt
from tests.e2e.stack import BINGX_KEY, BINGX_SECRET, WEBHOOK_SECRET, Stack
from tests.support import ROOT, MongoServer, create_vhost, delete_vhost, wait_for

OUT_DIR = ROOT / "bench" / "out"
# The stack's simulator lists these (tests/e2e/stack.py); each alert is 100 USDT, which every market can size.
SYMBOLS = ("BTCUSDT.P", "ETHUSDT.P", "SOLUSDT.P", "LTCUSDT.P", "BNBUSDT.P", "AVAXUSDT.P", "LINKUSDT.P", "DOTUSDT.P")
P99_TARGET_MS = 25.0
BTC = "BTC/USDT:USDT"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def steady(rate: int, duration: int, fire) -> list[asyncio.Task]:
    """Call `fire(n)` every 1/rate s for `duration` s, never waiting for what it started."""
    tasks = []
    started = time.monotonic()
    for n in range(rate * duration):
        delay = started + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire(n)))
    return tasks


async def alerts(stack: Stack, mongo_db, rate: int, duration: int, symbols: int) -> tuple[list[float], dict]:
    run = secrets.token_hex(3)
    statuses: dict[int, int] = {}
    async with aiohttp.ClientSession() as session:
        async def fire(n: int) -> None:
            action = "buy" if (n // symbols) % 2 == 0 else "sell"  # each symbol goes long, then back to about flat
            body = {"token": WEBHOOK_SECRET, "id": f"lat-{run}-{n}", "symbol": SYMBOLS[n % symbols],
                    "action": action, "usdt": "100"}
            async with session.post(stack.url("ingress", "/webhook/tradingview"), data=orjson.dumps(body)) as response:
                statuses[response.status] = statuses.get(response.status, 0) + 1

        await asyncio.gather(*await steady(rate, duration, fire))
    ids = [f"lat-{run}-{n}" for n in range(rate * duration)]

    ours = {"_id": {"$gte": f"lat-{run}-", "$lt": f"lat-{run}."}}  # a range, cheap for the database to poll

    async def all_settled() -> bool:
        return await mongo_db.signals.count_documents({**ours, "status": {"$nin": ["received", "submitting"]}}) == len(ids)

    await wait_for(all_settled, timeout=120, interval=1.0, what="every alert to settle")
    signals = {d["_id"]: d async for d in mongo_db.signals.find(ours, {"received_at": 1, "claimed_at": 1, "updated_at": 1, "status": 1})}
    outcomes: dict[str, int] = {}
    for document in signals.values():
        outcomes[document["status"]] = outcomes.get(document["status"], 0) + 1
    orders = [order async for order in mongo_db.orders.find({"signal_id": {"$gte": f"lat-{run}-", "$lt": f"lat-{run}."}},
                                                            {"signal_id": 1, "placed_at": 1})]

    def ms(later, earlier) -> float:
        return (later - earlier).total_seconds() * 1000

    latencies = [ms(order["placed_at"], signals[order["signal_id"]]["received_at"]) for order in orders]
    # Where the time goes, by the stamps the services write: accepted -> claimed by the executor (the broker and
    # the executor's queue), claimed -> the venue's answer (the claim's write and the order), answer -> recorded.
    stages = {
        "accepted to claimed": [ms(signals[o["signal_id"]]["claimed_at"], signals[o["signal_id"]]["received_at"]) for o in orders],
        "claimed to order placed": [ms(o["placed_at"], signals[o["signal_id"]]["claimed_at"]) for o in orders],
        "order placed to recorded": [ms(signals[o["signal_id"]]["updated_at"], o["placed_at"]) for o in orders],
    }
    return latencies, {"http": statuses, "signals": outcomes, "stages": stages}


async def venue_calls(stack: Stack, rate: int, duration: int) -> list[float]:
    client = make_ccxt(stack.url("bingx_sim"), BINGX_KEY, BINGX_SECRET, sandbox=False)
    latencies: list[float] = []
    try:
        await client.load_markets()

        async def fire(n: int) -> None:
            started = time.perf_counter()
            await client.create_order(BTC, "market", "buy" if n % 2 == 0 else "sell", 0.001)
            latencies.append((time.perf_counter() - started) * 1000)

        await asyncio.gather(*await steady(rate, duration, fire))
    finally:
        await client.close()
    return latencies


def row(name: str, values: list[float]) -> str:
    return (f"{name:<34}{len(values):>7}{percentile(values, 50):>8.2f}{percentile(values, 90):>8.2f}"
            f"{percentile(values, 99):>8.2f}{max(values):>9.2f}")


async def main_async(rate: int, duration: int, symbols: int) -> int:
    mongo = MongoServer()
    mongo.start()
    vhost, amqp_url = create_vhost()
    logs = Path(tempfile.mkdtemp(prefix="tvtb-bench-"))
    stack = Stack(amqp_url=amqp_url, mongo_uri=mongo.uri, mongo_db="tvtb_bench", logs=logs)
    try:
        await stack.start_all()
        from pymongo import AsyncMongoClient

        from shared.mongo import CODEC_OPTIONS

        client = AsyncMongoClient(mongo.uri, tz_aware=True)
        db = client.get_database("tvtb_bench", codec_options=CODEC_OPTIONS)
        print(f"executor bench: {rate} alerts/s for {duration} s over {symbols} symbol(s), through ingress, broker, executor "
              "and simulator", flush=True)
        before = (await client.admin.command("serverStatus"))["opcounters"]
        ours, counts = await alerts(stack, db, rate, duration, symbols)
        after = (await client.admin.command("serverStatus"))["opcounters"]
        # What every service asked of the database per alert, in commands (an insert of many documents is one; the
        # bench's own polling included): the test server is a Python process that shares the two cores, so its work
        # is the stack's most telling cost.
        counts["db_ops_per_alert"] = {op: round((after[op] - before[op]) / (rate * duration), 2)
                                      for op in ("insert", "query", "update", "delete", "getmore", "command")}
        await client.close()
        print(f"baseline: ccxt create_order against the same simulator, {rate}/s for {duration} s", flush=True)
        floor = await venue_calls(stack, rate, duration)
    finally:
        await stack.stop_all()
        delete_vhost(vhost)
        mongo.stop()
    header = f"{'latency, ms':<34}{'orders':>7}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>9}"
    stages = counts.pop("stages")
    lines = ["", header, "-" * len(header), row("alert to order (ours)", ours), *(row(f"  {name}", values) for name, values in stages.items()),
             row("create_order alone (baseline)", floor),
             "", f"answers {counts['http']}; signals {counts['signals']}; database operations per alert {counts['db_ops_per_alert']}",
             f"DESIGN target: alert-to-order p99 < {P99_TARGET_MS:.0f} ms at {rate}/s: "
             f"{'HOLDS' if percentile(ours, 99) < P99_TARGET_MS else 'MISSED'} ({percentile(ours, 99):.2f} ms)"]
    print("\n".join(lines), flush=True)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    summary = {"rate": rate, "duration_s": duration, "symbols": symbols, "counts": counts,
               **{f"{name}_{p}": percentile(values, p) for name, values in (("ours", ours), ("baseline", floor)) for p in (50, 90, 99)},
               # Every latency, for the report's distribution plot (tests/bench/report.py).
               "ours_ms": [round(v, 3) for v in ours], "baseline_ms": [round(v, 3) for v in floor]}
    (OUT_DIR / "executor.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nresults: {(OUT_DIR / 'executor.json').relative_to(ROOT)}; logs in {logs}", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=int, default=200, help="alerts per second (default 200)")
    parser.add_argument("--duration", type=int, default=10, help="seconds of load (default 10)")
    parser.add_argument("--symbols", type=int, default=len(SYMBOLS), help=f"symbols the alerts take turns on (1..{len(SYMBOLS)})")
    arguments = parser.parse_args()
    if not 1 <= arguments.rate <= 2000 or not 1 <= arguments.duration <= 300 or not 1 <= arguments.symbols <= len(SYMBOLS):
        parser.error(f"--rate must be 1..2000, --duration 1..300 and --symbols 1..{len(SYMBOLS)}")
    return asyncio.run(main_async(arguments.rate, arguments.duration, arguments.symbols))


if __name__ == "__main__":
    sys.exit(main())
