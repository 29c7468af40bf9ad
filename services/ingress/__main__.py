"""Run the ingress: `python -m services.ingress`."""

from __future__ import annotations

from services.ingress.app import create_app
from services.ingress.bootstrap import build
from services.ingress.settings import IngressSettings
from shared.observability import setup_observability
from shared.runtime import run, serve
from shared.settings import load_settings


async def main() -> None:
    settings = load_settings(IngressSettings, "ingress")
    setup_observability("ingress", settings)
    async with build(settings) as ingress:
        await serve(create_app(ingress), settings.bind_host, settings.ingress_port, "ingress",
                    idle_timeout_s=settings.http_idle_timeout_s, max_connections=settings.http_max_connections)


if __name__ == "__main__":
    run(main)
