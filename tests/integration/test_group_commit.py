"""Group commit on a real broker: alerts accepted together travel together, each once, in the order accepted."""

from __future__ import annotations

import asyncio
import time

from opentelemetry import trace

from services.ingress.bootstrap import build
from services.ingress.settings import IngressSettings
from shared.contracts import Action, SignalBatchV1, SignalReceivedV1, utcnow
from tests.support import drain_signals, set_policy

tracer = trace.get_tracer("tests.group_commit")
SYMBOLS = ("BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT")


def settings(amqp_url: str, mongo_uri: str, db: str) -> IngressSettings:
    return IngressSettings(amqp_url=amqp_url, mongo_uri=mongo_uri, mongo_db=db, webhook_tokens="main:tv-secret-0123456789abcdef")


def signal(n: int) -> SignalReceivedV1:
    return SignalReceivedV1(signal_id=f"g-{n:03d}", token_name="main", symbol=SYMBOLS[n % len(SYMBOLS)], action=Action.BUY,
                            received_at=utcnow())


async def commit_all(ingress, count: int) -> tuple[list[str], dict[str, str]]:
    """`count` signals committed concurrently, each under its own trace, in creation order."""
    traces: dict[str, str] = {}

    async def one(n: int) -> str:
        with tracer.start_as_current_span(f"request {n}") as span:
            traces[f"g-{n:03d}"] = format(span.get_span_context().trace_id, "032x")
            return await ingress.committer.commit(signal(n), deadline=time.monotonic() + 2.5)

    # Tasks start in creation order, so this is the order the committer is handed them: the order accepted.
    return await asyncio.gather(*(asyncio.create_task(one(n)) for n in range(count))), traces


async def test_signals_committed_together_reach_the_queue_once_each_in_order_with_their_own_traces(amqp_url, mongo_uri, mongo_db_name):
    messages: list = []
    async with build(settings(amqp_url, mongo_uri, mongo_db_name)) as ingress:
        outcomes, traces = await commit_all(ingress, 90)
        rounds = ingress.committer.rounds
    assert outcomes == ["published"] * 90
    delivered = await drain_signals(amqp_url, check=lambda message, decoded: messages.append((message, decoded)))

    ids = [s.signal_id for s in delivered]
    assert sorted(ids) == [f"g-{n:03d}" for n in range(90)]  # each once
    for symbol in SYMBOLS:  # in the order accepted within each account+symbol (the executor's ordering unit)
        mine = [s.signal_id for s in delivered if s.symbol == symbol]
        assert mine == sorted(mine)
    batches = [decoded for _, decoded in messages if isinstance(decoded, SignalBatchV1)]
    assert batches and rounds < 90, "the signals that waited for a confirm were not committed together"
    for message, decoded in messages:
        if isinstance(decoded, SignalBatchV1):
            assert message.routing_key == decoded.signals[0].routing_key()
            assert {s.routing_key() for s in decoded.signals} == {message.routing_key}  # a batch never mixes shards
            for s, headers in decoded.entries():  # each signal keeps the trace of the request that brought it
                assert headers["traceparent"].split("-")[1] == traces[s.signal_id]
        else:
            assert message.headers["traceparent"].split("-")[1] == traces[decoded.signal_id]


async def test_a_round_the_broker_refuses_goes_to_the_outbox_in_order_and_later_rounds_queue_behind_it(
    broker_vhost, mongo_uri, mongo_db_name, mongo_db
):
    vhost, amqp_url = broker_vhost
    async with build(settings(amqp_url, mongo_uri, mongo_db_name)) as ingress:
        await ingress.outbox.load()
        # A full queue that refuses new messages: the broker nacks every publish.
        set_policy(vhost, "full", "^executor\\.signals\\.[0-9]+$", {"max-length": 0, "overflow": "reject-publish"})
        probe = 0
        while True:  # policies take effect asynchronously: probe with a signal of its own until one is refused
            probe += 1
            refused = SignalReceivedV1(signal_id=f"probe-{probe}", token_name="main", symbol=SYMBOLS[0], action=Action.BUY, received_at=utcnow())
            if await ingress.committer.commit(refused, deadline=time.monotonic() + 2.5) == "outbox":
                break
            assert probe < 200, "the broker never refused a publish"
        outcomes, _ = await commit_all(ingress, 30)
        assert outcomes == ["outbox"] * 30
        held = await mongo_db.outbox.find({}, sort=[("seq", 1)]).to_list(None)
        assert [d["_id"] for d in held] == [f"probe-{probe}", *(f"g-{n:03d}" for n in range(30))]
