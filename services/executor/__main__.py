"""Run the executor: `python -m services.executor`."""

from __future__ import annotations

from aiohttp import web

from services.executor.app import create_app
from services.executor.bootstrap import build
from services.executor.consumers import consuming
from services.executor.settings import ExecutorSettings
from shared.observability import setup_logging, setup_tracing
from shared.runtime import run, run_until_stopped
from shared.settings import load_settings


async def main() -> None:
    settings = load_settings(ExecutorSettings, "executor")
    setup_logging("executor", settings.log_level, secrets=settings.secret_values())
    setup_tracing("executor", settings.otel_exporter_otlp_endpoint)
    async with build(settings) as executor, consuming(executor) as consumer:
        runner = web.AppRunner(create_app(executor, consumer), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, settings.bind_host, settings.executor_port).start()
        try:
            await run_until_stopped("executor")
        finally:
            await runner.cleanup()


if __name__ == "__main__":
    run(main)
