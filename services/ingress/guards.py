"""Pure guards of the ingress: who may send (source addresses, token scopes) and how often (rate limits)."""

from __future__ import annotations

import functools
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# TradingView's webhook senders (tradingview.md).
TRADINGVIEW_SOURCES = ("52.89.214.238", "34.212.75.30", "54.218.53.128", "52.32.178.7")


def parse_networks(raw: object, *, presets: dict[str, Iterable[str]] | None = None) -> tuple[Network, ...]:
    """`1.2.3.4, 10.0.0.0/8, tradingview` into networks; a preset name stands for its addresses."""
    if isinstance(raw, (tuple, list)):
        return tuple(raw)
    if raw is None or raw == "":
        return ()
    if not isinstance(raw, str):
        raise ValueError("must be a comma-separated list of addresses or networks")
    networks: list[Network] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        if presets and item.lower() in presets:
            networks.extend(ipaddress.ip_network(a) for a in presets[item.lower()])
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item[:40]!r} is not an IP address or network") from None
    return tuple(networks)


# The same few senders, over and over: parsing an address costs more than the rest of the guard.
@functools.lru_cache(maxsize=4096)
def _address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _within(address, networks: tuple[Network, ...]) -> bool:
    return any(address in network for network in networks)


def client_address(peer: str | None, forwarded_for: str | None, trusted_proxies: tuple[Network, ...]) -> str | None:
    """The sender's address: the socket peer, or, only when the peer is a trusted proxy, the nearest untrusted
    address of X-Forwarded-For (read right to left: the left part is whatever the client chose to write)."""
    address = _address(peer)
    if address is None or not forwarded_for or not _within(address, trusted_proxies):
        return str(address) if address else peer
    for hop in reversed(forwarded_for.split(",")):
        hop_address = _address(hop)
        if hop_address is None:
            return None  # a malformed chain names no one we can trust
        if not _within(hop_address, trusted_proxies):
            return str(hop_address)
    return str(address)


def source_allowed(client: str | None, allowed: tuple[Network, ...]) -> bool:
    if not allowed:
        return True
    address = _address(client)
    return address is not None and _within(address, allowed)


MIN_BURST = 5.0


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per key: `rate` requests per second, with a burst of at least `MIN_BURST` (a close and an open
    fired a millisecond apart must both pass: TradingView never resends a 429).

    At most `max_keys` buckets are kept (least recently used dropped), so a flood of new addresses cannot
    exhaust memory.
    """

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = max(MIN_BURST, rate)
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def allow(self, key: str) -> bool:
        if not self.enabled:
            return True
        now = self._clock()
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = _Bucket(tokens=self.burst, updated=now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        allowed = bucket.tokens >= 1.0
        if allowed:
            bucket.tokens -= 1.0
        self._buckets[key] = bucket
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return allowed


def parse_scopes(raw: object) -> dict[str, tuple[str, ...]]:
    """`main=BTCUSDT.P|ETHUSDT.P,bot2=SOLUSDT` into {name: (values...)}."""
    if isinstance(raw, dict):
        return raw
    if raw is None or raw == "":
        return {}
    if not isinstance(raw, str):
        raise ValueError("must look like name=A|B,other=C")
    scopes: dict[str, tuple[str, ...]] = {}
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        name, sep, values = item.partition("=")
        allowed = tuple(v.strip() for v in values.split("|") if v.strip())
        if not sep or not name.strip() or not allowed:
            raise ValueError(f"{item[:40]!r} is not of the form name=A|B")
        scopes[name.strip()] = allowed
    return scopes
