"""Run the ingress: `python -m services.ingress`."""

from __future__ import annotations

from aiohttp import web

from services.ingress.app import create_app
from services.ingress.bootstrap import build
from services.ingress.settings import IngressSettings
from shared.observability import setup_logging, setup_tracing
from shared.runtime import run, run_until_stopped
from shared.settings import load_settings


async def main() -> None:
    settings = load_settings(IngressSettings, "ingress")
    setup_logging("ingress", settings.log_level, secrets=settings.secret_values())
    setup_tracing("ingress", settings.otel_exporter_otlp_endpoint)
    async with build(settings) as ingress:
        runner = web.AppRunner(create_app(ingress), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, settings.bind_host, settings.ingress_port).start()
        try:
            await run_until_stopped("ingress")
        finally:
            await runner.cleanup()


if __name__ == "__main__":
    run(main)
