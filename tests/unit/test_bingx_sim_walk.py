"""The seeded random walk: a pure, deterministic step that moves every price and runs the triggers; a timer loop."""

from __future__ import annotations

import asyncio
from decimal import Decimal as D

import pytest
from pydantic import SecretStr

from services.bingx_sim.engine import Engine, OrderRequest
from services.bingx_sim.settings import BingxSimSettings
from services.bingx_sim.walk import run_walk, walk_step

NOW = 1_700_000_000_000
PRICES = {"BTC-USDT": D("60000"), "ETH-USDT": D("3000"), "SOL-USDT": D("150")}


def path(seed: int, steps: int, volatility: str = "0.01") -> list[dict[str, D]]:
    engine = Engine(D("10000"), PRICES, now=NOW)
    seen = []
    for step in range(steps):
        engine.set_prices(walk_step(engine.prices, seed, step, D(volatility)), NOW + step)
        seen.append(engine.prices)
    return seen


def test_two_engines_with_one_seed_follow_one_path_and_another_seed_another() -> None:
    first, second = path(42, 50), path(42, 50)
    assert first == second
    assert path(43, 50) != first
    # Every price moved at some point, and each stayed positive.
    for symbol in PRICES:
        assert len({prices[symbol] for prices in first}) > 1
        assert all(prices[symbol] > 0 for prices in first)


def test_the_step_is_pure() -> None:
    before = dict(PRICES)
    assert walk_step(PRICES, 5, 3, D("0.01")) == walk_step(PRICES, 5, 3, D("0.01"))
    assert PRICES == before
    assert walk_step(PRICES, 5, 3, D("0.01")) != walk_step(PRICES, 5, 4, D("0.01"))


def test_a_step_never_moves_a_price_by_half_or_more_even_at_the_largest_volatility() -> None:
    for step in range(200):
        for symbol, price in walk_step(PRICES, 1, step, D("0.5")).items():
            assert PRICES[symbol] / 2 <= price <= PRICES[symbol] * D("1.5")


def test_a_walk_step_runs_the_triggers_of_a_price_move() -> None:
    engine = Engine(D("10000"), PRICES, now=NOW)
    moved = walk_step(engine.prices, 7, 0, D("0.01"))["BTC-USDT"]
    assert moved != D("60000")
    # A resting limit halfway between the mark and where the walk will take it.
    level = ((moved + D("60000")) / 2).quantize(D("0.1"))
    side = "BUY" if moved < D("60000") else "SELL"
    resting = engine.place_order(OrderRequest(symbol="BTC-USDT", side=side, type="LIMIT", quantity=D("0.01"),
                                              price=level), NOW)
    assert resting.status == "NEW"
    engine.set_prices(walk_step(engine.prices, 7, 0, D("0.01")), NOW + 1)
    assert (resting.status, resting.avg_price) == ("FILLED", level)


async def test_the_background_loop_only_calls_the_step_on_its_timer() -> None:
    sleeps: list[float] = []
    steps: list[int] = []

    async def fake_sleep(seconds: float) -> None:
        if len(sleeps) == 3:
            raise asyncio.CancelledError
        sleeps.append(seconds)

    async def step() -> None:
        steps.append(len(sleeps))
        if len(steps) == 2:
            raise RuntimeError("a failed step does not stop the walk")

    with pytest.raises(asyncio.CancelledError):
        await run_walk(step, 2.5, sleep=fake_sleep)
    assert sleeps == [2.5, 2.5, 2.5]
    assert steps == [1, 2, 3]  # one step after each sleep, none before the first


def test_the_walk_is_off_by_default_and_validated() -> None:
    settings = BingxSimSettings(bingx_api_key=SecretStr("k"), bingx_api_secret=SecretStr("s"))
    assert settings.bingx_sim_random_walk is False and settings.bingx_sim_seed is None
    assert (settings.bingx_sim_walk_interval_s, settings.bingx_sim_walk_volatility) == (1.0, D("0.001"))
    with pytest.raises(ValueError):
        BingxSimSettings(bingx_api_key=SecretStr("k"), bingx_api_secret=SecretStr("s"), bingx_sim_walk_volatility=D(0))
    with pytest.raises(ValueError):
        BingxSimSettings(bingx_api_key=SecretStr("k"), bingx_api_secret=SecretStr("s"), bingx_sim_walk_interval_s=0)
