"""Two executor processes share the signals' shards: each account+symbol in order, both working, one dying losing
and doubling nothing."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import aiohttp
import pytest

from shared import messaging
from shared.contracts import SignalReceivedV1, utcnow
from tests.bingx_sim_support import make_ccxt
from tests.e2e.stack import BINGX_KEY, BINGX_SECRET, Stack
from tests.support import wait_for

pytestmark = pytest.mark.e2e
BTC, ETH, SOL = "BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT"
OTHERS = ("LTC", "BNB", "AVAX", "LINK", "DOT")  # priced in tests/e2e/stack.py
TERMINAL = ("placed", "failed", "skipped", "expired", "unknown")


@pytest.fixture
async def replicas(amqp_url, mongo_uri, mongo_db_name, tmp_path):
    stack = Stack(amqp_url=amqp_url, mongo_uri=mongo_uri, mongo_db=mongo_db_name, logs=tmp_path)
    try:
        for name in ("bingx_sim", "control"):
            stack.start(name)
            await stack.ready(name)
        stack.start("executor")
        stack.start("executor-2", module="executor")
        await stack.ready("executor")
        await stack.ready("executor-2")
        yield stack
    finally:
        await stack.stop_all()


async def shards_of(stack: Stack, name: str) -> list[int] | None:
    try:
        async with aiohttp.ClientSession() as session, session.get(stack.url(name, "/readyz")) as response:
            return (await response.json()).get("shards") if response.status == 200 else None
    except aiohttp.ClientError:
        return None


async def replica_of(stack: Stack, name: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(stack.url(name, "/readyz")) as response:
        return (await response.json())["replica"]


async def send(publisher: messaging.Publisher, account: str, symbol: str, action: str, qty: str | None = None) -> str:
    signal = SignalReceivedV1(signal_id=f"r-{uuid.uuid4().hex[:12]}", account=account, token_name="e2e", symbol=symbol,
                              action=action, qty=Decimal(qty) if qty else None, received_at=utcnow())
    await publisher.publish(signal, exchange=messaging.SIGNALS_EXCHANGE, message_id=signal.signal_id)
    return signal.signal_id


async def settled(mongo_db, ids: list[str], timeout: float = 60) -> list[dict]:
    async def all_settled() -> list[dict] | None:
        documents = await mongo_db.signals.find({"_id": {"$in": ids}, "status": {"$in": list(TERMINAL)}}).to_list(None)
        return documents if len(documents) == len(ids) else None

    return await wait_for(all_settled, timeout=timeout, what=f"{len(ids)} signals to settle")


async def test_two_executors_share_the_work_keep_each_symbols_order_and_survive_one_dying(replicas, amqp_url, mongo_db):
    stack = replicas

    async def split() -> bool:
        one, two = await shards_of(stack, "executor"), await shards_of(stack, "executor-2")
        return bool(one and two and sorted(one + two) == list(range(messaging.SIGNAL_SHARDS)))

    await wait_for(split, timeout=20, what="the two executors to split the shards")
    venue = make_ccxt(stack.url("bingx_sim"), BINGX_KEY, BINGX_SECRET, sandbox=False)
    connection = await messaging.connect(amqp_url, "e2e-publisher")
    try:
        publisher = await messaging.Publisher.open(connection)

        # One symbol, under two account labels (one API key): an open and a close fired 1 ms apart, ten times.
        # Out of order, a close would find nothing.
        ordered = []
        for _ in range(10):
            ordered.append(await send(publisher, "ord", BTC, "buy", "0.001"))
            await asyncio.sleep(0.001)
            ordered.append(await send(publisher, "other", BTC, "close_long"))
        # Many symbols: the shards, and so both executors, get work.
        spread = [await send(publisher, f"acct{n}", symbol, "buy", qty)
                  for n, (symbol, qty) in enumerate([(ETH, "0.01"), *((f"{c}/USDT:USDT", "1") for c in OTHERS)] * 2)]
        documents = await settled(mongo_db, ordered + spread)
        assert {d["status"] for d in documents} == {"placed"}, [d.get("reason") for d in documents if d["status"] != "placed"]
        btc = [(o["side"], o["reduceOnly"]) for o in await venue.fetch_closed_orders(BTC)]
        assert btc == [("buy", False), ("sell", True)] * 10
        assert len({d["claimed_by"] for d in documents}) == 2  # both replicas did work

        # The executor working on SOL dies without a goodbye while SOL signals keep coming: nothing lost, nothing twice.
        during = [await send(publisher, f"acct{n % 16}", SOL, "buy", "0.1") for n in range(20)]
        [first] = await settled(mongo_db, during[:1])
        names = {await replica_of(stack, name): name for name in ("executor", "executor-2")}
        victim = names[first["claimed_by"]]
        survivor = ({"executor", "executor-2"} - {victim}).pop()
        await settled(mongo_db, during[:5])
        stack.kill(victim)
        during += [await send(publisher, f"acct{n % 16}", SOL, "buy", "0.1") for n in range(20)]
        documents = await settled(mongo_db, during)
        assert {d["status"] for d in documents} == {"placed"}
        for signal_id in during:
            assert await mongo_db.orders.count_documents({"signal_id": signal_id}) == 1
        assert len(await venue.fetch_closed_orders(SOL)) == len(during)
        assert {d["claimed_by"] for d in documents if d["_id"] in during[25:]} == {await replica_of(stack, survivor)}

        async def all_taken_over() -> bool:
            return sorted(await shards_of(stack, survivor) or []) == list(range(messaging.SIGNAL_SHARDS))

        await wait_for(all_taken_over, timeout=15, what="the live executor to take every shard over")
    finally:
        await connection.close()
        await venue.close()
