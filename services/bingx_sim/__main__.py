"""Run the BingX simulator: read settings, set up logging, serve on BIND_HOST:BINGX_SIM_PORT."""

from __future__ import annotations

import logging

from aiohttp import web

from services.bingx_sim.app import build_app
from services.bingx_sim.settings import BingxSimSettings
from shared.settings import load_settings


def main() -> None:
    settings = load_settings(BingxSimSettings, "bingx_sim")
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    log = logging.getLogger("bingx_sim")
    log.info("serving on %s:%s with %s USDT and prices %s", settings.bind_host, settings.bingx_sim_port,
             settings.bingx_sim_balance_usdt, {s: str(p) for s, p in settings.bingx_sim_prices.items()})
    log.info("%d extra accounts, rate limit %s, accounts kept %s", len(settings.extra_accounts()),
             "on" if settings.bingx_sim_rate_limit else "off",
             f"in MongoDB ({settings.mongo_db})" if settings.mongo_uri else "in memory only")
    web.run_app(build_app(settings), host=settings.bind_host, port=settings.bingx_sim_port, print=None,
                access_log=None)


if __name__ == "__main__":
    main()
