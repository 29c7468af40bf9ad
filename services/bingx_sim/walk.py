"""The optional seeded random walk of prices: a pure step function, and the timer that applies it."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal

log = logging.getLogger("bingx_sim")

# A single step never moves a price by more than half, whatever the volatility, so a price stays positive.
MAX_STEP_MOVE = 0.5


def walk_step(prices: Mapping[str, Decimal], seed: int, step: int, volatility: Decimal) -> dict[str, Decimal]:
    """The prices after step number `step` of the walk of `seed`: each moved by a Gaussian relative change.

    Pure: the result depends only on the arguments (symbols are visited in sorted order, and the generator is
    seeded from the seed and the step number), so two simulators with one seed follow one path.
    """
    rng = random.Random(f"{seed}:{step}")
    sigma = float(volatility)
    moved: dict[str, Decimal] = {}
    for symbol in sorted(prices):
        change = max(-MAX_STEP_MOVE, min(MAX_STEP_MOVE, rng.gauss(0.0, sigma)))
        moved[symbol] = prices[symbol] * (1 + Decimal(repr(round(change, 12))))
    return moved


async def run_walk(step: Callable[[], Awaitable[object]], interval_s: float,
                   sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
    """Call `step` every `interval_s` seconds until cancelled; a failed step is logged and the walk goes on."""
    while True:
        await sleep(interval_s)
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("random walk step failed")
