"""The fault book and the rate limiter on their own, with time passed in explicitly."""

from __future__ import annotations

import pytest

from services.bingx_sim.faults import RATE_LIMIT_MSG, FaultBook, RateLimiter

T = 1_700_000_000_000
ORDER = "/openApi/swap/v2/trade/order"


def test_a_counted_fault_hits_only_matching_requests_and_runs_out() -> None:
    book = FaultBook()
    book.add({"kind": "error", "code": 100410, "count": 2, "path": ORDER, "method": "post"}, T)
    assert book.take("GET", ORDER, T) == []
    assert book.take("POST", "/openApi/swap/v3/user/balance", T) == []
    [hit] = book.take("POST", ORDER, T)
    assert (hit.code, hit.msg, hit.remaining) == (100410, "The current system is busy, please try again later", 1)
    assert len(book.take("POST", ORDER, T)) == 1
    assert book.take("POST", ORDER, T) == [] and book.active(T) == []


def test_a_window_fault_ends_on_time_and_a_fault_without_either_hits_once() -> None:
    book = FaultBook()
    book.add({"kind": "http", "status": 503, "seconds": 2}, T)
    book.add({"kind": "latency", "ms": 50}, T)
    assert [f.kind for f in book.take("GET", ORDER, T)] == ["http", "latency"]
    assert [f.kind for f in book.take("GET", ORDER, T + 1999)] == ["http"]
    assert book.take("GET", ORDER, T + 2000) == []
    with pytest.raises(ValueError):
        book.add({"kind": "drop", "seconds": -1}, T)


def test_a_rate_limit_fault_answers_429_with_100410_for_a_count_or_a_window() -> None:
    book = FaultBook()
    counted = book.add({"kind": "rate_limit", "count": 2, "path": ORDER}, T)
    assert (counted.status, counted.code, counted.msg) == (429, 100410, RATE_LIMIT_MSG)
    assert [len(book.take("POST", ORDER, T)) for _ in range(3)] == [1, 1, 0]
    book.add({"kind": "rate_limit", "seconds": 1.5}, T)
    assert [f.kind for f in book.take("GET", "/openApi/swap/v3/user/balance", T + 1499)] == ["rate_limit"]
    assert book.take("GET", "/openApi/swap/v3/user/balance", T + 1500) == []


def test_the_rate_limit_is_five_per_second_per_account_and_endpoint_when_enabled() -> None:
    limiter = RateLimiter()
    assert all(limiter.allow("a", ORDER, T) for _ in range(20))  # off by default
    limiter.configure(True)
    assert [limiter.allow("a", ORDER, T + i) for i in range(6)] == [True] * 5 + [False]
    assert limiter.allow("b", ORDER, T) and limiter.allow("a", "/openApi/swap/v3/user/balance", T)
    assert limiter.allow("a", "/openApi/swap/v2/quote/ticker", T)  # market data is not in the group
    assert not limiter.allow("a", ORDER, T + 999)
    assert limiter.allow("a", ORDER, T + 1000)  # the first request left the window
