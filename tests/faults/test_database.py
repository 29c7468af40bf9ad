"""The database unreachable for a few seconds while alerts stream in: every service reaches MongoDB through a proxy
(tests/proxy.py) cut mid-stream for longer than their server selection timeout, then restored. The ingress keeps
answering 200 (the broker is up; it needs the database only for its outbox), the executor gives back to the queue what
it cannot record. Once the database is back the books, read over the direct connection, balance: every alert answered
200 at the exchange once or recorded with a reason, nothing doubled."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import pytest

from tests.faults.books import assert_clean
from tests.faults.harness import AlertStream, close_books, make_alerts, start_stack
from tests.proxy import TcpProxy

pytestmark = pytest.mark.e2e
COUNT = 60
CUT_S = 6.0  # longer than the services' 5 s server selection timeout (shared/mongo.py): operations fail, not just wait


async def test_database_unreachable_for_a_few_seconds_mid_stream(stack, mongo_db, mongo_uri, amqp_url):
    target = urlsplit(mongo_uri)
    proxy = await TcpProxy(target.hostname, target.port).start()
    try:
        # Every service through the proxy (the simulator keeps no database here: Stack.start drops its MONGO_URI).
        # directConnection: the test server names itself as a replica set member on its own port, and a client that
        # discovered it would connect there, past the proxy.
        through = mongo_uri.replace(f":{target.port}/", f":{proxy.port}/")
        stack.extra_env["MONGO_URI"] = through + ("&" if "?" in through else "?") + "directConnection=true"
        await start_stack(stack)
        started = time.monotonic()
        alerts = make_alerts("dbcut", COUNT)
        # The ingress needs the database only when the broker is away (its outbox): with the broker up it keeps
        # answering 200. Should it answer 503 (or not at all), the alert is resent as TradingView would.
        stream = AlertStream(stack, alerts, interval=0.1, deliveries=4, resend_after=1.5)
        sending = asyncio.create_task(stream.run())
        await stream.reached(12)
        proxy.cut()  # every MongoDB connection of every service reset, new ones refused
        cut_at = time.monotonic()
        await asyncio.sleep(CUT_S)  # the outage itself (not a wait for a result)
        proxy.restore()
        cut_s = time.monotonic() - cut_at
        await sending

        refused = sum(1 for alert in alerts for a in alert.attempts if a.status != 200)
        books = await close_books(stack, mongo_db, amqp_url, alerts, "database unreachable for a few seconds", started,
                                  settle_timeout=60.0, cut_s=round(cut_s, 1), refused_deliveries=refused)
        assert_clean(books)
        assert books["accepted"] == books["sent"] == COUNT  # every alert got its 200 in the end
        assert books["at_exchange"] == COUNT
        assert refused == 0  # the database is not on the ingress's way while the broker is up
        # The outage was felt: the executor could not record signals and tried them again in place (holding their
        # symbol's turn), let go of its shards when it could not renew its lease, and took them up again once the
        # database was back.
        executor = stack.log("executor")
        assert executor.count("handling failed; tried again in place") >= 1
        assert "database unreachable for longer than the lease" in executor
    finally:
        await stack.stop_all()
        await proxy.stop()
