"""Fixtures shared by the integration tests."""

from __future__ import annotations

import pytest

from tests.bingx_sim_support import make_ccxt, running_sim

# The simulated account's API key; tests that sign their own requests import them from here.
KEY, SECRET = "sim-key", "sim-secret-0123456789"


@pytest.fixture
async def venue():
    """A simulator with a funded account, and a ccxt client signed for it: (base_url, client)."""
    async with running_sim(api_key=KEY, api_secret=SECRET, balance="10000", prices={"BTC-USDT": "60000", "ETH-USDT": "3000"}) as base_url:
        ccxt_client = make_ccxt(base_url, KEY, SECRET, sandbox=False)
        try:
            yield base_url, ccxt_client
        finally:
            await ccxt_client.close()
