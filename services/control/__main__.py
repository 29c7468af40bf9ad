"""Run the control service: `python -m services.control`."""

from __future__ import annotations

from aiohttp import web

from services.control.app import create_app
from services.control.bootstrap import build
from services.control.settings import ControlSettings
from shared.observability import setup_logging, setup_tracing
from shared.runtime import run, run_until_stopped
from shared.settings import load_settings


async def main() -> None:
    settings = load_settings(ControlSettings, "control")
    setup_logging("control", settings.log_level, secrets=settings.secret_values())
    setup_tracing("control", settings.otel_exporter_otlp_endpoint)
    async with build(settings) as control:
        runner = web.AppRunner(create_app(control), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, settings.bind_host, settings.control_port)
        await site.start()
        try:
            await run_until_stopped("control")
        finally:
            await runner.cleanup()


if __name__ == "__main__":
    run(main)
