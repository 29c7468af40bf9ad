"""Fixtures of the end-to-end tests."""

from __future__ import annotations

import pytest

from tests.e2e.stack import SECRETS, Stack


@pytest.fixture
async def stack(amqp_url, mongo_uri, mongo_db_name, mongo_db, tmp_path):
    """The five services as processes; at the end, no secret in their logs or in any collection."""
    running = Stack(amqp_url=amqp_url, mongo_uri=mongo_uri, mongo_db=mongo_db_name, logs=tmp_path)
    try:
        await running.start_all()
        yield running
    finally:
        await running.stop_all()
        leaked = [s for s in SECRETS if s in running.all_logs()]
        assert not leaked, "a secret reached a log line"
        for name in await mongo_db.list_collection_names():
            stored = str(await mongo_db[name].find({}).to_list(None))
            assert not [s for s in SECRETS if s in stored], f"a secret reached the {name} collection"
