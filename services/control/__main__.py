"""Run the control service: `python -m services.control`."""

from __future__ import annotations

from services.control.app import create_app
from services.control.bootstrap import build
from services.control.settings import ControlSettings
from shared.observability import setup_observability
from shared.runtime import run, serve
from shared.settings import load_settings


async def main() -> None:
    settings = load_settings(ControlSettings, "control")
    setup_observability("control", settings)
    async with build(settings) as control:
        await serve(create_app(control), settings.bind_host, settings.control_port, "control",
                    idle_timeout_s=settings.http_idle_timeout_s, max_connections=settings.http_max_connections)


if __name__ == "__main__":
    run(main)
