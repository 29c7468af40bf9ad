"""The database unreachable for a few seconds while alerts stream in: every service reaches MongoDB through a proxy
(tests/proxy.py) that is cut mid-stream and restored. The ingress answers what it cannot record with a 503 and the
harness resends it as TradingView would; once the database is back the books (read over the direct connection)
balance: every alert answered 200 at the exchange once or recorded with a reason, nothing doubled."""

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
        stack.extra_env["MONGO_URI"] = mongo_uri.replace(f":{target.port}/", f":{proxy.port}/")
        await start_stack(stack)
        started = time.monotonic()
        alerts = make_alerts("dbcut", COUNT)
        # Alerts answered 503 (or not at all) while the database is away are resent: 3 s apart, up to 4 deliveries,
        # so an alert that first arrives during the cut is delivered again after it.
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
        assert refused >= 1  # the outage was felt at the ingress
    finally:
        await stack.stop_all()
        await proxy.stop()
