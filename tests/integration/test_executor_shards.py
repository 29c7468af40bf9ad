"""Executor replicas hand shards over on real RabbitMQ and MongoDB: never two at work on one shard."""

from __future__ import annotations

import asyncio

from shared import messaging
from shared.contracts import Action, SignalReceivedV1, utcnow
from services.executor.shards import ShardConsumers, assignment
from tests.support import wait_for


def signal(signal_id: str) -> SignalReceivedV1:
    return SignalReceivedV1(signal_id=signal_id, token_name="t", symbol="BTC/USDT:USDT", action=Action.BUY, received_at=utcnow())


async def _true(value):
    return value


async def test_a_shard_moves_to_a_new_replica_only_after_the_old_one_finished_its_message(amqp_url, mongo_db):
    connection = await messaging.connect(amqp_url, "shards-test")
    gate = asyncio.Event()
    handled: list[tuple[str, str, bool]] = []  # (replica, signal, gate open when it started)
    started_first = asyncio.Event()

    def handler_for(replica: str):
        async def handle(message, raw) -> None:
            handled.append((replica, message.signal_id, gate.is_set()))
            if message.signal_id == "first":
                started_first.set()
                await gate.wait()  # a slow order in the old owner's hands
        return handle

    async def ready() -> None:
        return None

    a = ShardConsumers(connection, mongo_db, handler_for("a"), replica="replica-a", heartbeat_s=0.05, lease_s=2)
    b = ShardConsumers(connection, mongo_db, handler_for("b"), replica="replica-b", heartbeat_s=0.05, lease_s=2)
    moving = min(shard for shard, owner in assignment(["replica-a", "replica-b"]).items() if owner == "replica-b")
    queue = messaging.EXECUTOR_SHARDS[moving].name
    tasks = []
    try:
        await messaging.declare_topology(await connection.channel())
        publisher = await messaging.Publisher.open(connection)
        tasks.append(asyncio.create_task(a.run(ready)))
        await wait_for(lambda: _true(len(a.owned) == messaging.SIGNAL_SHARDS), what="replica a to hold every shard")
        await publisher.publish(signal("first"), exchange="", routing_key=queue)
        await asyncio.wait_for(started_first.wait(), 10)

        tasks.append(asyncio.create_task(b.run(ready)))  # b joins: the shard in a's hands is now b's
        await publisher.publish(signal("second"), exchange="", routing_key=queue)
        await wait_for(lambda: _true(len(b.owned) >= 1), what="replica b to take its other shards")
        for _ in range(10):  # many rounds of the rota while a is still busy
            rounds = await mongo_db.executor_replicas.find_one({"_id": "replica-b"})
            await wait_for(lambda: _newer(mongo_db, rounds["seen_at"]), what="another heartbeat of b")
        assert moving not in b.owned and [h[1] for h in handled] == ["first"]  # second waits: a is not done

        gate.set()
        await wait_for(lambda: _true(len(handled) == 2), what="the second signal")
        assert handled == [("a", "first", False), ("b", "second", True)]
        assert moving in b.owned and moving not in a.owned
    finally:
        gate.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await a.stop()
        await b.stop()
        await connection.close()


async def _newer(mongo_db, than) -> bool:
    document = await mongo_db.executor_replicas.find_one({"_id": "replica-b"})
    return document["seen_at"] > than


async def test_a_replica_that_loses_the_database_lets_go_of_its_shards(amqp_url, mongo_db_name):
    from shared import mongo
    from tests.support import MongoServer

    private = MongoServer()  # a database of this test's own, to take away
    private.start()
    client = mongo.connect(private.uri, app_name="shards-test", timeout_ms=300)
    connection = await messaging.connect(amqp_url, "shards-test")
    replica = ShardConsumers(connection, mongo.database(client, mongo_db_name), _ignore, replica="lonely",
                             heartbeat_s=0.05, lease_s=1)

    async def ready() -> None:
        return None

    # Declared before the replica runs: RabbitMQ 3.10 closes the whole connection (INTERNAL_ERROR) when a consume
    # reaches a quorum queue declared a moment ago whose process has not started yet.
    await messaging.declare_topology(await connection.channel())
    task = asyncio.create_task(replica.run(ready))
    try:
        await wait_for(lambda: _true(len(replica.owned) == messaging.SIGNAL_SHARDS), what="the replica to hold every shard")
        private.stop()  # the others would take this replica for dead after the lease
        await wait_for(lambda: _true(replica.owned == []), timeout=15, what="the replica to let go of its shards")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await connection.close()
        await client.close()
        private.stop()


async def _ignore(message, raw) -> None:
    return None
