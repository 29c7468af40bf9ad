"""Fixtures on real servers: a fresh RabbitMQ vhost per test and a database per test on one test MongoDB server."""

from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import settings as hypothesis_settings
from pymongo import AsyncMongoClient

from shared import mongo
from shared.observability import setup_tracing
from tests.support import MongoServer, create_vhost, delete_vhost

# In CI the property tests draw the same examples every run: a red build then means the change broke something, not
# that this run happened to find an old bug (run them locally, unset CI, to explore further).
hypothesis_settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")


@pytest.fixture(scope="session", autouse=True)
def tracing():
    """A real tracer provider, as every service sets one up, so trace context is recorded and propagated."""
    return setup_tracing("tests", None)


@pytest.fixture(scope="session")
def mongo_uri() -> str:
    given = os.environ.get("TVTB_TEST_MONGO_URI")
    if given:
        yield given
        return
    server = MongoServer()
    server.start()
    try:
        yield server.uri
    finally:
        server.stop()


@pytest.fixture
def mongo_db_name() -> str:
    return f"tvtb_test_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def mongo_db(mongo_uri: str, mongo_db_name: str):
    client = AsyncMongoClient(mongo_uri, tz_aware=True)
    try:
        yield mongo.database(client, mongo_db_name)
        await client.drop_database(mongo_db_name)
    finally:
        await client.close()


@pytest.fixture
def broker_vhost() -> tuple[str, str]:
    vhost, url = create_vhost()
    try:
        yield vhost, url
    finally:
        delete_vhost(vhost)


@pytest.fixture
def amqp_url(broker_vhost: tuple[str, str]) -> str:
    return broker_vhost[1]
