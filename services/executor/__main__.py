"""Run the executor: `python -m services.executor`."""

from __future__ import annotations

from services.executor.app import create_app
from services.executor.bootstrap import build
from services.executor.consumers import consuming
from services.executor.settings import ExecutorSettings
from shared.observability import setup_observability
from shared.runtime import run, serve
from shared.settings import load_settings


async def main() -> None:
    settings = load_settings(ExecutorSettings, "executor")
    setup_observability("executor", settings)
    async with build(settings) as executor, consuming(executor) as consumer:
        await serve(create_app(executor, consumer), settings.bind_host, settings.executor_port, "executor",
                    idle_timeout_s=settings.http_idle_timeout_s, max_connections=settings.http_max_connections)


if __name__ == "__main__":
    run(main)
