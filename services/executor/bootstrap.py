"""Builds the executor's dependencies in start order and closes them in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aio_pika.abc import AbstractRobustConnection
from prometheus_client import CollectorRegistry

from services.executor.exchange import BingxExchange, ExchangeUnavailable
from services.executor.flatten import flatten
from services.executor.handlers import (
    Breaker,
    ExecutorDeps,
    ExecutorMetrics,
    cancel_resting_entries,
    follow_resting_orders,
    resume_trips,
    send_pending_trips,
    snapshot_account,
)
from services.executor.risk import RiskLimits
from services.executor.shards import replica_name
from services.executor.settings import ExecutorSettings
from shared import messaging
from shared.bootstrap import open_infrastructure
from shared.contracts import KillSwitchChangedV1, KillSwitchMode
from shared.killswitch import KillSwitchView, stream_reader
from shared.runtime import raise_if_cancelling

log = logging.getLogger(__name__)


@dataclass
class Executor:
    settings: ExecutorSettings
    deps: ExecutorDeps
    connection: AbstractRobustConnection
    registry: CollectorRegistry
    exchange_ready: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: set[asyncio.Task] = field(default_factory=set)
    flattening: set[int] = field(default_factory=set)  # kill-switch versions whose flatten this process has taken up


async def _start_exchange(exchange: BingxExchange, ready: asyncio.Event, refresh_s: float) -> None:
    """Keep trying until the venue answers (until then the executor is not ready and consumes nothing), then reload
    the markets every `refresh_s`; a failed reload keeps the markets already known."""
    delay = 0.5
    while True:
        try:
            await exchange.start()
            ready.set()
            break
        except ExchangeUnavailable as error:
            log.warning("exchange not reachable yet", extra={"error": str(error), "retry_in_s": delay})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
    while True:
        await asyncio.sleep(refresh_s)
        try:
            await exchange.refresh_markets()
        except ExchangeUnavailable as error:
            log.warning("markets not reloaded; the ones known stay in use", extra={"error": str(error)})


def _on_mode(executor: Executor, state: KillSwitchChangedV1 | None) -> None:
    """Entries off or halted: resting limit entries are cancelled at the venue, by every replica (cancelling one
    already gone is harmless), and again by a replica that starts while trading is stopped. A flatten is run by the
    replica that claims it (services/executor/flatten.py)."""
    if state is None or state.mode is KillSwitchMode.RUNNING:
        return
    jobs = [_cancel_resting_entries(executor, state.mode)]
    if state.flatten and state.version not in executor.flattening:
        # Once per version in this process: the state is confirmed again after a reconnect.
        executor.flattening.add(state.version)
        jobs.append(_flatten(executor, state))
    for job in jobs:
        task = asyncio.get_running_loop().create_task(job)
        executor.tasks.add(task)
        task.add_done_callback(executor.tasks.discard)


async def _flatten(executor: Executor, state: KillSwitchChangedV1) -> None:
    """Run the flatten, trying again after a failure (the venue or the database away) while it is still the state."""
    await executor.exchange_ready.wait()
    delay = 0.5
    while True:
        current = executor.deps.view.state
        if current is not None and current.version > state.version:
            return  # superseded: someone decided again
        try:
            await flatten(executor.deps, state)
            return
        except Exception as error:
            raise_if_cancelling()
            log.error("flatten failed; trying again", extra={"version": state.version, "error": f"{type(error).__name__}: {error}"[:300]})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


async def _cancel_resting_entries(executor: Executor, mode: KillSwitchMode) -> None:
    await executor.exchange_ready.wait()
    delay = 0.5
    while True:
        try:
            await cancel_resting_entries(executor.deps, mode)
            return
        except Exception as error:  # the venue or the database away: keep trying while trading stays stopped
            raise_if_cancelling()
            if executor.deps.view.mode is KillSwitchMode.RUNNING:
                return
            log.warning("resting entries not cancelled yet", extra={"error": f"{type(error).__name__}: {error}"[:300]})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


async def _send_pending_trips(executor: Executor, every_s: float = 1.0) -> None:
    while True:
        await asyncio.sleep(every_s)
        try:
            await send_pending_trips(executor.deps)
        except Exception as error:  # the database away: the next round tries again
            raise_if_cancelling()
            log.warning("pending trips not sent", extra={"error": f"{type(error).__name__}: {error}"[:300]})


async def _snapshot_account(executor: Executor, every_s: float) -> None:
    await executor.exchange_ready.wait()
    while True:
        try:
            await snapshot_account(executor.deps)
        except Exception as error:  # the database away: the next round writes it
            raise_if_cancelling()
            log.warning("account snapshot not kept", extra={"error": f"{type(error).__name__}: {error}"[:300]})
        # Jittered: replicas do not all ask BingX in the same instant (its limit is per account, 5 requests/s).
        await asyncio.sleep(every_s * random.uniform(0.8, 1.2))


async def _follow_resting_orders(executor: Executor, every_s: float) -> None:
    await executor.exchange_ready.wait()
    while True:
        await asyncio.sleep(every_s)
        try:
            await follow_resting_orders(executor.deps)
        except Exception as error:  # the venue or the database away: the next round looks again
            raise_if_cancelling()
            log.warning("resting orders not followed up", extra={"error": f"{type(error).__name__}: {error}"[:300]})


@contextlib.asynccontextmanager
async def build(settings: ExecutorSettings, *, exchange: BingxExchange | None = None) -> AsyncIterator[Executor]:
    registry = CollectorRegistry()
    async with contextlib.AsyncExitStack() as stack:
        infra = await open_infrastructure(stack, settings, "executor", ("signals", "orders", "signal_conflicts", "executor_replicas", "executor_trips"))
        db, connection = infra.db, infra.connection
        publisher = await messaging.Publisher.open(connection)
        if exchange is None:
            exchange = BingxExchange(
                api_key=settings.bingx_api_key.get_secret_value(),
                api_secret=settings.bingx_api_secret.get_secret_value(),
                base_url=settings.venue_base_url,
                sandbox=settings.sandbox,
                timeout_s=settings.exchange_timeout_s,
                throttle=settings.throttle,
            )
        stack.push_async_callback(exchange.close)

        view = KillSwitchView()
        metrics = ExecutorMetrics(registry)
        metrics.show_mode(None)
        view.on_change(lambda state: metrics.show_mode(state.mode if state else None))
        deps = ExecutorDeps(db=db, publisher=publisher, exchange=exchange, view=view, metrics=metrics,
                            breaker=Breaker(max_consecutive_failures=settings.executor_max_consecutive_failures),
                            risk=RiskLimits(max_leverage=settings.risk_max_leverage, max_notional_usdt=settings.risk_max_notional_usdt,
                                            max_orders_per_minute=settings.risk_max_orders_per_minute,
                                            daily_loss_limit_usdt=settings.risk_daily_loss_limit_usdt),
                            default_leverage=lambda symbol: settings.default_for(settings.symbol_leverage, symbol),
                            default_margin_mode=lambda symbol: settings.default_for(settings.symbol_margin_mode, symbol),
                            replica=replica_name())
        executor = Executor(settings=settings, deps=deps, connection=connection, registry=registry)
        view.on_change(lambda state: _on_mode(executor, state))

        starting = asyncio.create_task(_start_exchange(exchange, executor.exchange_ready, settings.markets_refresh_s))

        async def stop_starting() -> None:
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)

        stack.push_async_callback(stop_starting)

        follower = asyncio.create_task(_follow_resting_orders(executor, settings.fill_poll_s))
        executor.tasks.add(follower)
        executor.tasks.add(asyncio.create_task(_snapshot_account(executor, settings.account_snapshot_s)))
        await resume_trips(deps)  # before any signal: a trip nobody answered still holds after a restart
        executor.tasks.add(asyncio.create_task(_send_pending_trips(executor)))

        async def stop_tasks() -> None:
            for task in list(executor.tasks):
                task.cancel()
            await asyncio.gather(*executor.tasks, return_exceptions=True)

        stack.push_async_callback(stop_tasks)

        control_channel = await connection.channel()
        reader = stream_reader(control_channel, view, connection=connection)
        await reader.start()
        stack.push_async_callback(reader.stop)
        yield executor
