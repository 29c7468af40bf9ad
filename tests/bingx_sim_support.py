"""Test helpers for the BingX simulator: run it on a free loopback port, and point a real ccxt client at it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

import ccxt.async_support as ccxt
from aiohttp import web
from pydantic import SecretStr

from services.bingx_sim.app import build_app
from services.bingx_sim.settings import BingxSimSettings
from services.bingx_sim.store import AccountStore

# Every section ccxt's bingx.sign() may build a URL from (reference §1); all must point at the simulator.
CCXT_API_SECTIONS = ("fund", "spot", "swap", "contract", "wallets", "user", "subAccount", "account",
                     "copyTrading", "cswap", "api")


@asynccontextmanager
async def running_sim(
    api_key: str = "k",
    api_secret: str = "s",
    balance: str = "10000",
    prices: Mapping[str, str] | None = None,
    *,
    clock: Callable[[], float] = time.time,
    accounts_file: Path | None = None,
    rate_limit: bool = False,
    store: AccountStore | None = None,
    mongo_uri: str | None = None,
    mongo_db: str = "tvtb",
    seed: int | None = None,
    walk_volatility: str = "0.001",
) -> AsyncIterator[str]:
    """Serve a fresh simulator on 127.0.0.1 (a port the OS picks) and yield its base URL, `http://127.0.0.1:PORT`."""
    settings = BingxSimSettings(
        bingx_api_key=SecretStr(api_key),
        bingx_api_secret=SecretStr(api_secret),
        bingx_sim_balance_usdt=Decimal(balance),
        bingx_sim_prices={**{"BTC-USDT": "60000", "ETH-USDT": "3000", "SOL-USDT": "150"}, **(prices or {})},
        bingx_sim_port=8090,
        bind_host="127.0.0.1",
        log_level="INFO",
        bingx_sim_accounts_file=accounts_file,
        bingx_sim_rate_limit=rate_limit,
        # Explicit, so a MONGO_URI in the test environment never makes a test's simulator persist.
        mongo_uri=SecretStr(mongo_uri) if mongo_uri else None,
        mongo_db=mongo_db,
        # The walk's timer stays off: a test takes steps itself through POST /_sim/walk.
        bingx_sim_seed=seed,
        bingx_sim_walk_volatility=Decimal(walk_volatility),
    )
    runner = web.AppRunner(build_app(settings, clock=clock, store=store), access_log=None)
    await runner.setup()
    try:
        # Port 0 lets the OS pick a free port at bind time, so two runs can never race for one.
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def make_ccxt(base_url: str, api_key: str, api_secret: str, sandbox: bool) -> ccxt.bingx:
    """A real ccxt bingx client configured as reference §1 says; the caller must `await ex.close()`."""
    exchange = ccxt.bingx({
        "apiKey": api_key,
        "secret": api_secret,
        "enableRateLimit": False,
        "options": {"defaultType": "swap"},
        # close() otherwise sleeps 0.25 s for TLS connections to drain; the simulator speaks plain loopback HTTP.
        "timeout_on_exit": 0,
    })
    if sandbox:
        exchange.set_sandbox_mode(True)  # before the override: it replaces urls['api'] wholesale
    sections = set(CCXT_API_SECTIONS) | set(exchange.urls["api"])
    exchange.urls["api"] = {section: f"{base_url}/openApi" for section in sections}
    return exchange


@asynccontextmanager
async def connected_sim(*, sandbox: bool = True, api_key: str = "k", api_secret: str = "s", **sim_options) -> AsyncIterator[tuple[str, ccxt.bingx]]:
    """A running simulator and a ccxt client with its markets loaded: what most simulator tests start from."""
    async with running_sim(api_key=api_key, api_secret=api_secret, **sim_options) as base_url:
        exchange = make_ccxt(base_url, api_key, api_secret, sandbox=sandbox)
        try:
            await exchange.load_markets()
            yield base_url, exchange
        finally:
            await exchange.close()
