"""Which executor replica consumes which shard of the signals.

Every replica writes a heartbeat to `executor_replicas` each second and reads who else is alive. Each shard belongs
to one live replica, by rendezvous hashing capped at a fair share (so the work is spread, and a replica joining or
leaving moves few shards), and only its owner consumes it. The heartbeat lists the shards a replica holds; a new
owner takes a shard only once no live replica holds it, so a handover never has two replicas working on one
account+symbol (the single-active-consumer rule covers a moment when two views of the rota differ). A replica that
dies stops heartbeating; within `lease_s` the others take its shards over.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta

from aio_pika.abc import AbstractRobustConnection
from pymongo.asynchronous.database import AsyncDatabase

from shared.contracts import utcnow
from shared.messaging import EXECUTOR_SHARDS, Handler, LaneConsumer, shard_lane
from shared.runtime import raise_if_cancelling

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
# Signals a shard consumer holds at once: its symbols run side by side, each in order (shared.messaging.LaneConsumer).
SHARD_PREFETCH = 32
LEASE_S = 3.0


def replica_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _score(replica: str, shard: int) -> bytes:
    return hashlib.sha256(f"{replica}/{shard}".encode()).digest()


def assignment(replicas: list[str], shards: int = len(EXECUTOR_SHARDS)) -> dict[int, str]:
    """Each shard's owner: rendezvous hashing, capped so that every replica owns its fair share (give or take one).

    Every replica that computes it from the same live set gets the same answer; a replica joining or leaving moves
    few shards besides its own.
    """
    if not replicas:
        return {}
    load = dict.fromkeys(replicas, 0)
    owners: dict[int, str] = {}
    # Everyone first gets its floor share, then the rest go out one more each at most.
    for cap in (shards // len(replicas), -(-shards // len(replicas))):
        for shard in range(shards):
            if shard in owners:
                continue
            for replica in sorted(replicas, key=lambda r: _score(r, shard), reverse=True):
                if load[replica] < cap:
                    owners[shard] = replica
                    load[replica] += 1
                    break
    return owners


def owned_by(replica: str, replicas: list[str], shards: int = len(EXECUTOR_SHARDS)) -> set[int]:
    return {shard for shard, owner in assignment(replicas, shards).items() if owner == replica}


class ShardConsumers:
    """Keeps this replica consuming exactly the shards it owns."""

    def __init__(self, connection: AbstractRobustConnection, db: AsyncDatabase, handler: Handler, *,
                 replica: str | None = None, heartbeat_s: float = HEARTBEAT_S, lease_s: float = LEASE_S,
                 on_change: Callable[[set[int]], None] | None = None) -> None:
        self.connection, self.db, self.handler = connection, db, handler
        self.replica = replica or replica_name()
        self.heartbeat_s, self.lease_s = heartbeat_s, lease_s
        self.on_change = on_change
        self.consumers: dict[int, LaneConsumer] = {}
        self.releasing: set[int] = set()
        self.assigned = asyncio.Event()  # set once this replica has taken part in an assignment

    @property
    def consuming(self) -> bool:
        """Ready to work: in the rota (owning some shards, or standing by for a replica that fails)."""
        return self.assigned.is_set()

    @property
    def owned(self) -> list[int]:
        return sorted(self.consumers)

    async def run(self, ready: Callable[[], Awaitable[None]]) -> None:
        """Wait until trading may start (`ready`), then keep the assignment until cancelled. The heartbeat beats on
        its own, so a replica busy finishing a slow order is never taken for dead."""
        await ready()
        beating = asyncio.create_task(self._beat())
        try:
            while True:
                try:
                    await self.rebalance()
                except Exception as error:  # Mongo or the broker away: keep what is consumed now, try again
                    raise_if_cancelling()
                    log.warning("shard assignment not refreshed", extra={"error": f"{type(error).__name__}: {error}"[:300]})
                await asyncio.sleep(self.heartbeat_s)
        finally:
            beating.cancel()
            await asyncio.gather(beating, return_exceptions=True)

    async def _beat(self) -> None:
        last_ok = time.monotonic()
        while True:
            try:
                # Bounded: a database that stops answering must not hang the beat, or the fencing below.
                await asyncio.wait_for(self._heartbeat(utcnow()), self.lease_s / 2)
                last_ok = time.monotonic()
            except Exception as error:
                raise_if_cancelling()
                log.warning("heartbeat not written", extra={"error": f"{type(error).__name__}: {error}"[:300]})
                if self.consumers and time.monotonic() - last_ok > self.lease_s:
                    # The others now take this replica for dead and its shards for theirs: let go of them (the
                    # rota takes them again once the database answers).
                    log.error("database unreachable for longer than the lease: letting go of every shard")
                    await asyncio.gather(*(self._release(shard) for shard in sorted(self.consumers)))
            await asyncio.sleep(self.heartbeat_s)

    async def rebalance(self) -> None:
        now = utcnow()
        await self._heartbeat(now)  # also before the first look at the others: the rota must know this replica
        others = {d["_id"]: d.get("holding", []) async for d in self.db.executor_replicas.find(
            {"seen_at": {"$gte": now - timedelta(seconds=self.lease_s)}, "_id": {"$ne": self.replica}},
            {"_id": 1, "holding": 1})}
        live = [self.replica, *others]
        wanted = owned_by(self.replica, live)
        self.assigned.set()  # in the rota from now on, owning shards or standing by
        released = sorted(set(self.consumers) - wanted)
        # Together: one slow order in hand must not hold up the shards that are free to go.
        await asyncio.gather(*(self._release(shard) for shard in released))
        for shard in released:
            log.info("shard handed over", extra={"shard": shard, "replicas": len(live)})
        if released:
            await self._heartbeat(utcnow())  # tells the new owner it may start
        # A shard is taken only once no live replica holds it any more: the old owner lets go after the message in
        # its hands is done, so two replicas never work on one account+symbol at once.
        held_elsewhere = {shard for holding in others.values() for shard in holding}
        taken = []
        for shard in sorted(wanted - set(self.consumers) - held_elsewhere):
            spec = EXECUTOR_SHARDS[shard]
            consumer = LaneConsumer(channel=await self.connection.channel(), queue_name=spec.name, handler=self.handler,
                                    prefetch=SHARD_PREFETCH, name=f"executor-{self.replica}", lane_of=shard_lane,
                                    attempts=spec.delivery_limit)
            await consumer.start()
            self.consumers[shard] = consumer
            taken.append(shard)
            log.info("shard taken", extra={"shard": shard, "replicas": len(live)})
        if taken:
            await self._heartbeat(utcnow())
        if self.on_change is not None:
            self.on_change(set(self.consumers))

    async def _heartbeat(self, now) -> None:
        holding = sorted(set(self.consumers) | self.releasing)  # a shard being let go is held until it is let go
        await self.db.executor_replicas.update_one(
            {"_id": self.replica}, {"$set": {"seen_at": now, "holding": holding}}, upsert=True)

    async def _release(self, shard: int) -> None:
        self.releasing.add(shard)
        consumer = self.consumers.pop(shard)
        try:
            await consumer.stop()  # what each symbol has in hand is finished first; its channel is closed
        finally:
            self.releasing.discard(shard)

    async def stop(self) -> None:
        """Stop every consumer (messages in hand finish), and leave the rota at once so the others take over."""
        for shard in sorted(self.consumers):
            await self._release(shard)
        try:
            await self.db.executor_replicas.delete_one({"_id": self.replica})
        except Exception:  # the lease runs out by itself
            log.warning("could not leave the replica rota; the others take over when the lease runs out")
