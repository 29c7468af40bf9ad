"""The simulator's HTTP door: BingX's /openApi routes and envelope over the engine, plus the unsigned /_sim admin API."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from aiohttp import web

from services.bingx_sim import signing
from services.bingx_sim.engine import (
    MAKER_FEE, TAKER_FEE, BingxError, Engine, Fill, Market, Order, OrderRequest, PositionView, bad_parameter,
)
from services.bingx_sim.faults import RATE_LIMIT_CODE, RATE_LIMIT_MSG, Fault, FaultBook, RateLimiter
from services.bingx_sim.settings import BingxSimSettings
from services.bingx_sim.store import AccountStore, MongoAccountStore
from services.bingx_sim.walk import run_walk, walk_step
from shared import mongo

log = logging.getLogger("bingx_sim")

Params = dict[str, str]
Handler = Callable[[Engine, Params, int], Any]
NO_DATA = object()  # a handler returning this answers without a `data` field, as BingX does for some POSTs
USER_ID = "1000001"


@dataclass
class SimAccount:
    api_key: str
    api_secret: str
    engine: Engine


@dataclass
class Sim:
    engine: Engine  # the BINGX_API_KEY account
    api_key: str
    api_secret: str
    clock: Callable[[], float]
    accounts: dict[str, SimAccount] = field(default_factory=dict)  # every account by API key, the first included
    faults: FaultBook = field(default_factory=FaultBook)
    rate_limiter: RateLimiter = field(default_factory=RateLimiter)
    store: AccountStore | None = None
    # The random walk: its seed, the size of a step, and how many steps it has taken (the next step's number).
    walk_seed: int = 0
    walk_volatility: Decimal = Decimal("0.001")
    walk_steps: int = 0
    save_failures: int = 0  # shown in GET /_sim/state: the simulator has no metrics endpoint
    _save_locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.accounts.setdefault(self.api_key, SimAccount(self.api_key, self.api_secret, self.engine))

    async def save(self, accounts: Iterable[SimAccount]) -> None:
        """Trim each account's finished history, then write it to the store, if there is one.

        A failed write is logged as an error on every attempt: the simulator keeps serving from memory, but what it
        could not save is lost on a restart.
        """
        now = self.now_ms()
        for account in accounts:
            # In memory too, so an account shows the same history whether or not it is persisted.
            account.engine.prune(now)
            if self.store is None:
                continue
            # The snapshot is taken under the lock, so a slow earlier write can never land after a newer one.
            async with self._save_locks.setdefault(account.api_key, asyncio.Lock()):
                try:
                    await self.store.save(account.api_key, account.engine.to_document())
                except Exception:
                    self.save_failures += 1
                    log.exception("could not save account %s... (%d failed saves since start): its state since the "
                                  "last save is in memory only and a restart loses it", account.api_key[:4],
                                  self.save_failures)

    async def load(self) -> None:
        """Restore every account the store holds; an account it does not hold starts fresh."""
        if self.store is None:
            return
        for account in self.accounts.values():
            document = await self.store.load(account.api_key)
            if document is None:
                continue
            try:
                account.engine.restore(document)
            except (ValueError, KeyError, TypeError) as error:
                log.warning("saved account %s... not restored (%s): starting fresh", account.api_key[:4], error)
                continue
            log.info("restored account %s...: balance %s USDT, %d positions, %d open orders",
                     account.api_key[:4], _s(account.engine.account().balance), len(account.engine.positions()),
                     len(account.engine.open_orders()))

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def apply_prices(self, prices: dict[str, Decimal], now: int) -> None:
        """Move marks for every account and run what they cross; ValueError (nothing changed) for a bad price."""
        self.engine.set_prices(prices, now)  # first, so a refused price changes no account
        for account in self.accounts.values():
            liquidated = len(account.engine.liquidations)
            if account.engine is not self.engine:
                account.engine.set_prices(prices, now)
            for liquidation in account.engine.liquidations[liquidated:]:
                log.warning("account %s: liquidated %s %s %s at %s, lost %s USDT", account.api_key[:4] + "...",
                            liquidation.symbol, liquidation.side, _s(liquidation.qty), _p(liquidation.mark_price),
                            _s(liquidation.lost))
        await self.save(self.accounts.values())  # a move can fill, stop or liquidate in any account

    async def walk(self) -> dict[str, Decimal]:
        """One step of the seeded random walk, applied exactly as POST /_sim/prices would apply it."""
        prices = walk_step(self.engine.prices, self.walk_seed, self.walk_steps, self.walk_volatility)
        self.walk_steps += 1
        await self.apply_prices(prices, self.now_ms())
        log.debug("random walk step %d: %s", self.walk_steps, {s: _p(p) for s, p in self.engine.prices.items()})
        return self.engine.prices

    def authenticate(self, raw_query: str, api_key_sent: str | None, now: int) -> SimAccount:
        account = self.accounts.get(api_key_sent or "")
        if account is None:
            raise BingxError(100413, "Incorrect apiKey, please check your valid api key")
        signing.verify(raw_query, api_key_sent, account.api_key, account.api_secret, now)
        return account

    def account(self, api_key: str | None) -> SimAccount:
        """The account an admin request names (the first one when it names none); KeyError if unknown."""
        return self.accounts[api_key or self.api_key]


SIM = web.AppKey("sim", Sim)


def first_order_id(now_ms: int) -> int:
    """19 digits, above 2**53 like BingX's, and later on each start so a restarted simulator repeats no id."""
    return 1_800_000_000_000_000_000 + now_ms * 10_000


# ---- rendering: BingX sends most numbers as strings --------------------------------------------------------------


def _s(value: Decimal) -> str:
    """A Decimal as plain text without exponent or trailing zeros (amounts, money)."""
    if value == 0:
        return "0"
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _p(value: Decimal) -> str:
    """A price as stored (already at the market's tick, so "60000.0" like BingX)."""
    return "0" if value == 0 else format(value, "f")


def contract_view(market: Market) -> dict[str, Any]:
    return {
        "contractId": market.contract_id, "symbol": market.symbol, "size": _s(market.step),
        "quantityPrecision": market.quantity_precision, "pricePrecision": market.price_precision,
        "feeRate": float(TAKER_FEE), "makerFeeRate": float(MAKER_FEE), "takerFeeRate": float(TAKER_FEE),
        "tradeMinLimit": 0, "tradeMinQuantity": float(market.min_qty), "tradeMinUSDT": float(market.min_notional),
        "maxLongLeverage": market.max_leverage, "maxShortLeverage": market.max_leverage,
        # ccxt parses a row without `currency` as spot, and wants the api states as the *strings* "true".
        "currency": "USDT", "asset": market.base, "status": 1, "apiStateOpen": "true", "apiStateClose": "true",
        "ensureTrigger": True, "triggerFeeRate": "0.00050000", "brokerState": True,
        "launchTime": 1586275200000, "maintainTime": 0, "offTime": 0, "displayName": market.symbol,
    }


def ticker_view(engine: Engine, symbol: str, now: int) -> dict[str, Any]:
    ticker = engine.ticker(symbol)
    stats = ticker.stats
    change = ticker.last - stats.open_price
    percent = (change / stats.open_price * 100).quantize(Decimal("0.01"))
    return {
        "symbol": symbol, "priceChange": _p(change), "priceChangePercent": _s(percent),
        "lastPrice": _p(ticker.last), "lastQty": _s(stats.last_qty), "highPrice": _p(stats.high),
        "lowPrice": _p(stats.low), "volume": _s(stats.volume), "quoteVolume": _s(stats.quote_volume),
        "openPrice": _p(stats.open_price), "openTime": stats.open_time, "closeTime": now,
        # No order book is simulated: market orders fill at the mark, so the best bid and ask are the mark too.
        "bidPrice": _p(ticker.last), "bidQty": "1000", "askPrice": _p(ticker.last), "askQty": "1000",
    }


def balance_view(engine: Engine) -> dict[str, Any]:
    account = engine.account()
    return {
        "userId": USER_ID, "asset": "USDT", "balance": _s(account.balance), "equity": _s(account.equity),
        "unrealizedProfit": _s(account.unrealised), "realisedProfit": _s(account.realised_pnl - account.fees),
        "availableMargin": _s(account.available), "usedMargin": _s(account.used_margin),
        "freezedMargin": _s(account.frozen_margin), "shortUid": USER_ID,
    }


def position_view(view: PositionView) -> dict[str, Any]:
    position = view.position
    return {
        "positionId": str(position.position_id), "symbol": position.symbol, "currency": "USDT",
        "positionAmt": _s(position.qty), "availableAmt": _s(position.qty), "positionSide": position.side,
        "isolated": view.isolated, "avgPrice": _s(position.entry_price), "initialMargin": _s(view.margin),
        "margin": _s(view.margin), "leverage": view.leverage, "unrealizedProfit": _s(view.unrealised),
        "realisedProfit": _s(position.realised), "liquidationPrice": _s(view.liquidation_price),
        "pnlRatio": _s(view.pnl_ratio), "maxMarginReduction": "0", "riskRate": _s(view.risk_rate),
        "markPrice": _p(view.mark_price), "positionValue": _s(view.value), "onlyOnePosition": view.one_way,
        "updateTime": position.update_time,
    }


def _protection_view(raw: str) -> dict[str, Any]:
    empty = {"type": "", "quantity": 0, "stopPrice": 0, "price": 0, "workingType": "", "stopGuaranteed": ""}
    if not raw:
        return empty
    spec = json.loads(raw)
    return {**empty, **{k: spec[k] for k in ("type", "quantity", "stopPrice", "price", "workingType") if k in spec}}


def order_view(order: Order) -> dict[str, Any]:
    """An order as GET order, openOrders and allOrders report it (reference §4.1)."""
    return {
        "symbol": order.symbol, "orderId": order.order_id, "side": order.side, "positionSide": order.position_side,
        "type": order.type, "origQty": _s(order.orig_qty), "price": _p(order.price),
        "executedQty": _s(order.executed_qty), "avgPrice": _p(order.avg_price), "cumQuote": _s(order.cum_quote),
        "stopPrice": _p(order.stop_price) if order.stop_price else "", "profit": _s(order.profit),
        "commission": _s(order.commission), "status": order.status, "time": order.time,
        "updateTime": order.update_time, "clientOrderId": order.client_order_id, "leverage": f"{order.leverage}X",
        "takeProfit": _protection_view(order.take_profit), "stopLoss": _protection_view(order.stop_loss),
        "advanceAttr": 0, "positionID": 0, "takeProfitEntrustPrice": 0, "stopLossEntrustPrice": 0,
        "orderType": "", "workingType": order.working_type, "onlyOnePosition": order.only_one_position,
        "reduceOnly": order.reduce_only, "postOnly": order.time_in_force == "POSTONLY",
        "stopGuaranteed": "false", "triggerOrderId": 0, "trailingStopRate": _s(order.price_rate),
        "trailingStopDistance": "0",
    }


def created_order_view(order: Order) -> dict[str, Any]:
    """The `data.order` of a create-order answer: no `time`, TP/SL echoed as JSON strings, as BingX sends it."""
    return {
        "symbol": order.symbol, "orderId": order.order_id, "side": order.side, "positionSide": order.position_side,
        "type": order.type, "price": _p(order.price), "quantity": _s(order.orig_qty),
        "stopPrice": _p(order.stop_price), "workingType": order.working_type,
        "clientOrderID": order.client_order_id,
        "timeInForce": "PostOnly" if order.time_in_force == "POSTONLY" else order.time_in_force,
        "priceRate": _s(order.price_rate), "stopLoss": order.stop_loss, "takeProfit": order.take_profit,
        "reduceOnly": order.reduce_only, "activationPrice": "0",
        "closePosition": "true" if order.close_position else "", "stopGuaranteed": "",
        "status": order.status, "avgPrice": _p(order.avg_price), "executedQty": _s(order.executed_qty),
    }


def fill_view(fill: Fill) -> dict[str, Any]:
    filled = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(fill.time / 1000))
    return {
        "filledTm": f"{filled}Z", "volume": _s(fill.qty), "price": _p(fill.price), "amount": _s(fill.quote),
        "commission": _s(fill.commission), "currency": "USDT", "orderId": str(fill.order_id),
        "liquidatedPrice": _p(fill.price) if fill.liquidation else "", "liquidatedMarginRatio": "",
        "filledTime": f"{filled}.000+0000",
        "clientOrderId": fill.client_order_id, "symbol": fill.symbol, "side": fill.side,
        "positionSide": fill.position_side, "type": fill.type, "onlyOnePosition": fill.position_side == "BOTH",
    }


# ---- decoding parameters -----------------------------------------------------------------------------------------


def _decimal(params: Params, key: str) -> Decimal | None:
    text = params.get(key)
    if text is None or text == "":
        return None
    try:
        value = Decimal(text)  # ccxt sends values below 1e-4 in exponent notation, which Decimal reads
    except InvalidOperation:
        raise bad_parameter(f"{key} must be a number") from None
    if not value.is_finite():
        raise bad_parameter(f"{key} must be a number")
    return value


def _bool(params: Params, key: str) -> bool | None:
    text = params.get(key)
    if text is None or text == "":
        return None
    if text.lower() not in ("true", "false"):
        raise bad_parameter(f"{key} must be true or false")
    return text.lower() == "true"


def _int(params: Params, key: str) -> int | None:
    text = params.get(key)
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise bad_parameter(f"{key} must be an integer") from None


def _client_order_id(params: Params) -> str | None:
    # ccxt sends `clientOrderID`; BingX's docs and answers say `clientOrderId`. Both are accepted.
    value = params.get("clientOrderID") or params.get("clientOrderId")
    return value or None


def _required(params: Params, key: str) -> str:
    value = params.get(key)
    if not value:
        raise bad_parameter(f"{key} is required")
    return value


# ---- /openApi handlers: plain functions of (engine, params, now) returning `data` ----------------------------------


def get_contracts(engine: Engine, params: Params, now: int) -> Any:
    symbol = params.get("symbol")
    return [contract_view(m) for m in engine.markets if not symbol or m.symbol == symbol]


def get_ticker(engine: Engine, params: Params, now: int) -> Any:
    symbol = params.get("symbol")
    if symbol:
        return ticker_view(engine, engine.market(symbol).symbol, now)
    return [ticker_view(engine, m.symbol, now) for m in engine.markets]


def get_server_time(engine: Engine, params: Params, now: int) -> Any:
    return {"serverTime": now}


def get_balance(engine: Engine, params: Params, now: int) -> Any:
    return [balance_view(engine)]


def get_position_mode(engine: Engine, params: Params, now: int) -> Any:
    return {"dualSidePosition": "true" if engine.hedged else "false"}


def set_position_mode(engine: Engine, params: Params, now: int) -> Any:
    hedged = _bool(params, "dualSidePosition")
    if hedged is None:
        raise bad_parameter("dualSidePosition is required")
    engine.set_position_mode(hedged)
    return get_position_mode(engine, params, now)


def get_positions(engine: Engine, params: Params, now: int) -> Any:
    return [position_view(v) for v in engine.positions(params.get("symbol") or None)]


def _order_request(params: Params) -> OrderRequest:
    return OrderRequest(
        symbol=_required(params, "symbol"), side=_required(params, "side"), type=_required(params, "type"),
        position_side=params.get("positionSide") or None, quantity=_decimal(params, "quantity"),
        price=_decimal(params, "price"), stop_price=_decimal(params, "stopPrice"),
        quote_order_qty=_decimal(params, "quoteOrderQty"), reduce_only=_bool(params, "reduceOnly"),
        close_position=bool(_bool(params, "closePosition")), client_order_id=_client_order_id(params),
        time_in_force=params.get("timeInForce") or None, working_type=params.get("workingType") or None,
        stop_loss=params.get("stopLoss") or None, take_profit=params.get("takeProfit") or None,
        price_rate=_decimal(params, "priceRate"),
    )


def place_order(engine: Engine, params: Params, now: int) -> Any:
    order = engine.place_order(_order_request(params), now)
    log.info("order %s %s %s %s %s qty=%s status=%s avg=%s", order.order_id, order.symbol, order.side,
             order.position_side, order.type, _s(order.orig_qty), order.status, _p(order.avg_price))
    return {"order": created_order_view(order)}


def place_test_order(engine: Engine, params: Params, now: int) -> Any:
    """POST /trade/order/test: the same checks and answer as a real order, and nothing placed."""
    order = engine.place_order(_order_request(params), now, test=True)
    return {"order": created_order_view(order)}


def close_position(engine: Engine, params: Params, now: int) -> Any:
    """POST /v1/trade/closePosition: market-close one position by id; answers as reference §4.1 shows."""
    position_id = _int(params, "positionId")
    if position_id is None:
        raise bad_parameter("positionId is required")
    order, position = engine.close_position(position_id, now)
    log.info("position %s %s %s closed by order %s", position_id, position.symbol, position.side, order.order_id)
    return {
        "orderId": order.order_id, "positionId": str(position_id), "symbol": position.symbol,
        "side": "Ask" if order.side == "SELL" else "Bid", "type": "Market", "positionSide": order.position_side,
        "origQty": _s(order.orig_qty),
    }


def _lookup(params: Params) -> tuple[str | None, int | None, str | None]:
    order_id, client_order_id = _int(params, "orderId"), _client_order_id(params)
    if order_id is None and client_order_id is None:
        raise bad_parameter("orderId or clientOrderId is required")
    return params.get("symbol") or None, order_id, client_order_id


def get_order(engine: Engine, params: Params, now: int) -> Any:
    order = engine.find_order(*_lookup(params))
    if order is None:
        raise BingxError(80016, "order does not exist")
    return {"order": order_view(order)}


def cancel_order(engine: Engine, params: Params, now: int) -> Any:
    order = engine.cancel_order(*_lookup(params), now)
    log.info("order %s %s cancelled", order.order_id, order.symbol)
    return {"order": order_view(order)}


def get_open_orders(engine: Engine, params: Params, now: int) -> Any:
    return {"orders": [order_view(o) for o in engine.open_orders(params.get("symbol") or None)]}


def get_all_orders(engine: Engine, params: Params, now: int) -> Any:
    orders = engine.all_orders(params.get("symbol") or None)
    from_id, start, end = _int(params, "orderId"), _int(params, "startTime"), _int(params, "endTime")
    limit = min(_int(params, "limit") or 500, 1000)
    orders = [o for o in orders if (from_id is None or o.order_id >= from_id)
              and (start is None or o.time >= start) and (end is None or o.time <= end)]
    return {"orders": [order_view(o) for o in orders[-limit:]]}


def cancel_all_orders(engine: Engine, params: Params, now: int) -> Any:
    symbol = params.get("symbol") or None
    if symbol:
        engine.market(symbol)
    return {"success": [order_view(o) for o in engine.cancel_all(symbol, now)], "failed": None}


def _leverage_symbol(engine: Engine, params: Params) -> str:
    symbol = _required(params, "symbol")
    if symbol not in {m.symbol for m in engine.markets}:
        raise BingxError(109500, "symbol not exist")
    return symbol


def _leverage_data(engine: Engine, symbol: str) -> dict[str, Any]:
    market = engine.market(symbol)
    available = engine.account().available
    price = engine.price(symbol)
    long_leverage, short_leverage = engine.leverage(symbol, "LONG"), engine.leverage(symbol, "SHORT")
    cap = Decimal(100_000_000)
    return {
        "longLeverage": long_leverage, "shortLeverage": short_leverage,
        "maxLongLeverage": market.max_leverage, "maxShortLeverage": market.max_leverage,
        "availableLongVol": _s(market.truncate_qty(available * long_leverage / price)),
        "availableShortVol": _s(market.truncate_qty(available * short_leverage / price)),
        "availableLongVal": _s(available * long_leverage), "availableShortVal": _s(available * short_leverage),
        "maxPositionLongVal": _s(cap), "maxPositionShortVal": _s(cap),
    }


def get_leverage(engine: Engine, params: Params, now: int) -> Any:
    return _leverage_data(engine, _leverage_symbol(engine, params))


def set_leverage(engine: Engine, params: Params, now: int) -> Any:
    symbol = _leverage_symbol(engine, params)
    leverage = _int(params, "leverage")
    if leverage is None:
        raise bad_parameter("leverage is required")
    side = _required(params, "side")
    engine.set_leverage(symbol, side, leverage)
    return {"leverage": leverage, "symbol": symbol, **_leverage_data(engine, symbol)}


def get_margin_type(engine: Engine, params: Params, now: int) -> Any:
    symbol = engine.market(_required(params, "symbol")).symbol
    return {"marginType": engine.margin_type(symbol), "symbol": symbol}


def set_margin_type(engine: Engine, params: Params, now: int) -> Any:
    engine.set_margin_type(_required(params, "symbol"), _required(params, "marginType"))
    return NO_DATA


def close_all_positions(engine: Engine, params: Params, now: int) -> Any:
    symbol = params.get("symbol") or None
    if symbol:
        engine.market(symbol)
    ids = engine.close_all_positions(symbol, now)
    log.info("closed all positions%s: orders %s", f" of {symbol}" if symbol else "", ids)
    return {"success": ids, "failed": None}


def get_fills(engine: Engine, params: Params, now: int) -> Any:
    symbol, order_id = params.get("symbol") or None, _int(params, "orderId")
    start, end = _int(params, "startTs"), _int(params, "endTs")
    fills = [f for f in engine.fills if (symbol is None or f.symbol == symbol)
             and (order_id is None or f.order_id == order_id)
             and (start is None or f.time >= start) and (end is None or f.time <= end)]
    return {"fill_orders": [fill_view(f) for f in fills]}


def empty_list(engine: Engine, params: Params, now: int) -> Any:
    return []


def empty_spot_symbols(engine: Engine, params: Params, now: int) -> Any:
    return {"symbols": []}


# (method, path under /openApi/, handler, signed)
ENDPOINTS: tuple[tuple[str, str, Handler, bool], ...] = (
    ("GET", "swap/v2/quote/contracts", get_contracts, False),
    ("GET", "swap/v2/quote/ticker", get_ticker, False),
    ("GET", "swap/v2/server/time", get_server_time, False),
    ("GET", "swap/v3/user/balance", get_balance, True),
    ("GET", "swap/v1/positionSide/dual", get_position_mode, True),
    ("POST", "swap/v1/positionSide/dual", set_position_mode, True),
    ("GET", "swap/v2/user/positions", get_positions, True),
    ("POST", "swap/v2/trade/order", place_order, True),
    ("POST", "swap/v2/trade/order/test", place_test_order, True),
    ("GET", "swap/v2/trade/order", get_order, True),
    ("DELETE", "swap/v2/trade/order", cancel_order, True),
    ("GET", "swap/v2/trade/openOrders", get_open_orders, True),
    ("GET", "swap/v2/trade/allOrders", get_all_orders, True),
    ("DELETE", "swap/v2/trade/allOpenOrders", cancel_all_orders, True),
    ("GET", "swap/v2/trade/leverage", get_leverage, True),
    ("POST", "swap/v2/trade/leverage", set_leverage, True),
    ("GET", "swap/v2/trade/marginType", get_margin_type, True),
    ("POST", "swap/v2/trade/marginType", set_margin_type, True),
    ("POST", "swap/v2/trade/closeAllPositions", close_all_positions, True),
    ("POST", "swap/v1/trade/closePosition", close_position, True),
    ("GET", "swap/v2/trade/allFillOrders", get_fills, True),
    # Live (non-sandbox) ccxt also loads coin-margined and spot markets and the wallet's currencies.
    ("GET", "cswap/v1/market/contracts", empty_list, False),
    ("GET", "spot/v1/common/symbols", empty_spot_symbols, False),
    ("GET", "wallets/v1/capital/config/getall", empty_list, True),
)


def _envelope(now: int, data: Any = NO_DATA, code: int = 0, msg: str = "") -> web.Response:
    body: dict[str, Any] = {"code": code, "msg": msg, "timestamp": now}
    if data is not NO_DATA:
        body["data"] = data
    # Business errors are HTTP 200 too: ccxt reads `code` before it looks at the status.
    return web.json_response(body)


def _rate_limited(now: int) -> web.Response:
    # BingX answers a breach with HTTP 429 *and* a JSON body, so ccxt raises OperationFailed.
    return web.json_response({"code": RATE_LIMIT_CODE, "msg": RATE_LIMIT_MSG, "timestamp": now}, status=429)


async def _injected(request: web.Request, faults: list[Fault], now: int) -> web.StreamResponse | None:
    """What the injected faults answer instead of the simulator, or None to answer normally (maybe late)."""
    delay = sum(f.latency_ms for f in faults if f.kind == "latency")
    if delay:
        await asyncio.sleep(delay / 1000)  # a slow venue: the client's own timeout decides what happens
    for fault in faults:
        log.info("%s %s: injected fault %s (%s)", request.method, request.path, fault.id, fault.kind)
        if fault.kind == "drop":
            # Close without a byte of answer, as a proxy or a crashed server would.
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError
        if fault.kind == "http":
            return web.Response(status=fault.status, text=fault.body, content_type=fault.content_type)
        if fault.kind == "error":
            return _envelope(now, code=fault.code, msg=fault.msg)
        if fault.kind == "rate_limit":
            return _rate_limited(now)
    return None


def _door(handler: Handler, signed: bool) -> Callable[[web.Request], Any]:
    async def handle(request: web.Request) -> web.StreamResponse:
        sim = request.app[SIM]
        faults = sim.faults.take(request.method, request.path, sim.now_ms())
        if faults:
            answer = await _injected(request, faults, sim.now_ms())
            if answer is not None:
                return answer
        now = sim.now_ms()
        # Verify the query exactly as it arrived: re-encoding or re-sorting it would change what was signed.
        raw_query = request.rel_url.raw_query_string
        try:
            engine = sim.engine  # public endpoints: market data is the same for every account
            if signed:
                account = sim.authenticate(raw_query, request.headers.get("X-BX-APIKEY"), now)
                if not sim.rate_limiter.allow(account.api_key, request.path, now):
                    log.info("%s %s refused: rate limit", request.method, request.path)
                    return _rate_limited(now)
                engine = account.engine
            data = handler(engine, signing.parse_query(raw_query), now)
            if signed and request.method != "GET":  # only signed POSTs and DELETEs change an account
                await sim.save([sim.accounts[request.headers["X-BX-APIKEY"]]])
        except BingxError as error:
            level = logging.WARNING if error.code in (100001, 100412, 100413, 100421) else logging.INFO
            log.log(level, "%s %s refused: %s %s", request.method, request.path, error.code, error.msg)
            return _envelope(now, code=error.code, msg=error.msg)
        late = sum(f.latency_ms for f in faults if f.kind == "late_answer")
        if late:
            await asyncio.sleep(late / 1000)  # done already; only the answer is late
        return _envelope(now, data)

    return handle


async def _unknown_api(request: web.Request) -> web.Response:
    now = request.app[SIM].now_ms()
    return web.json_response({"code": 100400, "msg": "this api is not exist", "timestamp": now}, status=404)


# ---- /_sim admin API and health ----------------------------------------------------------------------------------


def state_view(engine: Engine) -> dict[str, Any]:
    account = engine.account()
    symbols = [m.symbol for m in engine.markets]
    return {
        "balances": {"USDT": {
            "deposits": _s(account.deposits), "balance": _s(account.balance), "equity": _s(account.equity),
            "unrealizedProfit": _s(account.unrealised), "realisedPnl": _s(account.realised_pnl),
            "fees": _s(account.fees), "realisedProfit": _s(account.realised_pnl - account.fees),
            "usedMargin": _s(account.used_margin), "freezedMargin": _s(account.frozen_margin),
            "availableMargin": _s(account.available),
        }},
        "dualSidePosition": engine.hedged,
        "prices": {symbol: _p(price) for symbol, price in engine.prices.items()},
        "leverage": {s: {"LONG": engine.leverage(s, "LONG"), "SHORT": engine.leverage(s, "SHORT")} for s in symbols},
        "marginType": {s: engine.margin_type(s) for s in symbols},
        "positions": [position_view(v) for v in engine.positions()],
        "orders": [order_view(o) for o in engine.all_orders()],
        "fills": [{
            "orderId": f.order_id, "clientOrderId": f.client_order_id, "symbol": f.symbol, "side": f.side,
            "positionSide": f.position_side, "type": f.type, "qty": _s(f.qty), "price": _p(f.price),
            "quote": _s(f.quote), "commission": _s(f.commission), "realisedPnl": _s(f.realised_pnl), "time": f.time,
            "liquidation": f.liquidation,
        } for f in engine.fills],
        "liquidations": [{
            "orderId": x.order_id, "symbol": x.symbol, "positionSide": x.side, "qty": _s(x.qty),
            "entryPrice": _s(x.entry_price), "markPrice": _p(x.mark_price), "liquidationPrice": _p(x.liquidation_price),
            "lost": _s(x.lost), "isolated": x.isolated, "time": x.time,
        } for x in engine.liquidations],
    }


async def _json_object(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text=json.dumps({"error": "the body is not JSON"}),
                                 content_type="application/json") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text=json.dumps({"error": "the body must be a JSON object"}),
                                 content_type="application/json")
    return body


def _bad_request(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


def _prices_from(body: dict[str, Any]) -> dict[str, Decimal]:
    prices = {}
    for symbol, value in body.items():
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"the price of {symbol} must be a number or a numeric string")
        try:
            prices[str(symbol)] = Decimal(str(value))
        except InvalidOperation:
            raise ValueError(f"the price of {symbol} is not a number") from None
    return prices


def _named_account(sim: Sim, api_key: object) -> SimAccount:
    if api_key is not None and not isinstance(api_key, str):
        raise ValueError("account must be an API key")
    try:
        return sim.account(api_key)
    except KeyError:
        raise ValueError("no such account") from None


async def admin_state(request: web.Request) -> web.Response:
    """One account's whole state: the first account's, or `?account=<api key>`'s."""
    sim = request.app[SIM]
    try:
        account = _named_account(sim, request.query.get("account"))
    except ValueError as error:
        return web.json_response({"error": str(error)}, status=404)
    return web.json_response({**state_view(account.engine), "accounts": list(sim.accounts),
                              "save_failures": sim.save_failures})


async def admin_prices(request: web.Request) -> web.Response:
    """Move marks for every account; what they cross (limit fills, stops, liquidations) happens before the answer."""
    sim = request.app[SIM]
    try:
        prices = _prices_from(await _json_object(request))
        await sim.apply_prices(prices, sim.now_ms())
    except ValueError as error:
        return _bad_request(str(error))
    log.info("prices set: %s", {s: _p(p) for s, p in sim.engine.prices.items()})
    return web.json_response({"prices": {s: _p(p) for s, p in sim.engine.prices.items()}})


async def admin_walk(request: web.Request) -> web.Response:
    """GET shows the random walk; POST `{"steps": N}` (default 1) takes N steps now, timer or not."""
    sim = request.app[SIM]
    if request.method == "POST":
        steps = (await _json_object(request)).get("steps", 1)
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 10_000:
            return _bad_request("steps must be an integer from 1 to 10000")
        for _ in range(steps):
            await sim.walk()
    return web.json_response({"seed": sim.walk_seed, "volatility": str(sim.walk_volatility), "steps": sim.walk_steps,
                              "prices": {s: _p(p) for s, p in sim.engine.prices.items()}})


async def admin_reset(request: web.Request) -> web.Response:
    """Back to the starting balance and prices with nothing open; `{"balance": "5000"}` changes the start.

    Every account is reset, or only `{"account": "<api key>"}`, which then keeps the market's current prices.
    """
    sim = request.app[SIM]
    body = await _json_object(request)
    try:
        chosen = _named_account(sim, body["account"]) if "account" in body else None
        balance = Decimal(str(body["balance"])) if "balance" in body else None
        if balance is not None and (not balance.is_finite() or balance < 0):
            raise ValueError("the starting balance cannot be negative")
    except InvalidOperation:
        return _bad_request("balance is not a number")
    except ValueError as error:
        return _bad_request(str(error))
    now = sim.now_ms()
    if chosen is None:
        for account in sim.accounts.values():
            account.engine.reset(now, balance=balance)
    else:
        prices = sim.engine.prices
        chosen.engine.reset(now, balance=balance)
        chosen.engine.set_prices(prices, now)
    await sim.save([chosen] if chosen is not None else sim.accounts.values())
    shown = chosen or sim.account(None)
    log.info("reset %s to a balance of %s USDT", "every account" if chosen is None else "one account",
             _s(shown.engine.deposits))
    return web.json_response({**state_view(shown.engine), "accounts": list(sim.accounts)})


async def admin_faults(request: web.Request) -> web.Response:
    """GET lists the waiting faults, POST adds one (see faults.parse_fault), DELETE clears them all."""
    sim = request.app[SIM]
    now = sim.now_ms()
    if request.method == "POST":
        try:
            fault = sim.faults.add(await _json_object(request), now)
        except ValueError as error:
            return _bad_request(str(error))
        log.info("fault %s added: %s", fault.id, fault.view())
        return web.json_response({"fault": fault.view()})
    if request.method == "DELETE":
        sim.faults.clear()
        log.info("faults cleared")
    return web.json_response({"faults": [f.view() for f in sim.faults.active(now)],
                              "rate_limit": sim.rate_limiter.view()})


async def admin_rate_limit(request: web.Request) -> web.Response:
    """GET shows BingX's rate limit, POST `{"enabled": true, "per_second": 5}` turns it on or off."""
    sim = request.app[SIM]
    if request.method == "POST":
        body = await _json_object(request)
        enabled, per_second = body.get("enabled"), body.get("per_second")
        if not isinstance(enabled, bool):
            return _bad_request("enabled must be true or false")
        if per_second is not None and (isinstance(per_second, bool) or not isinstance(per_second, int)
                                       or per_second < 1):
            return _bad_request("per_second must be a positive integer")
        sim.rate_limiter.configure(enabled, per_second)
        log.info("rate limit %s", sim.rate_limiter.view())
    return web.json_response(sim.rate_limiter.view())


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_app(settings: BingxSimSettings, *, clock: Callable[[], float] = time.time,
              store: AccountStore | None = None) -> web.Application:
    """The simulator as an aiohttp application; `clock` (seconds) is what signed timestamps are checked against.

    Accounts are kept in `store`, or in MongoDB when MONGO_URI is set, or in memory only; a start restores them.
    """
    now = int(clock() * 1000)

    def new_engine(balance: Decimal, index: int) -> Engine:
        # Accounts are apart by 10**14 ids, so no two accounts of one run ever show the same order id.
        return Engine(balance, settings.bingx_sim_prices, now=now, first_order_id=first_order_id(now) + index * 10**14)

    engine = new_engine(settings.bingx_sim_balance_usdt, 0)
    app = web.Application()
    seed = settings.bingx_sim_seed if settings.bingx_sim_seed is not None else random.SystemRandom().randrange(2**31)
    sim = Sim(engine, settings.bingx_api_key.get_secret_value(), settings.bingx_api_secret.get_secret_value(), clock,
              rate_limiter=RateLimiter(enabled=settings.bingx_sim_rate_limit),
              walk_seed=seed, walk_volatility=settings.bingx_sim_walk_volatility)
    for index, spec in enumerate(settings.extra_accounts(), start=1):
        sim.accounts[spec.api_key] = SimAccount(spec.api_key, spec.api_secret, new_engine(spec.balance, index))
    if store is None and settings.mongo_uri is not None:
        client = mongo.connect(settings.mongo_uri.get_secret_value(), app_name="bingx_sim")
        store = MongoAccountStore(mongo.database(client, settings.mongo_db))

        async def close_client(app: web.Application) -> None:
            await client.close()

        app.on_cleanup.append(close_client)
    sim.store = store

    async def restore(app: web.Application) -> None:
        await sim.load()

    app.on_startup.append(restore)
    if settings.bingx_sim_random_walk:
        log.info("random walk on: seed %s, a step every %s s, volatility %s", seed, settings.bingx_sim_walk_interval_s,
                 settings.bingx_sim_walk_volatility)

        async def walk_in_background(app: web.Application) -> AsyncIterator[None]:
            task = asyncio.create_task(run_walk(sim.walk, settings.bingx_sim_walk_interval_s))
            yield
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

        app.cleanup_ctx.append(walk_in_background)
    app[SIM] = sim
    for method, path, handler, signed in ENDPOINTS:
        app.router.add_route(method, f"/openApi/{path}", _door(handler, signed))
    app.router.add_route("*", "/openApi/{tail:.*}", _unknown_api)
    app.router.add_get("/_sim/state", admin_state)
    app.router.add_post("/_sim/prices", admin_prices)
    app.router.add_post("/_sim/reset", admin_reset)
    app.router.add_route("GET", "/_sim/walk", admin_walk)
    app.router.add_route("POST", "/_sim/walk", admin_walk)
    app.router.add_route("GET", "/_sim/faults", admin_faults)
    app.router.add_route("POST", "/_sim/faults", admin_faults)
    app.router.add_route("DELETE", "/_sim/faults", admin_faults)
    app.router.add_route("GET", "/_sim/rate_limit", admin_rate_limit)
    app.router.add_route("POST", "/_sim/rate_limit", admin_rate_limit)
    app.router.add_get("/healthz", healthz)
    return app
