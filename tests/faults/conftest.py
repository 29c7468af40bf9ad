"""A stack per scenario: fresh vhost, fresh database, fresh simulator; stopped whatever happens."""

from __future__ import annotations

import pytest

from tests.e2e.stack import Stack
from tests.faults.harness import forget
from tests.support import LEAKS, secrets_in


@pytest.fixture
async def stack(amqp_url, mongo_uri, mongo_db_name, tmp_path):
    running = Stack(amqp_url=amqp_url, mongo_uri=mongo_uri, mongo_db=mongo_db_name, logs=tmp_path)
    try:
        yield running
    finally:
        await running.stop_all()
        forget(running)
        LEAKS.extend(f"{name} in a service's log of a fault scenario" for name in secrets_in(running.all_logs()))
