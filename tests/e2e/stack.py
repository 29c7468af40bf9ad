"""The five services as separate processes (`python -m services.<name>`) on free loopback ports, for end-to-end tests."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.support import ROOT, free_port, wait_for

WEBHOOK_SECRET = "e2e-webhook-secret-7f3a9c"
CONTROL_TOKEN = "e2e-control-token-5b8d1e2f"
BINGX_KEY = "e2e-bingx-key"
BINGX_SECRET = "e2e-bingx-secret-c4d2"
SECRETS = (WEBHOOK_SECRET, CONTROL_TOKEN, BINGX_SECRET)

# name -> (port setting, readiness path)
SERVICES = {
    "bingx_sim": ("BINGX_SIM_PORT", "/healthz"),
    "control": ("CONTROL_PORT", "/readyz"),
    "executor": ("EXECUTOR_PORT", "/readyz"),
    "notifier": ("NOTIFIER_PORT", "/readyz"),
    "ingress": ("INGRESS_PORT", "/readyz"),
}


@dataclass
class Stack:
    amqp_url: str
    mongo_uri: str
    mongo_db: str
    logs: Path
    ports: dict[str, int] = field(default_factory=lambda: {name: free_port() for name in SERVICES})
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    modules: dict[str, str] = field(default_factory=dict)  # a second executor runs services.executor too
    extra_env: dict[str, str] = field(default_factory=dict)  # added to every service's environment
    service_env: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> added to that one's only

    def url(self, name: str, path: str = "") -> str:
        return f"http://127.0.0.1:{self.ports[name]}{path}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM_", "BINGX_", "WEBHOOK_", "CONTROL_"))}
        env.update({
            "AMQP_URL": self.amqp_url,
            "MONGO_URI": self.mongo_uri,
            "MONGO_DB": self.mongo_db,
            "TRADING_MODE": "paper",
            "WEBHOOK_TOKENS": f"e2e:{WEBHOOK_SECRET}",
            "CONTROL_API_TOKEN": CONTROL_TOKEN,
            "BINGX_API_KEY": BINGX_KEY,
            "BINGX_API_SECRET": BINGX_SECRET,
            "BINGX_BASE_URL": self.url("bingx_sim"),
            # Besides the three of the README, a few more symbols to spread over the executor's shards.
            "BINGX_SIM_PRICES": "BTC-USDT=60000,ETH-USDT=3000,SOL-USDT=150,LTC-USDT=100,BNB-USDT=600,AVAX-USDT=30,"
                                "LINK-USDT=15,DOT-USDT=7",
            "BIND_HOST": "127.0.0.1",
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        })
        env.update({setting: str(self.ports[name]) for name, (setting, _) in SERVICES.items()})
        env.update(self.extra_env)
        return env

    def start(self, name: str, module: str | None = None) -> None:
        """Start `services.<module>` (the name's own by default) as `name`, on a port of its own."""
        module = self.modules.setdefault(name, module or name)
        env = {**self.env(), **self.service_env.get(name, {})}
        env[SERVICES[module][0]] = str(self.ports.setdefault(name, free_port()))
        if module == "bingx_sim":
            # The venue keeps its paper accounts in memory here: its own persistence has tests of its own, and its
            # account documents, rewritten on every order, would load the test database the services share.
            env.pop("MONGO_URI", None)
        log = open(self.logs / f"{name}.log", "ab")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", f"services.{module}"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )

    def kill(self, name: str) -> None:
        """SIGKILL: no goodbye, no cleanup, as when a machine dies."""
        process = self.processes.pop(name)
        process.kill()
        process.wait(10)

    async def ready(self, name: str, timeout: float = 30.0) -> dict:
        path = SERVICES[self.modules.get(name, name)][1]

        async def probe() -> dict | None:
            process = self.processes[name]
            if process.poll() is not None:
                raise AssertionError(f"{name} exited with {process.returncode}:\n{self.log(name)[-3000:]}")
            try:
                async with aiohttp.ClientSession() as session, session.get(self.url(name, path)) as response:
                    return await response.json() if response.status == 200 else None
            except aiohttp.ClientError:
                return None

        return await wait_for(probe, timeout=timeout, interval=0.1, what=f"{name} to be ready")

    async def start_all(self) -> None:
        for name in SERVICES:
            self.start(name)
        for name in SERVICES:
            await self.ready(name)

    async def stop(self, name: str) -> int:
        process = self.processes.pop(name)
        process.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(process.wait, 20)

    async def stop_all(self) -> None:
        for name in reversed(list(self.processes)):
            try:
                await self.stop(name)
            except subprocess.TimeoutExpired:
                pass
        for process in self.processes.values():
            process.kill()

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def all_logs(self) -> str:
        return "\n".join(self.log(name) for name in {*SERVICES, *self.modules})
