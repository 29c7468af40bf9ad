"""Run the notifier: `python -m services.notifier`."""

from __future__ import annotations

from aiohttp import web

from services.notifier.app import create_app
from services.notifier.bootstrap import build
from services.notifier.consumers import consuming
from services.notifier.settings import NotifierSettings
from shared.observability import setup_logging, setup_tracing
from shared.runtime import run, run_until_stopped
from shared.settings import load_settings


async def main() -> None:
    settings = load_settings(NotifierSettings, "notifier")
    setup_logging("notifier", settings.log_level, secrets=settings.secret_values())
    setup_tracing("notifier", settings.otel_exporter_otlp_endpoint)
    async with build(settings) as notifier, consuming(notifier) as consumer:
        runner = web.AppRunner(create_app(notifier, consumer), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, settings.bind_host, settings.notifier_port).start()
        try:
            await run_until_stopped("notifier")
        finally:
            await runner.cleanup()


if __name__ == "__main__":
    run(main)
