"""Every command of docs/RUNBOOK.md works as written.

The `curl` lines run, in the runbook's order, through bash against the five services (after an alert opened a
position and a stale one was parked, so flatten and replay have something to do); each must be answered 2xx. The
`make` targets named have tests of their own (tests/integration/test_make_targets.py); the `docker compose` lines
must name real subcommands and services of docker-compose.yml, and what they run inside a container runs here
against the local broker where it can."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import subprocess
import sys
import time

import aiohttp
import orjson
import pytest
import yaml

from tests.e2e.stack import CONTROL_TOKEN, WEBHOOK_SECRET, Stack
from tests.support import ROOT, wait_for

pytestmark = pytest.mark.e2e
RUNBOOK = ROOT / "docs" / "RUNBOOK.md"
SHELL_WORDS = {"curl", "make", "docker", "systemctl", "journalctl", "kubectl", "API=http://127.0.0.1:8081;"}
# Targets with tests of their own: db-snapshot, logs, down, lint in tests/integration/test_make_targets.py; test and
# bench are what CI and `make bench` run.
TESTED_MAKE_TARGETS = {"db-snapshot", "logs", "down", "lint", "test", "bench"}
COMPOSE_SUBCOMMANDS = {"ps", "logs", "restart", "up", "exec"}


def without_comment(line: str) -> str:
    return re.sub(r"\s+#\s.*$", "", line).strip()


def commands() -> list[str]:
    """The runbook's commands in order: every line of its bash blocks, and inline code that starts like one."""
    text = RUNBOOK.read_text()
    found: list[str] = []
    for match in re.finditer(r"```(\w*)\n(.*?)```|`([^`\n]+)`", text, re.S):
        lang, block, span = match.groups()
        if block is not None:
            if lang == "bash":
                found += [without_comment(line) for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        elif span.split()[0] in SHELL_WORDS and len(span.split()) > 1 and span not in {"docker compose", "docker compose exec"}:
            found.append(without_comment(span.replace("\\|", "|")))
    return list(dict.fromkeys(found))


def test_the_runbook_holds_commands_of_known_kinds_only():
    found = commands()
    assert len(found) > 20
    for command in found:
        assert command.split()[0] in {"curl", "make", "docker", "API=http://127.0.0.1:8081;"}, command
        if command.startswith("make "):
            assert command.split()[1] in TESTED_MAKE_TARGETS, command


def test_every_docker_compose_command_names_a_real_subcommand_and_service():
    services = set(yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"])
    compose_lines = [c for c in commands() if c.startswith("docker ")]
    assert compose_lines
    for command in compose_lines:
        words = shlex.split(command)
        assert words[:2] == ["docker", "compose"], command
        assert words[2] in COMPOSE_SUBCOMMANDS, command
        args = [w for w in words[3:] if not w.startswith("-") and not re.fullmatch(r"\d+[smh]", w)]
        if words[2] == "exec":
            assert args[0] in services, command
        else:
            for name in args:
                assert name in services or name == "<service>", command


async def test_the_broker_commands_the_runbook_runs_in_its_container_work_on_a_broker(broker_vhost):
    """`docker compose exec rabbitmq rabbitmqctl ...`: the same rabbitmqctl, against the broker the tests use (in
    the test's vhost; the deployment's is `/`, rabbitmqctl's default), which holds one signal waiting."""
    import aio_pika

    vhost, url = broker_vhost
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("executor.signals.0", durable=True, arguments={"x-queue-type": "quorum"})
        await channel.default_exchange.publish(aio_pika.Message(b"{}"), routing_key=queue.name)
    inner = [shlex.split(c)[4:] for c in commands() if c.startswith("docker compose exec rabbitmq ")]
    assert inner
    for argv in inner:
        async def listed() -> bool:  # the broker refreshes a queue's counts every few seconds
            out = await asyncio.to_thread(subprocess.run, [*argv, "-p", vhost], capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            return ["executor.signals.0", "1", "0", "0"] in [line.split() for line in out.stdout.splitlines()]

        await wait_for(listed, timeout=30, interval=0.5, what=f"{argv} to list the waiting signal")


async def post_alert(stack: Stack, **payload) -> dict:
    async with aiohttp.ClientSession() as session:
        async with session.post(stack.url("ingress", "/webhook/tradingview"), data=orjson.dumps(payload)) as response:
            assert response.status == 200, await response.text()
            return await response.json()


async def get(stack: Stack, path: str) -> dict:
    async with aiohttp.ClientSession() as session:
        async with session.get(stack.url("control", path), headers={"Authorization": f"Bearer {CONTROL_TOKEN}"}) as response:
            return await response.json()


async def test_every_curl_command_of_the_runbook_answers_2xx_in_its_order(stack, mongo_db):
    await post_alert(stack, token=WEBHOOK_SECRET, id="runbook-open", symbol="BTCUSDT.P", action="buy", qty="0.01")
    await post_alert(stack, token=WEBHOOK_SECRET, id="runbook-late", symbol="ETHUSDT.P", action="buy", qty="0.1",
                     timestamp=int(time.time()) - 600, max_lag=30)

    async def settled() -> bool:
        docs = {d["_id"]: d.get("status") async for d in mongo_db.signals.find({}, {"status": 1})}
        parked = (await get(stack, "/bot/signals/parked"))["parked"]
        return docs.get("runbook-open") == "placed" and [p["signal_id"] for p in parked] == ["runbook-late"]

    await wait_for(settled, timeout=30, what="the open placed and the late alert parked")

    # `docker compose exec executor python -m shared.probe 9102 /readyz`: the same module, at this stack's executor.
    probes = [shlex.split(c)[3:] for c in commands() if c.startswith("docker compose exec executor ")]
    assert probes
    for argv in probes:
        assert argv[:4] == ["executor", "python", "-m", "shared.probe"], argv
        local = [sys.executable, "-m", "shared.probe", str(stack.ports["executor"]), *argv[5:]]
        out = await asyncio.to_thread(subprocess.run, local, cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and out.stdout.startswith("200 "), out.stdout + out.stderr
        assert json.loads(out.stdout[4:])["killswitch"]["known"] is True

    curls = [c for c in commands() if c.startswith("curl ")]
    (prelude,) = [c for c in commands() if c.startswith("API=")]
    assert len(curls) >= 12
    env = {"PATH": "/usr/bin:/bin", "CONTROL_API_TOKEN": CONTROL_TOKEN}
    last_body: dict = {}
    answered = []
    for command in curls:
        filled = command.replace("127.0.0.1:8081", f"127.0.0.1:{stack.ports['control']}")
        filled = filled.replace("<signal_id>", "runbook-late").replace("<code>", str(last_body.get("confirm", "")))
        filled = re.sub(r"<[^>]+>", "runbook test", filled)
        prelude_here = prelude.replace("127.0.0.1:8081", f"127.0.0.1:{stack.ports['control']}")
        script = f"{prelude_here}\n{filled} -w '\\n%{{http_code}}'"
        out = await asyncio.to_thread(subprocess.run, ["bash", "-c", script], capture_output=True, text=True,
                                      timeout=30, env=env)
        body, _, status = out.stdout.rpartition("\n")
        assert out.returncode == 0 and status.startswith("2"), f"{command}\n-> {status}: {body} {out.stderr}"
        last_body = json.loads(body) if body.startswith("{") else {}
        answered.append(command)
        if "flatten" in command and "confirm" in command:
            # The flatten runs at the executor; what GET /bot/flatten shows next must be its outcome.
            await wait_for(lambda: _flattened(stack), timeout=30, what="the flatten to finish")
    # What the commands did: trading back on, the parked alert replayed and placed once, the position flattened.
    status = await get(stack, "/status")
    assert status["mode"] == "running" and status["backlog_total"] == 0
    await wait_for(lambda: _placed(mongo_db, "runbook-late.replay"), timeout=30, what="the replay placed")
    history = (await get(stack, "/bot/settings/history"))["history"]
    reasons = [h["reason"] for h in history if h["set_by"] == "api"]
    assert reasons == ["runbook test", "flatten: runbook test", "incident: runbook test"]  # newest first: off, flatten, on


async def _flattened(stack: Stack) -> bool:
    body = await get(stack, "/bot/flatten")
    return body.get("status") == "done" and body.get("complete") is True


async def _placed(mongo_db, signal_id: str) -> bool:
    doc = await mongo_db.signals.find_one({"_id": signal_id}, {"status": 1})
    return bool(doc) and doc.get("status") == "placed"
