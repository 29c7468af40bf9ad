"""Injected faults and BingX's rate limit, seen through real ccxt as the exception classes of reference §8."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import ccxt.async_support as ccxt
import pytest

from tests.bingx_sim_support import make_ccxt, running_sim

BTC = "BTC/USDT:USDT"
BALANCE = "/openApi/swap/v3/user/balance"
OPEN_ORDERS = "/openApi/swap/v2/trade/openOrders"


class Clock:
    """The simulator's clock and ccxt's timestamps together, so a test can move time without waiting."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def bind(self, exchange: ccxt.bingx) -> None:
        exchange.nonce = lambda: int(self.now * 1000)


@pytest.fixture
async def clock() -> Clock:
    return Clock()


@pytest.fixture(params=[True, False], ids=["sandbox", "live"])
async def sim(request: pytest.FixtureRequest, clock: Clock) -> AsyncIterator[tuple[str, ccxt.bingx]]:
    async with running_sim(clock=clock) as base_url:
        exchange = make_ccxt(base_url, "k", "s", sandbox=request.param)
        clock.bind(exchange)
        try:
            await exchange.load_markets()
            yield base_url, exchange
        finally:
            await exchange.close()


async def admin(base_url: str, method: str, path: str, body: object = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, f"{base_url}{path}", json=body) as response:
            return response.status, await response.json()


async def inject(base_url: str, **fault: object) -> dict:
    status, body = await admin(base_url, "POST", "/_sim/faults", fault)
    assert status == 200, body
    return body["fault"]


async def test_an_error_code_hits_the_next_n_requests_of_its_path_only(sim: tuple[str, ccxt.bingx]) -> None:
    base_url, exchange = sim
    await inject(base_url, kind="error", code=100500, count=2, path=BALANCE)
    await exchange.fetch_positions()  # another path: untouched
    for _ in range(2):
        with pytest.raises(ccxt.OperationFailed) as caught:
            await exchange.fetch_balance()
        assert not isinstance(caught.value, ccxt.NetworkError)  # a JSON body: ccxt maps the code, not the status
    assert (await exchange.fetch_balance())["USDT"]["free"] == 10000
    assert (await admin(base_url, "GET", "/_sim/faults"))[1]["faults"] == []


async def test_bingx_busy_and_rate_limit_codes_are_operation_failed(sim: tuple[str, ccxt.bingx]) -> None:
    base_url, exchange = sim
    await inject(base_url, kind="error", code=100410)
    with pytest.raises(ccxt.OperationFailed, match="100410"):
        await exchange.create_order(BTC, "market", "buy", 0.01)
    await inject(base_url, kind="error", code=101204, msg="Insufficient margin")
    with pytest.raises(ccxt.InsufficientFunds):
        await exchange.create_order(BTC, "market", "buy", 0.01)
    assert (await exchange.create_order(BTC, "market", "buy", 0.01))["status"] == "closed"


@pytest.mark.parametrize(("status", "body", "expected"), [
    (503, "Service Unavailable", ccxt.ExchangeNotAvailable),
    (429, "Too Many Requests", ccxt.RateLimitExceeded),
    (504, "Gateway Timeout", ccxt.RequestTimeout),
    (418, "I'm a teapot", ccxt.DDoSProtection),
])
async def test_an_http_status_with_a_text_body_maps_by_status(sim: tuple[str, ccxt.bingx], status: int, body: str,
                                                             expected: type[Exception]) -> None:
    base_url, exchange = sim
    await inject(base_url, kind="http", status=status, body=body)
    with pytest.raises(expected):
        await exchange.fetch_balance()
    await exchange.fetch_balance()


async def test_latency_past_the_client_timeout_is_a_request_timeout(sim: tuple[str, ccxt.bingx]) -> None:
    base_url, exchange = sim
    await inject(base_url, kind="latency", ms=400, path=BALANCE)
    exchange.timeout = 100
    with pytest.raises(ccxt.RequestTimeout):
        await exchange.fetch_balance()
    exchange.timeout = 10000
    await inject(base_url, kind="latency", ms=60)
    started = asyncio.get_running_loop().time()
    await exchange.fetch_balance()  # within the timeout: late, but answered
    assert asyncio.get_running_loop().time() - started >= 0.06


async def test_a_dropped_connection_is_a_network_error(sim: tuple[str, ccxt.bingx]) -> None:
    base_url, exchange = sim
    # Two, because an HTTP client may retry once on a kept-alive connection the server closed.
    await inject(base_url, kind="drop", count=2, path=BALANCE)
    with pytest.raises(ccxt.NetworkError):
        await exchange.fetch_balance()
    await admin(base_url, "DELETE", "/_sim/faults")
    assert (await exchange.fetch_balance())["USDT"]["free"] == 10000


async def test_a_time_window_fault_hits_every_request_until_it_ends(sim: tuple[str, ccxt.bingx], clock: Clock) -> None:
    base_url, exchange = sim
    fault = await inject(base_url, kind="error", code=100500, seconds=5)
    assert fault["until_ms"] == int(clock.now * 1000) + 5000 and fault["remaining"] is None
    for _ in range(3):
        with pytest.raises(ccxt.OperationFailed):
            await exchange.fetch_positions()
    clock.now += 5
    assert await exchange.fetch_positions() == []
    assert (await admin(base_url, "GET", "/_sim/faults"))[1]["faults"] == []


async def test_faults_are_listed_cleared_and_validated(sim: tuple[str, ccxt.bingx]) -> None:
    base_url, exchange = sim
    await inject(base_url, kind="error", code=100500, count=3)
    await inject(base_url, kind="latency", ms=5, path="/openApi/swap/v2/trade/")
    status, listed = await admin(base_url, "GET", "/_sim/faults")
    assert [(f["kind"], f["remaining"]) for f in listed["faults"]] == [("error", 3), ("latency", 1)]
    assert listed["rate_limit"] == {"enabled": False, "per_second": 5}
    assert (await admin(base_url, "DELETE", "/_sim/faults"))[1]["faults"] == []
    assert (await exchange.fetch_balance())["USDT"]["free"] == 10000
    for bad in ({"kind": "nope"}, {"kind": "latency"}, {"kind": "error", "count": 0},
                {"kind": "error", "count": 1, "seconds": 1}, {"kind": "http", "status": 200}):
        assert (await admin(base_url, "POST", "/_sim/faults", bad))[0] == 400


async def test_the_rate_limit_is_off_by_default_and_429s_with_100410_when_on(sim: tuple[str, ccxt.bingx],
                                                                               clock: Clock) -> None:
    base_url, exchange = sim
    for _ in range(8):
        await exchange.fetch_open_orders(BTC)
    status, view = await admin(base_url, "POST", "/_sim/rate_limit", {"enabled": True})
    assert (status, view) == (200, {"enabled": True, "per_second": 5})
    for _ in range(5):
        await exchange.fetch_open_orders(BTC)
    with pytest.raises(ccxt.OperationFailed, match="100410"):
        await exchange.fetch_open_orders(BTC)
    await exchange.fetch_ticker(BTC)  # market data is not in the per-account order group
    await exchange.fetch_balance()  # each endpoint has its own 5/s
    with pytest.raises(ccxt.OperationFailed):
        await exchange.fetch_open_orders()  # the same endpoint without a symbol: still throttled
    clock.now += 1
    for _ in range(5):
        await exchange.fetch_open_orders(BTC)  # a second later the window has moved on
    await admin(base_url, "POST", "/_sim/rate_limit", {"enabled": False})
    for _ in range(8):
        await exchange.fetch_open_orders(BTC)


async def rate_limit_refusal(call: object) -> str:
    """What ccxt raised for a rate-limit answer: exactly OperationFailed, as §8 says for 100410 even with a 429."""
    with pytest.raises(ccxt.OperationFailed) as raised:
        await call  # type: ignore[misc]
    assert type(raised.value) is ccxt.OperationFailed
    assert '"code":100410' in str(raised.value).replace(" ", ""), raised.value
    return str(raised.value)


async def test_a_rate_limit_fault_refuses_the_next_n_requests_as_the_rate_limiter_does(
        sim: tuple[str, ccxt.bingx], clock: Clock) -> None:
    base_url, exchange = sim
    # The limiter's own refusal, to compare the fault's answer with.
    await admin(base_url, "POST", "/_sim/rate_limit", {"enabled": True, "per_second": 1})
    await exchange.fetch_open_orders(BTC)
    limiter_said = await rate_limit_refusal(exchange.fetch_open_orders(BTC))
    await admin(base_url, "POST", "/_sim/rate_limit", {"enabled": False})

    fault = await inject(base_url, kind="rate_limit", count=3, path=OPEN_ORDERS)
    assert (fault["status"], fault["code"], fault["remaining"]) == (429, 100410, 3)
    await exchange.fetch_balance()  # another path: untouched
    assert await rate_limit_refusal(exchange.fetch_open_orders(BTC)) == limiter_said
    await rate_limit_refusal(exchange.fetch_open_orders())
    async with aiohttp.ClientSession() as session:  # the third, unsigned, to see the status ccxt does not show
        async with session.get(f"{base_url}{OPEN_ORDERS}") as response:
            assert response.status == 429
            assert await response.json() == {"code": 100410, "msg": fault["msg"], "timestamp": int(clock.now * 1000)}
    assert await exchange.fetch_open_orders(BTC) == []
    assert (await admin(base_url, "GET", "/_sim/faults"))[1]["faults"] == []


async def test_a_rate_limit_fault_for_a_time_window_refuses_everything_until_it_ends(
        sim: tuple[str, ccxt.bingx], clock: Clock) -> None:
    base_url, exchange = sim
    fault = await inject(base_url, kind="rate_limit", seconds=2)
    assert fault["until_ms"] == int(clock.now * 1000) + 2000 and fault["remaining"] is None
    for _ in range(3):
        await rate_limit_refusal(exchange.create_order(BTC, "market", "buy", 0.01))
        await rate_limit_refusal(exchange.fetch_balance())
    clock.now = (fault["until_ms"] - 0.5) / 1000  # half a millisecond before the end, clear of float rounding
    await rate_limit_refusal(exchange.fetch_positions())
    clock.now = (fault["until_ms"] + 0.5) / 1000
    assert (await exchange.create_order(BTC, "market", "buy", 0.01))["status"] == "closed"
    assert [p["contracts"] for p in await exchange.fetch_positions([BTC])] == [0.01]  # the refused ones placed nothing


async def test_the_rate_limit_can_be_enabled_by_setting(clock: Clock) -> None:
    async with running_sim(clock=clock, rate_limit=True) as base_url:
        exchange = make_ccxt(base_url, "k", "s", sandbox=True)
        clock.bind(exchange)
        try:
            for _ in range(5):
                await exchange.fetch_positions()
            with pytest.raises(ccxt.OperationFailed):
                await exchange.fetch_positions()
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{base_url}/_sim/rate_limit") as response:
                    assert await response.json() == {"enabled": True, "per_second": 5}
        finally:
            await exchange.close()
