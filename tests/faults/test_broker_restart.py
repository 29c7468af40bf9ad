"""The RabbitMQ node restarted (a full stop of the Erlang node, then a start) while alerts stream in: every service's
connection drops, new ones are refused until the node is back. The ingress keeps answering 200 from its Mongo outbox
and relays it once the broker is back; the executor's robust connection comes back to its shards, which, like the
vhost and what its quorum queues held, survive the restart. The books balance.

A full restart, not `rabbitmqctl stop_app`/`start_app`: on 3.10.8 the latter leaves rabbit_fifo_dlx_sup stopped, and
with it dead-lettering from quorum queues. The broker is shared by the whole suite: whatever happens, the scenario
leaves it up and healthy (restart_broker_if_unhealthy)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
import urllib.request

import pytest

from tests.faults.books import assert_clean
from tests.faults.harness import AlertStream, close_books, make_alerts, start_stack
from tests.faults.test_broker_link import outboxed
from tests.support import RABBIT_HOST, RABBIT_MGMT, RABBIT_PASSWORD, RABBIT_PORT, RABBIT_USER, ROOT, wait_for

pytestmark = pytest.mark.e2e
COUNT = 50
BEFORE_BACK = 40  # sent from before the stop until the broker is back, or earlier; the rest once it is back
ENSURE = ROOT / "ops" / "scripts" / "ensure-rabbitmq.sh"
CTL_ENV = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LANG": "C.UTF-8", "HOME": os.environ.get("HOME", "/root")}


def port_open() -> bool:
    try:
        socket.create_connection((RABBIT_HOST, RABBIT_PORT), timeout=0.5).close()
        return True
    except OSError:
        return False


def management(path: str) -> object | None:
    """A GET on the management API; None when it does not answer."""
    request = urllib.request.Request(f"{RABBIT_MGMT}/api{path}", headers={
        "authorization": "Basic " + base64.b64encode(f"{RABBIT_USER}:{RABBIT_PASSWORD}".encode()).decode()})
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


async def run(*command: str, timeout: float) -> tuple[int | None, str]:
    """A command of the broker's, without holding the event loop up (the alerts keep streaming meanwhile). Its own
    session, so the broker it may start does not belong to this test's process group."""
    process = await asyncio.create_subprocess_exec(*command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.STDOUT, env=CTL_ENV, start_new_session=True)
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        return None, f"{' '.join(command)} timed out after {timeout}s"
    return process.returncode, output.decode(errors="replace")[-2000:]


async def port_is(open_: bool) -> bool:
    return await asyncio.to_thread(port_open) is open_


async def healthy() -> bool:
    """Port open, the management API answering, and the quorum queues' dead-lettering supervisor running (what a
    stop_app/start_app would have left down)."""
    if not await asyncio.to_thread(port_open) or await asyncio.to_thread(management, "/overview") is None:
        return False
    code, output = await run("rabbitmqctl", "-q", "eval", "whereis(rabbit_fifo_dlx_sup).", timeout=20)
    return code == 0 and output.strip().startswith("<")


async def start_broker() -> None:
    """ensure-rabbitmq.sh: starts the node when its port is closed, waits for its startup, enables the plugins and
    waits for the management API."""
    code, output = await run("bash", str(ENSURE), timeout=150)
    assert code == 0, f"ensure-rabbitmq.sh failed: {output}"


async def stop_broker() -> None:
    code, output = await run("rabbitmqctl", "stop", timeout=60)
    assert code == 0, f"rabbitmqctl stop failed: {output}"
    await wait_for(lambda: port_is(False), timeout=30, interval=0.1, what="the broker's port to close")


async def restart_broker_if_unhealthy() -> None:
    """Leave the shared broker up and healthy for the tests after this one, whatever happened here."""
    if await healthy():
        return
    if await asyncio.to_thread(port_open):
        # Up but not healthy (stopped half-way, or its dead-lettering down): a full restart.
        await run("rabbitmqctl", "stop", timeout=60)
        await wait_for(lambda: port_is(False), timeout=60, interval=0.2, what="the broker's port to close")
    await start_broker()
    await wait_for(healthy, timeout=90, interval=0.5, what="the broker to be healthy again")


async def node_uptime_s() -> float:
    """The node's uptime as the management API reports it (a node just started reports it after its first stats)."""

    async def uptime() -> float | None:
        nodes = await asyncio.to_thread(management, "/nodes") or []
        running = [n["uptime"] for n in nodes if n.get("running") and "uptime" in n]
        return running[0] / 1000 if len(running) == 1 else None

    return await wait_for(uptime, timeout=30, interval=0.2, what="the node's uptime in /api/nodes")


async def test_broker_node_restarted_mid_stream(stack, mongo_db, amqp_url):
    starting: asyncio.Task | None = None
    try:
        assert await healthy(), "the broker is not healthy before the scenario"
        await start_stack(stack)
        started = time.monotonic()
        stream_began = time.time()
        alerts = make_alerts("brokerrestart", COUNT)
        # The first 40 alerts over 10 s: the node is stopped from the 10th on (its connections drop at once, its stop
        # takes a few seconds more) and started again as soon as its port is closed; the last 10 once it is back, so
        # the services are seen to carry on after it. The ingress answers 200 from its outbox while the broker is
        # away; should it answer anything else (or nothing), the alert is resent as TradingView would.
        first = AlertStream(stack, alerts[:BEFORE_BACK], interval=0.25, deliveries=4, resend_after=1.0)
        sending = asyncio.create_task(first.run())
        await first.reached(10)
        stopping_at = time.time()
        await stop_broker()  # every connection dropped, and new ones refused until the node is back
        stopped_at, stopped_after = time.time(), first.started
        starting = asyncio.create_task(start_broker())
        await sending
        await starting
        back_at = time.time()
        await AlertStream(stack, alerts[BEFORE_BACK:], interval=0.1, deliveries=4, resend_after=1.0).run()

        uptime_s = await node_uptime_s()
        refused = sum(1 for alert in alerts for a in alert.attempts if a.status != 200)
        while_away = sum(1 for alert in alerts if stopping_at <= alert.attempts[0].sent < back_at)
        while_down = sum(1 for alert in alerts if stopped_at <= alert.attempts[0].sent < back_at)  # its port closed
        books = await close_books(stack, mongo_db, amqp_url, alerts, "broker node restarted", started,
                                  outboxed=await outboxed(stack), refused_deliveries=refused, sent_while_away=while_away,
                                  sent_while_down=while_down,
                                  stop_s=round(stopped_at - stopping_at, 1), away_s=round(back_at - stopping_at, 1))
        assert_clean(books)
        assert books["accepted"] == books["sent"] == COUNT  # every alert got its 200 ...
        assert refused == 0  # ... at once: while the broker was away, from the ingress's outbox
        assert books["at_exchange"] == COUNT
        # The restart really happened, mid-stream: the node is younger than the stream, the alerts kept coming while
        # it stopped, and the ingress kept what it could not publish in its outbox.
        assert uptime_s < time.time() - stream_began, (uptime_s, time.time() - stream_began)
        assert stopped_after > 10, stopped_after
        assert books["outboxed"] >= 10, books["outboxed"]
    finally:
        try:
            if starting is not None:  # a start under way is let finish, not raced by a second one
                await asyncio.gather(starting, return_exceptions=True)
            await restart_broker_if_unhealthy()
        finally:
            if "ingress" in stack.processes:
                await stack.stop("ingress")  # while its broker is reachable: it would wait for it on the way out
