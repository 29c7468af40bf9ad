"""Several paper accounts in one simulator (BINGX_SIM_ACCOUNTS_FILE): each its own money, positions and limits."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import aiohttp
import ccxt.async_support as ccxt
import pytest
from pydantic import SecretStr, ValidationError

from services.bingx_sim.settings import BingxSimSettings, parse_accounts
from tests.bingx_sim_support import make_ccxt, running_sim

BTC = "BTC/USDT:USDT"


@pytest.fixture
def accounts_file(tmp_path: Path) -> Path:
    path = tmp_path / "accounts.json"
    path.write_text(json.dumps([
        {"api_key": "alice", "api_secret": "alice-secret", "balance": "500"},
        {"api_key": "bob", "api_secret": "bob-secret", "balance": 2000},
    ]))
    return path


@pytest.fixture
async def three(accounts_file: Path) -> AsyncIterator[tuple[str, dict[str, ccxt.bingx]]]:
    now = [time.time()]
    async with running_sim(clock=lambda: now[0], accounts_file=accounts_file) as base_url:
        clients = {key: make_ccxt(base_url, key, secret, sandbox=True)
                   for key, secret in (("k", "s"), ("alice", "alice-secret"), ("bob", "bob-secret"))}
        for client in clients.values():
            client.nonce = lambda: int(now[0] * 1000)
        try:
            for client in clients.values():
                await client.load_markets()
            yield base_url, clients
        finally:
            for client in clients.values():
                await client.close()


async def admin(base_url: str, method: str, path: str, body: object = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, f"{base_url}{path}", json=body) as response:
            return response.status, await response.json()


async def test_each_account_has_its_own_balance_positions_and_orders(three: tuple[str, dict[str, ccxt.bingx]]) -> None:
    base_url, clients = three
    assert [(await c.fetch_balance())["USDT"]["free"] for c in clients.values()] == [10000, 500, 2000]
    await clients["alice"].create_order(BTC, "market", "buy", 0.01)
    await clients["bob"].create_order(BTC, "limit", "sell", 0.01, 65000)
    assert await clients["k"].fetch_positions() == [] and await clients["k"].fetch_open_orders(BTC) == []
    assert [p["side"] for p in await clients["alice"].fetch_positions()] == ["long"]
    assert await clients["bob"].fetch_positions() == [] and len(await clients["bob"].fetch_open_orders(BTC)) == 1
    await admin(base_url, "POST", "/_sim/prices", {"BTC-USDT": "65000"})  # one market for all: bob's limit fills
    assert [p["side"] for p in await clients["bob"].fetch_positions()] == ["short"]
    [alice] = await clients["alice"].fetch_positions()
    assert alice["unrealizedPnl"] == 50
    status, state = await admin(base_url, "GET", "/_sim/state?account=alice")
    assert status == 200 and state["balances"]["USDT"]["deposits"] == "500" and len(state["positions"]) == 1
    assert state["accounts"] == ["k", "alice", "bob"]
    assert (await admin(base_url, "GET", "/_sim/state?account=nobody"))[0] == 404


async def test_an_account_signs_with_its_own_secret(three: tuple[str, dict[str, ccxt.bingx]]) -> None:
    base_url, _ = three
    mixed = make_ccxt(base_url, "alice", "bob-secret", sandbox=True)
    try:
        with pytest.raises(ccxt.AuthenticationError, match="100001"):
            await mixed.fetch_balance()
    finally:
        await mixed.close()


async def test_resetting_one_account_leaves_the_others(three: tuple[str, dict[str, ccxt.bingx]]) -> None:
    base_url, clients = three
    await admin(base_url, "POST", "/_sim/prices", {"BTC-USDT": "61000"})
    for client in clients.values():
        await client.create_order(BTC, "market", "buy", 0.01)
    status, state = await admin(base_url, "POST", "/_sim/reset", {"account": "bob", "balance": "3000"})
    assert status == 200 and state["positions"] == [] and state["prices"]["BTC-USDT"] == "61000.0"
    assert (await clients["bob"].fetch_balance())["USDT"]["free"] == 3000
    assert len(await clients["alice"].fetch_positions()) == 1 and len(await clients["k"].fetch_positions()) == 1
    assert (await admin(base_url, "POST", "/_sim/reset", {"account": "nobody"}))[0] == 400
    await admin(base_url, "POST", "/_sim/reset")
    assert [await c.fetch_positions() for c in clients.values()] == [[], [], []]


async def test_the_rate_limit_counts_per_account(three: tuple[str, dict[str, ccxt.bingx]]) -> None:
    base_url, clients = three
    await admin(base_url, "POST", "/_sim/rate_limit", {"enabled": True})
    for _ in range(5):
        await clients["alice"].fetch_balance()
    with pytest.raises(ccxt.OperationFailed):
        await clients["alice"].fetch_balance()
    for _ in range(5):
        await clients["bob"].fetch_balance()


def test_the_accounts_file_is_validated(tmp_path: Path) -> None:
    assert parse_accounts('[{"api_key": "a", "api_secret": "b"}]')[0].balance == Decimal("10000")
    assert "sekrit" not in repr(parse_accounts('[{"api_key": "a", "api_secret": "sekrit"}]'))
    for bad in ("{}", "[1]", '[{"api_key": "a"}]', '[{"api_key": "a", "api_secret": "b", "balance": "-1"}]',
                '[{"api_key": "a", "api_secret": "b"}, {"api_key": "a", "api_secret": "c"}]', "not json"):
        with pytest.raises(ValueError):
            parse_accounts(bad)
    path = tmp_path / "accounts.json"
    path.write_text('[{"api_key": "k", "api_secret": "x"}]')
    for file in (path, tmp_path / "missing.json"):
        with pytest.raises(ValidationError):
            BingxSimSettings(bingx_api_key=SecretStr("k"), bingx_api_secret=SecretStr("s"),
                             bingx_sim_accounts_file=file)
