"""Run the whole stack on this machine without Docker: a local MongoDB-compatible server, the simulator, four services.

Settings come from the environment, then `.env` when present, then paper-trading defaults. Ctrl-C stops everything.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUN_DIR = ROOT / ".run"
SERVICES = ("bingx_sim", "control", "executor", "notifier", "ingress")
DEFAULTS = {
    "AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/%2F",
    "MONGO_DB": "tvtb",
    "TRADING_MODE": "paper",
    "WEBHOOK_TOKENS": "local:local-dev-webhook-token",
    "CONTROL_API_TOKEN": "local-dev-control-token",
    "BINGX_API_KEY": "paper-key",
    "BINGX_API_SECRET": "paper-secret",
    "BINGX_BASE_URL": "http://127.0.0.1:8090",
    "BIND_HOST": "127.0.0.1",
}


def read_dotenv(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if not path.exists():
        return values
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip('"').strip("'")
    return values


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def main() -> int:
    env = {**DEFAULTS, **read_dotenv(ROOT / ".env"), **os.environ}
    # The compose file's addresses mean nothing here: point at the local servers.
    for key, local in (("AMQP_URL", DEFAULTS["AMQP_URL"]), ("BINGX_BASE_URL", DEFAULTS["BINGX_BASE_URL"])):
        if "rabbitmq:" in env.get(key, "") or "bingx-sim:" in env.get(key, ""):
            env[key] = local
    RUN_DIR.mkdir(exist_ok=True)
    processes: list[tuple[str, subprocess.Popen]] = []
    if "MONGO_URI" not in os.environ:
        env["MONGO_URI"] = "mongodb://127.0.0.1:27017/?retryWrites=false"
        if not port_open(27017):
            binary = shutil.which("secantusd-py", path=str(Path(sys.executable).parent)) or "secantusd-py"
            data = RUN_DIR / "mongo-data"
            data.mkdir(exist_ok=True)
            processes.append(("mongodb", subprocess.Popen(
                [binary, "--host", "127.0.0.1", "--port", "27017", "--storage-path", str(data), "--log-level", "WARNING"]
            )))
            deadline = time.monotonic() + 30
            while not port_open(27017) and time.monotonic() < deadline:
                time.sleep(0.1)
    for name in SERVICES:
        processes.append((name, subprocess.Popen([sys.executable, "-m", f"services.{name}"], env=env, cwd=ROOT)))
        if name == "bingx_sim":
            deadline = time.monotonic() + 15
            while not port_open(int(env.get("BINGX_SIM_PORT", "8090"))) and time.monotonic() < deadline:
                time.sleep(0.1)
    token = env["WEBHOOK_TOKENS"].split(",")[0].split(":", 1)[1]
    print(
        "\nstack running (Ctrl-C stops it). Send a first alert:\n"
        f"  curl -s -X POST http://127.0.0.1:{env.get('INGRESS_PORT', '8080')}/webhook/tradingview "
        f"-d '{{\"token\": \"{token}\", \"symbol\": \"BTCUSDT.P\", \"action\": \"buy\", \"qty\": 0.01}}'\n",
        flush=True,
    )
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping:
            for name, process in processes:
                if process.poll() is not None:
                    print(f"{name} exited with {process.returncode}; stopping the stack", file=sys.stderr)
                    stopping = True
            time.sleep(0.5)
    finally:
        for _, process in reversed(processes):
            if process.poll() is None:
                process.terminate()
        for _, process in reversed(processes):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
