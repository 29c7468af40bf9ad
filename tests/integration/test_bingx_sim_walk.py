"""The random walk through the admin API: seeded steps move the prices ccxt sees and fire what they cross."""

from __future__ import annotations

from decimal import Decimal as D
from typing import Any

import aiohttp

from services.bingx_sim.walk import walk_step
from tests.bingx_sim_support import make_ccxt, running_sim

BTC = "BTC/USDT:USDT"
START = {"BTC-USDT": D("60000"), "ETH-USDT": D("3000"), "SOL-USDT": D("150")}


async def walk(base_url: str, steps: int = 1) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base_url}/_sim/walk", json={"steps": steps}) as response:
            assert response.status == 200
            return await response.json()


async def test_a_walk_step_fills_a_resting_limit_that_real_ccxt_then_sees() -> None:
    moved = walk_step(START, 11, 0, D("0.01"))["BTC-USDT"].quantize(D("0.1"))
    level = float(((moved + D("60000")) / 2).quantize(D("0.1")))
    side = "buy" if moved < D("60000") else "sell"
    async with running_sim(seed=11, walk_volatility="0.01") as base_url:
        exchange = make_ccxt(base_url, "k", "s", sandbox=True)
        try:
            placed = await exchange.create_order(BTC, "limit", side, 0.01, level)
            answer = await walk(base_url)
            assert answer["steps"] == 1 and answer["seed"] == 11
            assert D(answer["prices"]["BTC-USDT"]) == moved
            assert (await exchange.fetch_ticker(BTC))["last"] == float(moved)
            filled = await exchange.fetch_order(placed["id"], BTC)
            assert (filled["status"], filled["average"]) == ("closed", level)
        finally:
            await exchange.close()


async def test_two_simulators_with_one_seed_walk_the_same_path() -> None:
    paths = []
    for _ in range(2):
        async with running_sim(seed=3, walk_volatility="0.005") as base_url:
            paths.append([(await walk(base_url))["prices"] for _ in range(5)])
    assert paths[0] == paths[1]
    assert len({p["BTC-USDT"] for p in paths[0]}) > 1


async def test_a_bad_step_count_is_refused() -> None:
    async with running_sim() as base_url, aiohttp.ClientSession() as session:
        async with session.post(f"{base_url}/_sim/walk", json={"steps": 0}) as response:
            assert response.status == 400
        async with session.get(f"{base_url}/_sim/walk") as response:
            assert (await response.json())["steps"] == 0
