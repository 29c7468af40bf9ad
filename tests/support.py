"""Test helpers: free ports, polling with a deadline, the per-test broker vhost and the test MongoDB server."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
RABBIT_HOST = os.environ.get("TVTB_TEST_RABBIT_HOST", "127.0.0.1")
RABBIT_PORT = int(os.environ.get("TVTB_TEST_RABBIT_PORT", "5672"))
RABBIT_MGMT = os.environ.get("TVTB_TEST_RABBIT_MGMT", "http://127.0.0.1:15672")
RABBIT_USER = os.environ.get("TVTB_TEST_RABBIT_USER", "guest")
RABBIT_PASSWORD = os.environ.get("TVTB_TEST_RABBIT_PASSWORD", "guest")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_for(
    probe: Callable[[], Awaitable[T]], *, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"
) -> T:
    """Poll `probe` until it returns something truthy, or fail after `timeout` seconds saying what was awaited."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = await probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
        await asyncio.sleep(interval)


def _management(method: str, path: str, body: dict | None = None) -> bytes:
    request = urllib.request.Request(
        f"{RABBIT_MGMT}/api{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={
            "content-type": "application/json",
            "authorization": "Basic " + base64.b64encode(f"{RABBIT_USER}:{RABBIT_PASSWORD}".encode()).decode(),
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


def create_vhost() -> tuple[str, str]:
    """A fresh vhost for one test, so the fixed topology names of DESIGN.md never collide between tests."""
    vhost = f"tvtb-test-{uuid.uuid4().hex[:12]}"
    _management("PUT", f"/vhosts/{vhost}", {})
    _management("PUT", f"/permissions/{vhost}/{RABBIT_USER}", {"configure": ".*", "write": ".*", "read": ".*"})
    url = f"amqp://{RABBIT_USER}:{RABBIT_PASSWORD}@{RABBIT_HOST}:{RABBIT_PORT}/{vhost}"
    return vhost, url


def delete_vhost(vhost: str) -> None:
    _management("DELETE", f"/vhosts/{vhost}")


def close_connections(vhost: str, name_prefix: str = "") -> int:
    """Force-close the broker connections of a vhost (as a broker restart or a network cut would)."""
    closed = 0
    for connection in json.loads(_management("GET", f"/vhosts/{vhost}/connections")):
        name = (connection.get("client_properties") or {}).get("connection_name", "")
        if name.startswith(name_prefix):
            _management("DELETE", f"/connections/{urllib.parse.quote(connection['name'], safe='')}")
            closed += 1
    return closed


def set_policy(vhost: str, name: str, pattern: str, definition: dict) -> None:
    _management("PUT", f"/policies/{vhost}/{name}", {"pattern": pattern, "definition": definition, "apply-to": "queues"})


def purge_queue(vhost: str, queue: str) -> None:
    _management("DELETE", f"/queues/{vhost}/{queue}/contents")


def queue_info(vhost: str, queue: str) -> dict:
    return json.loads(_management("GET", f"/queues/{vhost}/{queue}"))


class MongoServer:
    """A throwaway SecantusDB (MongoDB-compatible) server on a free loopback port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.uri = f"mongodb://127.0.0.1:{self.port}/?retryWrites=false"

    def start(self) -> None:
        binary = shutil.which("secantusd-py", path=str(Path(sys.executable).parent)) or "secantusd-py"
        self.process = subprocess.Popen(
            [binary, "--host", "127.0.0.1", "--port", str(self.port), "--storage-path", ":memory:",
             "--cache-size", "256M", "--log-level", "WARNING"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"secantusd-py exited with {self.process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("secantusd-py did not open its port within 30 s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def drain(amqp_url: str, queue_name: str, *, check=None, timeout: float = 10.0) -> list:
    """Consume and ack everything a signals queue holds, by publishing a sentinel signal behind it and reading up to it.

    The sentinel goes to the queue itself (the default exchange routes by queue name), whatever feeds it otherwise.
    """
    import aio_pika

    from shared.contracts import Action, SignalReceivedV1, decode, signals_in, utcnow
    from shared.messaging import Publisher

    connection = await aio_pika.connect(amqp_url)
    try:
        sentinel_id = f"sentinel-{uuid.uuid4().hex}"
        publisher = await Publisher.open(connection)
        await publisher.publish(
            SignalReceivedV1(signal_id=sentinel_id, token_name="test", symbol="BTC/USDT:USDT", action=Action.BUY, received_at=utcnow()),
            exchange="", routing_key=queue_name,
        )
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=100)
        queue = await channel.get_queue(queue_name, ensure=False)
        found: list = []
        async with queue.iterator(timeout=timeout) as messages:
            async for message in messages:
                decoded = decode(message.type, message.body)
                await message.ack()
                if getattr(decoded, "signal_id", None) == sentinel_id:
                    break
                if check is not None:
                    check(message, decoded)
                # A batch is unpacked: callers see signals in the order the queue holds them.
                found.extend(signals_in(decoded) or [decoded])
        return found
    finally:
        await connection.close()


async def drain_signals(amqp_url: str, *, check=None, timeout: float = 10.0) -> list:
    """Everything the executor's shards hold, shard after shard; within a shard (one account+symbol), in order."""
    from shared.messaging import EXECUTOR_SHARDS

    found: list = []
    for shard in EXECUTOR_SHARDS:
        found.extend(await drain(amqp_url, shard.name, check=check, timeout=timeout))
    return found


# Every secret the tests configure, whole. Nothing the whole run makes may hold one: tests/conftest.py looks through
# every log record and every test database, the fake Telegram every message (the abuse suite also looks for pieces of
# its own random secrets in everything its tests produce, and the stack fixtures through the services' process logs).
RUN_SECRETS = {
    "ingress test token": "tv-secret-0123456789abcdef",
    "ingress test rotated token": "rotated-secret-abcdef0123456789",
    "control test token": "control-token-for-tests-0123456789",
    "simulator account secret": "sim-secret-0123456789",
    "e2e webhook token": "e2e-webhook-secret-7f3a9c",
    "e2e control token": "e2e-control-token-5b8d1e2f",
    "e2e BingX secret": "e2e-bingx-secret-c4d2",
    "Telegram test bot token": "AAHtestTOKENnot-a-real-one_0123456789",
    "abuse webhook token": "Wq7hT2x5nR0pLk4wV9cYb1mJ6sEoA3uG",
    "abuse rotated token": "Zr4uB8nQ2yXe6KcP0tLm9HsD5jVa1FgW",
    "abuse control token": "Ct9Lp2Wz6Qk0Ry4Hv8Nx3Js7Bf1Md5Gu",
    "abuse BingX secret": "Bs6Yh0Ue4Kt8Wn2Qm5Xv9Lc3Rp7Dz1Jf",
    "abuse bot token": "AAHq8Vd3Kx6Lm0Wp4Nz7Tr2Yc5Bf9Gh1Js",
}
LEAKS: list[str] = []  # what was found, for the end of the run (tests/conftest.py)


def secrets_in(text: str) -> list[str]:
    """The names of the secrets `text` holds."""
    return [name for name, secret in RUN_SECRETS.items() if secret in text]
