"""Run the notifier: `python -m services.notifier`."""

from __future__ import annotations

from services.notifier.app import create_app
from services.notifier.bootstrap import build
from services.notifier.consumers import consuming
from services.notifier.settings import NotifierSettings
from shared.observability import setup_observability
from shared.runtime import run, serve
from shared.settings import load_settings


async def main() -> None:
    settings = load_settings(NotifierSettings, "notifier")
    setup_observability("notifier", settings)
    async with build(settings) as notifier, consuming(notifier) as consumer:
        await serve(create_app(notifier, consumer), settings.bind_host, settings.notifier_port, "notifier",
                    idle_timeout_s=settings.http_idle_timeout_s, max_connections=settings.http_max_connections)


if __name__ == "__main__":
    run(main)
