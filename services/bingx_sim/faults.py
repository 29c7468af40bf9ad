"""Injected faults and BingX's per-account rate limit: what the simulator answers instead, to test failure paths."""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

# rate_limit answers as RateLimiter does on a breach (HTTP 429, code 100410), for a count or a window of requests.
FAULT_KINDS = frozenset({"error", "http", "latency", "drop", "rate_limit", "late_answer"})
# The messages BingX sends with these codes (ccxt maps by exact message first, then by code).
DEFAULT_MESSAGES = {
    100410: "The current system is busy, please try again later",
    100500: "The current system is busy, please try again later",
    110500: "The current system is busy, please try again later",
}
RATE_LIMIT_CODE = 100410
RATE_LIMIT_MSG = "Rate limit exceeded: at most 5 requests per second per account on this endpoint"
# BingX's 5/s-per-UID group (reference §9): orders, positions, balance, fills, leverage, closeAllPositions.
RATE_LIMITED_PATHS = frozenset({
    "/openApi/swap/v2/trade/order", "/openApi/swap/v2/trade/order/test", "/openApi/swap/v2/trade/openOrders",
    "/openApi/swap/v2/trade/allOrders", "/openApi/swap/v2/trade/allOpenOrders", "/openApi/swap/v2/trade/allFillOrders",
    "/openApi/swap/v2/trade/leverage", "/openApi/swap/v2/trade/closeAllPositions",
    "/openApi/swap/v1/trade/closePosition",
    "/openApi/swap/v2/user/positions", "/openApi/swap/v3/user/balance",
})


@dataclass
class Fault:
    """One injected fault; it applies to the next `remaining` matching requests, or to all of them until `until_ms`."""

    id: int
    kind: str
    path: str | None = None  # only requests whose path starts with this
    method: str | None = None
    remaining: int | None = None
    until_ms: int | None = None
    code: int = 100500
    msg: str = DEFAULT_MESSAGES[100500]
    status: int = 503
    body: str = "Service Unavailable"
    content_type: str = "text/plain"
    latency_ms: int = 0

    def matches(self, method: str, path: str, now_ms: int) -> bool:
        if self.until_ms is not None and now_ms >= self.until_ms:
            return False
        if self.remaining is not None and self.remaining <= 0:
            return False
        return (self.path is None or path.startswith(self.path)) and (
            self.method is None or self.method == method.upper())

    def view(self) -> dict[str, Any]:
        return asdict(self)


def _int(body: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key} must be an integer from {low} to {high}")
    return value


def parse_fault(body: dict[str, Any], fault_id: int, now_ms: int) -> Fault:
    """A fault from the admin API's JSON: {"kind": ..., "count": N | "seconds": S, "path": ..., "method": ...}.

    Kinds: "error" (BingX's JSON envelope with `code` and `msg`), "http" (`status` with a non-JSON `body`),
    "latency" (`ms` before answering), "drop" (the connection closed without an answer), "rate_limit" (HTTP 429
    with code 100410, exactly what the rate limiter answers on a breach, whether or not the limiter is on), and
    "late_answer" (the request is carried out at once, its answer sent `ms` later: an order that exists at the venue
    while the client still waits, times out or dies).
    """
    kind = body.get("kind")
    if kind not in FAULT_KINDS:
        raise ValueError(f"kind must be one of {', '.join(sorted(FAULT_KINDS))}")
    count = _int(body, "count", 1, 1_000_000)
    seconds = body.get("seconds")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0):
        raise ValueError("seconds must be a positive number")
    if count is not None and seconds is not None:
        raise ValueError("give count or seconds, not both")
    for key in ("path", "method", "msg", "body", "content_type"):
        if key in body and not isinstance(body[key], str):
            raise ValueError(f"{key} must be a string")
    fault = Fault(
        id=fault_id, kind=kind, path=body.get("path") or None,
        method=body["method"].upper() if body.get("method") else None,
        # Without a count or a window a fault hits the next request only.
        remaining=count if count is not None else (None if seconds is not None else 1),
        until_ms=now_ms + int(seconds * 1000) if seconds is not None else None,
    )
    if kind == "error":
        fault.code = _int(body, "code", 1, 10**9) or 100500
        fault.msg = body.get("msg") or DEFAULT_MESSAGES.get(fault.code, "simulated fault")
    elif kind == "http":
        fault.status = _int(body, "status", 400, 599) or 503
        fault.body = body.get("body", "Service Unavailable" if fault.status != 429 else "Too Many Requests")
        fault.content_type = body.get("content_type") or "text/plain"
    elif kind == "rate_limit":
        # Shown as what it answers; nothing here is configurable, so it stays identical to the limiter's answer.
        fault.code, fault.msg, fault.status = RATE_LIMIT_CODE, RATE_LIMIT_MSG, 429
    elif kind in ("latency", "late_answer"):
        latency = _int(body, "ms", 1, 600_000)
        if latency is None:
            raise ValueError(f"a {kind} fault needs ms")
        fault.latency_ms = latency
    return fault


class FaultBook:
    """The faults waiting to hit requests."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._next_id = 1

    def add(self, body: dict[str, Any], now_ms: int) -> Fault:
        fault = parse_fault(body, self._next_id, now_ms)
        self._next_id += 1
        self._faults.append(fault)
        return fault

    def clear(self) -> None:
        self._faults.clear()

    def active(self, now_ms: int) -> list[Fault]:
        self._faults = [f for f in self._faults if (f.until_ms is None or now_ms < f.until_ms)
                        and (f.remaining is None or f.remaining > 0)]
        return list(self._faults)

    def take(self, method: str, path: str, now_ms: int) -> list[Fault]:
        """The faults that hit this request (each used-up count goes down by one), in the order they were added."""
        hit = [f for f in self.active(now_ms) if f.matches(method, path, now_ms)]
        for fault in hit:
            if fault.remaining is not None:
                fault.remaining -= 1
        return hit


class RateLimiter:
    """BingX's per-account limit on the order endpoints: at most `per_second` requests in any 1000 ms."""

    def __init__(self, enabled: bool = False, per_second: int = 5) -> None:
        self.enabled = enabled
        self.per_second = per_second
        self._seen: dict[tuple[str, str], deque[int]] = {}

    def configure(self, enabled: bool, per_second: int | None = None) -> None:
        self.enabled = enabled
        if per_second is not None:
            self.per_second = per_second
        self._seen.clear()

    def allow(self, account: str, path: str, now_ms: int) -> bool:
        if not self.enabled or path not in RATE_LIMITED_PATHS:
            return True
        seen = self._seen.setdefault((account, path), deque())
        while seen and seen[0] <= now_ms - 1000:
            seen.popleft()
        if len(seen) >= self.per_second:
            return False  # a refused request does not count, as with a token bucket
        seen.append(now_ms)
        return True

    def view(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "per_second": self.per_second}
