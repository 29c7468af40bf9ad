"""The one place ccxt is touched: BingX perpetual swaps, with ccxt's errors mapped to the project's own."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from contextvars import ContextVar
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import ccxt.async_support as ccxt
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from shared.errors import PermanentError, TemporaryError

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("tvtb.bingx")

SETTINGS_TTL_S = 60.0


class ExchangeUnavailable(TemporaryError):
    """The venue could not be reached or asked us to slow down. For an order, the outcome is unknown."""


class OrderRejected(PermanentError):
    """The venue refused the order for a reason that a retry cannot change."""

    def __init__(self, reason: str, error_type: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error_type = error_type


class ExchangeAuthFailed(OrderRejected):
    """The key or its signature was refused: it may be revoked or leaked."""


class AlreadyPlaced(PermanentError):
    """The venue already has an order with this client order id."""


@dataclass(frozen=True)
class Market:
    symbol: str
    id: str
    active: bool
    min_amount: Decimal | None
    min_cost: Decimal | None


@dataclass(frozen=True)
class PlacedOrder:
    order_id: str
    client_order_id: str | None
    symbol: str
    side: str
    amount: Decimal
    status: str | None
    filled: Decimal | None
    average: Decimal | None
    reduce_only: bool


@dataclass(frozen=True)
class Balance:
    free: Decimal  # BingX's available margin
    equity: Decimal  # balance and unrealised PnL


@dataclass(frozen=True)
class Position:
    symbol: str
    side: str  # long | short
    contracts: Decimal
    entry_price: Decimal | None


def _dec(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def venue_reason(error: Exception) -> str:
    """BingX's own words when the error carries its JSON body, else the exception text, without any URL."""
    text = str(error)
    match = re.search(r"\{.*\}", text)
    if match:
        try:
            body = json.loads(match.group(0))
            if isinstance(body, dict) and body.get("msg"):
                return f"{body['msg']} (BingX code {body.get('code')})"
        except ValueError:
            pass
    # ccxt puts the request URL (with its signature) in some messages: keep only the first words.
    return re.sub(r"https?://\S+", "<url>", text)[:300]


PREFETCH_FRESH_S = 1.0  # a prefetched price older than this is not used: a market moves


def _consume_outcome(task: asyncio.Task) -> None:
    """A prefetch nobody took: its error (the venue away) is not news; whoever asks next fetches and sees it."""
    if not task.cancelled():
        task.exception()


def map_error(error: Exception) -> Exception:
    """ccxt's exception classes to ours. Order matters: ccxt's tree nests them."""
    reason = venue_reason(error)
    kind = type(error).__name__
    if isinstance(error, ccxt.DuplicateOrderId):
        return AlreadyPlaced(reason)
    if isinstance(error, ccxt.AuthenticationError):
        return ExchangeAuthFailed(reason, kind)
    if isinstance(error, (ccxt.NetworkError, ccxt.OperationFailed)):
        return ExchangeUnavailable(f"{kind}: {reason}")
    if isinstance(error, ccxt.BaseError):
        return OrderRejected(reason, kind)
    return error


class VenueAnswers:
    """When (time.monotonic()) the latest request BingX answered was sent, of those made for one attempt at a signal:
    the executor's breaker counts only an attempt's own answers (handlers.handle_signal sets one in VENUE_ANSWERS;
    a price prefetched in it, in a task of its own, shares it)."""

    __slots__ = ("latest",)

    def __init__(self) -> None:
        self.latest = float("-inf")


VENUE_ANSWERS: ContextVar[VenueAnswers | None] = ContextVar("venue_answers", default=None)


class BingxExchange:
    """BingX perpetual swaps through ccxt's real code path; `base_url` points it at the simulator or a proxy."""

    def __init__(self, *, api_key: str, api_secret: str, base_url: str | None, sandbox: bool, timeout_s: float = 10.0, throttle: bool = True) -> None:
        self._client = ccxt.bingx(
            {
                "apiKey": api_key,
                "secret": api_secret,
                "timeout": int(timeout_s * 1000),
                "enableRateLimit": throttle,
                "options": {"defaultType": "swap"},
            }
        )
        if sandbox:
            self._client.set_sandbox_mode(True)
        if base_url:
            # After set_sandbox_mode, which replaces urls['api'] (bingx-ccxt-wire.md §1).
            self._client.urls["api"] = {section: f"{base_url}/openApi" for section in self._client.urls["api"]}
        self.hedged = False
        self.markets_loaded_at: float | None = None
        # What the venue holds, kept in step with our own changes, so only what differs is set. Asked again after
        # SETTINGS_TTL_S: a trader may change it in BingX's app meanwhile.
        self._leverage: dict[str, tuple[float, dict[str, int]]] = {}  # symbol -> (learned at, side -> leverage)
        self._margin_mode: dict[str, tuple[float, str]] = {}
        # A price asked for ahead of need (prefetch_price), while the signal is being claimed: symbol -> (asked at, task).
        self._prefetched: dict[str, tuple[float, asyncio.Task]] = {}

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        # A span per venue call, inside the signal's trace: where an alert's milliseconds went, call by call.
        with _tracer.start_as_current_span(f"bingx {method}", kind=SpanKind.CLIENT) as span:
            span.set_attribute("bingx.method", method)
            sent = time.monotonic()
            try:
                result = await getattr(self._client, method)(*args, **kwargs)
            except ccxt.BaseError as error:
                span.set_attribute("bingx.error", type(error).__name__)
                raise map_error(error) from error
            answers = VENUE_ANSWERS.get()
            if answers is not None:
                answers.latest = max(answers.latest, sent)
            return result

    async def start(self) -> None:
        await self.refresh_markets()
        mode = await self._call("fetch_position_mode")
        self.hedged = bool(mode.get("hedged"))
        log.info("exchange ready", extra={"markets": len(self._client.markets), "hedged": self.hedged})

    async def refresh_markets(self) -> None:
        """BingX lists and delists contracts and changes their limits: the executor reloads them now and then."""
        await self._call("load_markets", True)
        self.markets_loaded_at = time.monotonic()

    async def close(self) -> None:
        for _, task in self._prefetched.values():
            task.cancel()
        self._prefetched.clear()
        await self._client.close()

    def market(self, symbol: str) -> Market | None:
        market = self._client.markets.get(symbol) if self._client.markets else None
        if market is None or not market.get("swap"):
            return None
        limits = market.get("limits") or {}
        return Market(
            symbol=symbol,
            id=market["id"],
            active=bool(market.get("active")),
            min_amount=_dec((limits.get("amount") or {}).get("min")),
            min_cost=_dec((limits.get("cost") or {}).get("min")),
        )

    def price_to_precision(self, symbol: str, price: Decimal) -> Decimal:
        return Decimal(self._client.price_to_precision(symbol, float(price)))

    def amount_to_precision(self, symbol: str, amount: Decimal) -> Decimal:
        try:
            return Decimal(self._client.amount_to_precision(symbol, float(amount)))
        except ccxt.InvalidOrder:
            return Decimal(0)

    def prefetch_price(self, symbol: str) -> None:
        """Ask for the price now, for an entry about to be planned: the answer arrives while the signal is claimed in
        the database, instead of after. `price` takes it if asked within PREFETCH_FRESH_S; else it is dropped."""
        task = asyncio.get_running_loop().create_task(self._fetch_price(symbol))
        task.add_done_callback(_consume_outcome)
        previous = self._prefetched.get(symbol)
        if previous is not None:
            previous[1].cancel()
        self._prefetched[symbol] = (time.monotonic(), task)

    async def price(self, symbol: str) -> Decimal:
        prefetched = self._prefetched.pop(symbol, None)
        if prefetched is not None and time.monotonic() - prefetched[0] <= PREFETCH_FRESH_S:
            return await prefetched[1]
        if prefetched is not None:
            prefetched[1].cancel()
        return await self._fetch_price(symbol)

    async def _fetch_price(self, symbol: str) -> Decimal:
        ticker = await self._call("fetch_ticker", symbol)
        last = ticker.get("last") or ticker.get("close")
        if last is None:
            raise ExchangeUnavailable(f"no price for {symbol}")
        return Decimal(str(last))

    async def balance(self) -> Balance:
        """Free margin as ccxt reads it; equity from BingX's own `equity` (ccxt's `total` leaves out frozen margin)."""
        balance = await self._call("fetch_balance")
        usdt = balance.get("USDT") or {}
        rows = ((balance.get("info") or {}).get("data")) or []
        row = next((r for r in rows if isinstance(r, dict) and r.get("asset") == "USDT"), {})
        equity = row.get("equity", usdt.get("total"))
        return Balance(free=Decimal(str(usdt.get("free") or 0)), equity=Decimal(str(equity or 0)))

    async def positions(self, symbol: str) -> list[Position]:
        raw = await self._call("fetch_positions", [symbol])
        found = []
        for item in raw:
            contracts = _dec(item.get("contracts")) or Decimal(0)
            if item.get("symbol") == symbol and contracts > 0:
                found.append(Position(symbol=symbol, side=item.get("side"), contracts=contracts, entry_price=_dec(item.get("entryPrice"))))
        return found

    async def all_positions(self) -> list[Position]:
        """Every open position of the account, whatever the symbol (for `flatten`)."""
        found = []
        for item in await self._call("fetch_positions"):
            contracts = _dec(item.get("contracts")) or Decimal(0)
            if contracts > 0 and item.get("symbol"):
                found.append(Position(symbol=item["symbol"], side=item.get("side"), contracts=contracts, entry_price=_dec(item.get("entryPrice"))))
        return found

    async def symbols_with_open_orders(self) -> set[str]:
        """The symbols that have an open order, whatever placed it (for `flatten`)."""
        return {order["symbol"] for order in await self._call("fetch_open_orders") if order.get("symbol")}

    async def create_order(self, symbol: str, side: str, amount: Decimal, *, client_order_id: str, reduce_only: bool,
                           price: Decimal | None = None, stop_loss: Decimal | None = None,
                           take_profit: Decimal | None = None) -> PlacedOrder:
        """A market order, or a limit order at `price`; a stop-loss and take-profit ride with it (BingX places them
        as conditional orders once it fills), so an entry never exists at the venue without its protection."""
        params: dict[str, Any] = {"clientOrderId": client_order_id}
        if self.hedged:
            params["hedged"] = True
        if reduce_only:
            params["reduceOnly"] = True
        if stop_loss is not None:
            params["stopLoss"] = {"triggerPrice": float(stop_loss)}
        if take_profit is not None:
            params["takeProfit"] = {"triggerPrice": float(take_profit)}
        kind = "market" if price is None else "limit"
        order = await self._call("create_order", symbol, kind, side, float(amount), None if price is None else float(price), params)
        return self._placed(order, symbol, side, amount, client_order_id, reduce_only)

    async def ensure_leverage(self, symbol: str, leverage: int, position_side: str) -> None:
        """Set the leverage of one side (`LONG`/`SHORT` in hedge mode, `BOTH` in one-way) unless it already is."""
        if await self.leverage(symbol, position_side) == leverage:
            return
        await self._call("set_leverage", leverage, symbol, {"side": position_side})
        sides = self._leverage[symbol][1]
        sides.update(dict.fromkeys(("LONG", "SHORT", "BOTH") if position_side == "BOTH" else (position_side,), leverage))
        log.info("leverage set", extra={"symbol": symbol, "leverage": leverage, "position_side": position_side})

    async def leverage(self, symbol: str, position_side: str) -> int:
        """The venue's leverage for one side of the symbol."""
        known = self._leverage.get(symbol)
        if known is None or time.monotonic() - known[0] > SETTINGS_TTL_S:
            current = await self._call("fetch_leverage", symbol)
            long_, short = int(current.get("longLeverage") or 1), int(current.get("shortLeverage") or 1)
            known = self._leverage[symbol] = (time.monotonic(), {"LONG": long_, "SHORT": short, "BOTH": long_})
        return known[1][position_side]

    async def margin_mode(self, symbol: str) -> str | None:
        """The venue's margin mode for the symbol (learned once in a while)."""
        known = self._margin_mode.get(symbol)
        if known is None or time.monotonic() - known[0] > SETTINGS_TTL_S:
            current = await self._call("fetch_margin_mode", symbol)
            known = self._margin_mode[symbol] = (time.monotonic(), current.get("marginMode"))
        return known[1]

    async def ensure_margin_mode(self, symbol: str, mode: str) -> None:
        """`isolated` or `cross` for the symbol, unless it already is (BingX refuses a change while anything is open)."""
        if await self.margin_mode(symbol) == mode:
            return
        await self._call("set_margin_mode", mode, symbol)
        self._margin_mode[symbol] = (time.monotonic(), mode)
        log.info("margin mode set", extra={"symbol": symbol, "margin_mode": mode})

    def forget_settings(self, symbol: str) -> None:
        """After a refused order or change the venue may hold something else: ask it again next time."""
        self._leverage.pop(symbol, None)
        self._margin_mode.pop(symbol, None)

    async def find_order(self, symbol: str, client_order_id: str) -> PlacedOrder | None:
        """Ask the venue for an order by our client order id: the check before anything is sent again."""
        market = self._client.market(symbol)
        try:
            with _tracer.start_as_current_span("bingx find_order", kind=SpanKind.CLIENT):
                response = await self._client.swapV2PrivateGetTradeOrder({"symbol": market["id"], "clientOrderId": client_order_id})
        except ccxt.OrderNotFound:
            return None
        except ccxt.BaseError as error:
            raise map_error(error) from error
        data = (response or {}).get("data") or {}
        raw = data.get("order", data)
        if not raw:
            return None
        order = self._client.parse_order(raw, market)
        return self._placed(order, symbol, order.get("side"), _dec(order.get("amount")) or Decimal(0), client_order_id, bool(order.get("reduceOnly")))

    async def cancel_all_orders(self, symbol: str) -> None:
        await self._call("cancel_all_orders", symbol)

    async def open_order_ids(self, symbol: str) -> set[str]:
        return {str(order["id"]) for order in await self._call("fetch_open_orders", symbol)}

    async def fetch_order(self, order_id: str, symbol: str) -> dict:
        """ccxt's order: `status` (open, closed, canceled), `filled`, `average`."""
        return await self._call("fetch_order", order_id, symbol)

    async def cancel_order(self, order_id: str, symbol: str) -> None:
        await self._call("cancel_order", order_id, symbol)

    @staticmethod
    def _placed(order: dict, symbol: str, side: str, amount: Decimal, client_order_id: str, reduce_only: bool) -> PlacedOrder:
        return PlacedOrder(
            order_id=str(order.get("id")),
            client_order_id=order.get("clientOrderId") or client_order_id,
            symbol=symbol,
            side=side,
            amount=_dec(order.get("amount")) or amount,
            status=order.get("status"),
            filled=_dec(order.get("filled")),
            average=_dec(order.get("average")),
            reduce_only=reduce_only,
        )
