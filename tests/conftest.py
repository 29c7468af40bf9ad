"""Fixtures on real servers: a fresh RabbitMQ vhost per test and a database per test on one test MongoDB server."""

from __future__ import annotations

import logging
import os
import uuid

import pytest
from hypothesis import settings as hypothesis_settings
from pymongo import AsyncMongoClient

from shared import mongo
from shared.observability import setup_tracing
from tests.support import LEAKS, MongoServer, create_vhost, delete_vhost, secrets_in

# In CI the property tests draw the same examples every run: a red build then means the change broke something, not
# that this run happened to find an old bug (run them locally, unset CI, to explore further).
hypothesis_settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")

class _LeakWatch(logging.Handler):
    """Looks through each log record as it is made (its message, arguments, extra fields, exception)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "aiohttp.access":
            # aiohttp's test servers log each request's path (a webhook token may be in it); the services' server
            # logs none (shared/runtime.py, proven by tests/unit/test_no_access_log.py).
            return
        try:
            text = f"{record.getMessage()} {record.__dict__!r}"
        except Exception:  # a record that cannot be rendered is the logging call's own bug, shown by pytest
            return
        for name in secrets_in(text):
            LEAKS.append(f"{name} in a log record of {record.name}: {record.getMessage()[:160]!r}")


@pytest.fixture(scope="session", autouse=True)
def no_secret_anywhere_in_the_run():
    """No log record (INFO and up, what a service logs in production), no document of a test's database and no
    message the fake Telegram accepted, in the whole run, holds a secret the tests configure (tests/support.py)."""
    watch = _LeakWatch()
    root = logging.getLogger()
    saved = root.level
    root.addHandler(watch)
    root.setLevel(min(saved, logging.INFO))
    try:
        yield
    finally:
        root.removeHandler(watch)
        root.setLevel(saved)
    assert not LEAKS, f"{len(LEAKS)} secret leak(s) in the run:\n" + "\n".join(LEAKS[:20])


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
        db = mongo.database(client, mongo_db_name)
        yield db
        for name in await db.list_collection_names():
            async for document in db[name].find({}):
                LEAKS.extend(f"{secret} in a document of {name}" for secret in secrets_in(repr(document)))
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
