"""The broker's limits fit the safety rules."""

from __future__ import annotations

from services.ingress.domain import MAX_LAG_CAP_S
from shared.messaging import EXECUTOR_SHARDS, RETRY_JITTER, retry_delay


def test_a_signal_retried_until_it_expires_is_never_dead_lettered_first():
    """Retries of a signal end when its max lag makes it expire, recorded; the delivery limit must come later."""
    for shard in EXECUTOR_SHARDS:
        limit = shard.arguments()["x-delivery-limit"]
        shortest_wait = sum(retry_delay(n) * (1 - RETRY_JITTER) for n in range(1, limit))
        assert shortest_wait > MAX_LAG_CAP_S * 2, (shard.name, limit, shortest_wait)
