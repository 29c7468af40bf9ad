"""Inserts from tasks writing at once go to the database together, each caller with its own outcome
(shared.mongo.GroupedInserts), on a real MongoDB-compatible server."""

from __future__ import annotations

import asyncio

import pytest
from pymongo import AsyncMongoClient, monitoring
from pymongo.errors import DuplicateKeyError, ServerSelectionTimeoutError

from shared import mongo
from shared.mongo import GroupedInserts
from tests.support import free_port


class InsertCommands(monitoring.CommandListener):
    def __init__(self) -> None:
        self.documents: list[int] = []  # documents per insert command

    def started(self, event) -> None:
        if event.command_name == "insert":
            self.documents.append(len(event.command.get("documents", [])))

    def succeeded(self, event) -> None:
        pass

    def failed(self, event) -> None:
        pass


@pytest.fixture
async def watched(mongo_uri, mongo_db_name):
    commands = InsertCommands()
    client = AsyncMongoClient(mongo_uri, tz_aware=True, event_listeners=[commands])
    try:
        yield mongo.database(client, mongo_db_name), commands
    finally:
        await client.drop_database(mongo_db_name)
        await client.close()


async def test_inserts_made_at_once_go_together_and_a_quiet_one_goes_alone(watched):
    db, commands = watched
    inserts = GroupedInserts(db)
    await inserts.insert_one("orders", {"_id": "alone"})
    assert commands.documents == [1]  # nobody else writing: sent at once, not held for company

    await asyncio.gather(*(inserts.insert_one("orders", {"_id": f"o-{n}"}) for n in range(20)))
    assert await db.orders.count_documents({}) == 21
    assert commands.documents[1:] == [20]  # asked for in the same moment: one command

    first = asyncio.create_task(inserts.insert_one("orders", {"_id": "first"}))
    await asyncio.sleep(0)  # the first is on its way ...
    await asyncio.gather(first, *(inserts.insert_one("orders", {"_id": f"p-{n}"}) for n in range(5)))
    assert commands.documents[2:] == [1, 5]  # ... the ones that came meanwhile go together in the next


async def test_each_caller_gets_its_own_outcome(watched):
    db, _ = watched
    inserts = GroupedInserts(db)
    await db.signals.insert_one({"_id": "taken"})
    outcomes = await asyncio.gather(
        inserts.insert_one("signals", {"_id": "a"}),
        inserts.insert_one("signals", {"_id": "taken"}),
        inserts.insert_one("signals", {"_id": "b"}),
        inserts.insert_one("orders", {"_id": "taken"}),  # another collection, another command
        return_exceptions=True,
    )
    assert outcomes[0] is None and outcomes[2] is None and outcomes[3] is None
    assert isinstance(outcomes[1], DuplicateKeyError)
    assert sorted([d["_id"] async for d in db.signals.find({})]) == ["a", "b", "taken"]


async def test_a_database_away_fails_every_caller_and_the_next_insert_tries_again():
    client = AsyncMongoClient(f"mongodb://127.0.0.1:{free_port()}/?retryWrites=false", serverSelectionTimeoutMS=200)
    try:
        inserts = GroupedInserts(client.get_database("nowhere"))
        outcomes = await asyncio.gather(*(inserts.insert_one("signals", {"_id": n}) for n in range(3)), return_exceptions=True)
        assert all(isinstance(outcome, ServerSelectionTimeoutError) for outcome in outcomes), outcomes
        with pytest.raises(ServerSelectionTimeoutError):  # nothing stuck: the next one is sent, and fails on its own
            await inserts.insert_one("signals", {"_id": "later"})
    finally:
        await client.close()
