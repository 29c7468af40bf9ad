"""A paper account survives a simulator restart: in a store, and in MongoDB when MONGO_URI is set."""

from __future__ import annotations

import logging
import time
from typing import Any

import aiohttp
import ccxt.async_support as ccxt
import pytest

from services.bingx_sim.engine import HISTORY_MS
from services.bingx_sim.store import COLLECTION, MemoryAccountStore, account_id
from tests.bingx_sim_support import make_ccxt, running_sim

BTC = "BTC/USDT:USDT"


async def move(base_url: str, price: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base_url}/_sim/prices", json={"BTC-USDT": price}) as response:
            assert response.status == 200


async def trade(base_url: str) -> dict:
    """Open a long with a stop-loss and a resting limit, move the price; return what ccxt then sees."""
    exchange = make_ccxt(base_url, "k", "s", sandbox=True)
    try:
        await exchange.create_order(BTC, "market", "buy", 0.01, None, {"stopLoss": {"triggerPrice": 55000}})
        await exchange.create_order(BTC, "limit", "buy", 0.01, 58000, {"clientOrderId": "dip"})
        await move(base_url, "61000")
        return await seen(exchange)
    finally:
        await exchange.close()


async def seen(exchange: ccxt.bingx) -> dict:
    return {
        "balance": (await exchange.fetch_balance())["USDT"],
        "positions": [(p["side"], p["contracts"], p["entryPrice"], p["unrealizedPnl"])
                      for p in await exchange.fetch_positions()],
        "open": sorted((o["type"], o["clientOrderId"], o["id"]) for o in await exchange.fetch_open_orders(BTC)),
        "ticker": (await exchange.fetch_ticker(BTC))["last"],
    }


async def after_restart(base_url: str) -> dict:
    exchange = make_ccxt(base_url, "k", "s", sandbox=True)
    try:
        await exchange.load_markets()
        return await seen(exchange)
    finally:
        await exchange.close()


async def test_accounts_survive_a_restart_through_a_store() -> None:
    store = MemoryAccountStore()
    async with running_sim(store=store) as base_url:
        before = await trade(base_url)
    async with running_sim(store=store) as base_url:
        assert await after_restart(base_url) == before
        await move(base_url, "57000")  # the restored limit still rests, and fills
        exchange = make_ccxt(base_url, "k", "s", sandbox=True)
        try:
            assert [p["contracts"] for p in await exchange.fetch_positions()] == [0.02]
            assert [o["info"]["type"] for o in await exchange.fetch_open_orders(BTC)] == ["STOP_MARKET"]
        finally:
            await exchange.close()
    async with running_sim() as base_url:  # no store: a fresh account
        assert (await after_restart(base_url))["positions"] == []


async def test_accounts_survive_a_restart_in_mongodb(mongo_uri: str, mongo_db_name: str, mongo_db) -> None:
    async with running_sim(mongo_uri=mongo_uri, mongo_db=mongo_db_name) as base_url:
        before = await trade(base_url)
    saved = await mongo_db[COLLECTION].find_one({"_id": account_id("k")})
    assert saved is not None and "k" not in str(saved["_id"]) and saved["state"]["positions"]
    async with running_sim(mongo_uri=mongo_uri, mongo_db=mongo_db_name) as base_url:
        assert await after_restart(base_url) == before


async def admin_state(base_url: str) -> dict:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base_url}/_sim/state") as response:
            return await response.json()


async def test_what_is_saved_leaves_out_finished_history_past_the_window(mongo_uri: str, mongo_db_name: str,
                                                                         mongo_db) -> None:
    offset = 0.0  # seconds the simulator's clock (and ccxt's timestamps) run ahead

    def clock() -> float:
        return time.time() + offset

    async with running_sim(mongo_uri=mongo_uri, mongo_db=mongo_db_name, clock=clock) as base_url:
        exchange = make_ccxt(base_url, "k", "s", sandbox=True)
        exchange.nonce = lambda: int(clock() * 1000)
        try:
            await exchange.create_order(BTC, "market", "buy", 0.02, None, {"stopLoss": {"triggerPrice": 55000}})
            await exchange.create_order(BTC, "market", "sell", 0.01)
            await exchange.create_order(BTC, "market", "buy", 0.01)
            await exchange.create_order(BTC, "limit", "buy", 0.01, 58000, {"clientOrderId": "dip"})
            saved = (await mongo_db[COLLECTION].find_one({"_id": account_id("k")}))["state"]
            assert (len(saved["orders"]), len(saved["fills"])) == (5, 3)  # 3 filled, a stop-loss, a resting limit
            offset = HISTORY_MS / 1000 + 60
            await move(base_url, "61000")  # a save, a month and a minute later
            saved = (await mongo_db[COLLECTION].find_one({"_id": account_id("k")}))["state"]
            assert sorted(o["type"] for o in saved["orders"]) == ["LIMIT", "STOP_MARKET"]
            assert saved["fills"] == [] and len(saved["positions"]) == 1
            before = await seen(exchange)
            assert len(before["open"]) == 2 and len(before["positions"]) == 1
        finally:
            await exchange.close()
    async with running_sim(mongo_uri=mongo_uri, mongo_db=mongo_db_name, clock=clock) as base_url:
        exchange = make_ccxt(base_url, "k", "s", sandbox=True)
        exchange.nonce = lambda: int(clock() * 1000)
        try:
            await exchange.load_markets()
            assert await seen(exchange) == before  # what was pruned was history only
        finally:
            await exchange.close()


class RefusingStore(MemoryAccountStore):
    """A store whose writes fail, as MongoDB's do for a document over 16 MB."""

    async def save(self, api_key: str, document: dict[str, Any]) -> None:
        raise RuntimeError("BSON document too large")


async def test_a_failed_save_is_an_error_every_time_and_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="bingx_sim")
    async with running_sim(store=RefusingStore()) as base_url:
        exchange = make_ccxt(base_url, "k", "s", sandbox=True)
        try:
            await exchange.create_order(BTC, "market", "buy", 0.01)  # answered: the simulator keeps serving
            await move(base_url, "61000")
        finally:
            await exchange.close()
        assert (await admin_state(base_url))["save_failures"] == 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "could not save account k..." in r.message]
    assert len(errors) == 2 and "a restart loses it" in errors[0].message
    assert errors[0].exc_info is not None and "too large" in str(errors[0].exc_info[1])
