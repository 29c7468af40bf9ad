"""The simulated BingX USDT-M account: markets, prices, orders, positions and money, in Decimal, with no I/O."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, is_dataclass
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Callable, Mapping, TypeVar, get_type_hints

# Real BingX accounts start at 5x: the recorded responses of a fresh account show "leverage": "5" and "5X".
DEFAULT_LEVERAGE = 5
MAKER_FEE = Decimal("0.0002")
TAKER_FEE = Decimal("0.0005")
# Tier-1 maintenance margin rate: where the liquidation price sits, and what a liquidation keeps besides the loss.
MAINTENANCE_RATE = Decimal("0.004")
# Margins and averaged entry prices are kept to 8 decimals so that what is shown is exactly what is computed with.
MONEY_STEP = Decimal("0.00000001")
FIRST_ORDER_ID = 1_900_000_000_000_000_001
# Bumped whenever the saved document's shape changes; an older document is then not restored.
DOCUMENT_VERSION = 1
# How much finished history (filled, cancelled or failed orders, fills, liquidations) an account keeps. Without a
# bound a paper account left running grows without end, and its saved document passes MongoDB's 16 MB limit after
# some thousands of round trips (1,000 plain ones, 2,000 orders and fills, make 1.7 MB of BSON). Open orders and
# positions are never dropped.
HISTORY_MS = 30 * 24 * 3600 * 1000
HISTORY_MAX = 2000

OPEN_STATUSES = frozenset({"NEW", "PENDING", "PARTIALLY_FILLED"})
ORDER_TYPES = frozenset({
    "LIMIT", "MARKET", "STOP_MARKET", "TAKE_PROFIT_MARKET", "STOP", "TAKE_PROFIT", "TRIGGER_LIMIT",
    "TRIGGER_MARKET", "TRAILING_STOP_MARKET", "TRAILING_TP_SL",
})
CONDITIONAL_TYPES = ORDER_TYPES - {"LIMIT", "MARKET"}
PRICED_TYPES = frozenset({"LIMIT", "STOP", "TAKE_PROFIT", "TRIGGER_LIMIT"})
TRIGGERED_TYPES = frozenset({"STOP_MARKET", "TAKE_PROFIT_MARKET", "STOP", "TAKE_PROFIT", "TRIGGER_LIMIT", "TRIGGER_MARKET"})
# Stop-loss and take-profit orders only ever close a position; TRIGGER_* orders may open one.
CLOSING_TYPES = frozenset({"STOP_MARKET", "TAKE_PROFIT_MARKET", "STOP", "TAKE_PROFIT"})
STOP_TYPES = frozenset({"STOP_MARKET", "STOP"})
TAKE_PROFIT_TYPES = frozenset({"TAKE_PROFIT_MARKET", "TAKE_PROFIT"})
MARGIN_TYPES = frozenset({"ISOLATED", "CROSSED", "SEPARATE_ISOLATED"})
TIMES_IN_FORCE = frozenset({"GTC", "IOC", "FOK", "POSTONLY"})


class BingxError(Exception):
    """A business error exactly as BingX reports it: ccxt maps it to an exception by `msg`, then by `code`."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(f"{code}: {msg}")
        self.code = code
        self.msg = msg


def bad_parameter(detail: str) -> BingxError:
    return BingxError(80014, f"Invalid parameters, {detail}")


def _busy_account() -> BingxError:
    return BingxError(109400, "the account has positions or pending orders")


@dataclass(frozen=True)
class Market:
    """One USDT-M perpetual contract as /quote/contracts describes it."""

    symbol: str
    contract_id: str
    quantity_precision: int
    price_precision: int
    min_qty: Decimal
    min_notional: Decimal
    max_leverage: int

    @property
    def base(self) -> str:
        return self.symbol.split("-")[0]

    @property
    def step(self) -> Decimal:
        return Decimal(1).scaleb(-self.quantity_precision)

    @property
    def tick(self) -> Decimal:
        return Decimal(1).scaleb(-self.price_precision)

    def truncate_qty(self, qty: Decimal) -> Decimal:
        # BingX silently truncates excess quantity precision rather than rejecting it.
        return qty.quantize(self.step, rounding=ROUND_DOWN)

    def truncate_price(self, price: Decimal) -> Decimal:
        return price.quantize(self.tick, rounding=ROUND_DOWN)


BUILTIN_MARKETS: dict[str, Market] = {
    "BTC-USDT": Market("BTC-USDT", "100", 4, 1, Decimal("0.0001"), Decimal("2"), 125),
    "ETH-USDT": Market("ETH-USDT", "101", 2, 2, Decimal("0.01"), Decimal("2"), 100),
    "SOL-USDT": Market("SOL-USDT", "102", 2, 2, Decimal("0.01"), Decimal("2"), 75),
}
BUILTIN_PRICES: dict[str, Decimal] = {
    "BTC-USDT": Decimal("60000"),
    "ETH-USDT": Decimal("3000"),
    "SOL-USDT": Decimal("150"),
}


def is_symbol(symbol: str) -> bool:
    """BingX USDT-M ids: an upper-case base (digits allowed, as in 1000PEPE), a hyphen, USDT."""
    base, sep, quote = symbol.partition("-")
    return sep == "-" and quote == "USDT" and base.isalnum() and base == base.upper()


def generic_market(symbol: str, price: Decimal, contract_id: str) -> Market:
    """Plausible metadata for a symbol the simulator has no table entry for, scaled from its price."""
    magnitude = price.adjusted()  # 60000 -> 4, 0.1 -> -1
    price_precision = min(max(5 - magnitude, 0), 8)
    quantity_precision = min(max(magnitude, 0), 8)
    return Market(symbol, contract_id, quantity_precision, price_precision,
                  Decimal(1).scaleb(-quantity_precision), Decimal("2"), 50)


def _money(value: Decimal) -> Decimal:
    return value.quantize(MONEY_STEP, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class OrderRequest:
    """What a client asked for on POST /swap/v2/trade/order, already decoded from the query string."""

    symbol: str
    side: str
    type: str
    position_side: str | None = None
    quantity: Decimal | None = None
    price: Decimal | None = None
    stop_price: Decimal | None = None
    quote_order_qty: Decimal | None = None
    reduce_only: bool | None = None
    close_position: bool = False
    client_order_id: str | None = None
    time_in_force: str | None = None
    working_type: str | None = None
    stop_loss: str | None = None
    take_profit: str | None = None
    price_rate: Decimal | None = None


@dataclass
class Order:
    order_id: int
    symbol: str
    side: str
    position_side: str
    type: str
    orig_qty: Decimal
    price: Decimal
    stop_price: Decimal
    time: int
    update_time: int
    leverage: int
    status: str = "NEW"
    client_order_id: str = ""
    reduce_only: bool = False
    close_position: bool = False
    time_in_force: str = "GTC"
    working_type: str = "MARK_PRICE"
    price_rate: Decimal = Decimal(0)
    stop_loss: str = ""
    take_profit: str = ""
    executed_qty: Decimal = Decimal(0)
    avg_price: Decimal = Decimal(0)
    cum_quote: Decimal = Decimal(0)
    commission: Decimal = Decimal(0)  # negative: what the order paid
    profit: Decimal = Decimal(0)  # realised PnL of the closing part, before fees
    frozen_margin: Decimal = Decimal(0)  # margin held while an opening limit order rests
    only_one_position: bool = True
    trigger_above: bool = False  # TRIGGER_* orders fire when the mark reaches stopPrice from the side it was on
    triggered: bool = False  # a STOP/TAKE_PROFIT/TRIGGER_LIMIT whose stop fired now rests as a limit at `price`
    liquidation: bool = False  # the forced close of a liquidated position

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


@dataclass
class Position:
    position_id: int
    symbol: str
    side: str  # LONG or SHORT, also in one-way mode
    qty: Decimal
    entry_price: Decimal
    open_time: int
    update_time: int
    realised: Decimal = Decimal(0)  # realised PnL net of the fees paid on this position


@dataclass(frozen=True)
class Fill:
    order_id: int
    client_order_id: str
    symbol: str
    side: str
    position_side: str
    type: str
    qty: Decimal
    price: Decimal
    commission: Decimal  # negative
    realised_pnl: Decimal
    time: int
    liquidation: bool = False

    @property
    def quote(self) -> Decimal:
        return self.qty * self.price


@dataclass(frozen=True)
class Account:
    deposits: Decimal
    realised_pnl: Decimal  # gross, before fees
    fees: Decimal
    unrealised: Decimal
    used_margin: Decimal
    frozen_margin: Decimal

    @property
    def balance(self) -> Decimal:
        return self.deposits + self.realised_pnl - self.fees

    @property
    def equity(self) -> Decimal:
        return self.balance + self.unrealised

    @property
    def raw_available(self) -> Decimal:
        return self.equity - self.used_margin - self.frozen_margin

    @property
    def available(self) -> Decimal:
        # A price move can push it below zero; BingX never reports a negative available margin.
        return max(self.raw_available, Decimal(0))


@dataclass(frozen=True)
class Liquidation:
    """A position the mark took past its liquidation price: closed at the mark, its collateral lost."""

    order_id: int
    symbol: str
    side: str
    qty: Decimal
    entry_price: Decimal
    mark_price: Decimal
    liquidation_price: Decimal
    lost: Decimal
    isolated: bool
    time: int


@dataclass(frozen=True)
class PositionView:
    """A position valued at the current mark price, as /user/positions reports it."""

    position: Position
    leverage: int
    isolated: bool
    mark_price: Decimal
    unrealised: Decimal
    margin: Decimal
    liquidation_price: Decimal
    one_way: bool

    @property
    def value(self) -> Decimal:
        return self.position.qty * self.mark_price

    @property
    def pnl_ratio(self) -> Decimal:
        return (self.unrealised / self.margin).quantize(Decimal("0.0001")) if self.margin else Decimal(0)

    @property
    def risk_rate(self) -> Decimal:
        """Maintenance margin over what backs the position; 1 means liquidation."""
        backing = self.margin + self.unrealised
        if backing <= 0:
            return Decimal(1)
        return min(self.value * MAINTENANCE_RATE / backing, Decimal(1)).quantize(Decimal("0.0001"))


@dataclass
class TickerStats:
    open_price: Decimal
    open_time: int
    high: Decimal
    low: Decimal
    volume: Decimal = Decimal(0)
    quote_volume: Decimal = Decimal(0)
    last_qty: Decimal = Decimal(0)


@dataclass(frozen=True)
class Ticker:
    symbol: str
    last: Decimal
    stats: TickerStats


@dataclass
class _Plan:
    """How a BUY/SELL splits into closing an existing position and opening (or adding to) one."""

    close: Position | None
    close_qty: Decimal
    open_side: str | None
    open_qty: Decimal


@dataclass(frozen=True)
class _Attachment:
    type: str
    stop_price: Decimal
    price: Decimal
    qty: Decimal | None
    working_type: str


@dataclass
class _Book:
    """Everything a reset throws away."""

    deposits: Decimal
    prices: dict[str, Decimal]
    markets: dict[str, Market]
    tickers: dict[str, TickerStats]
    hedged: bool = False
    leverage: dict[tuple[str, str], int] = field(default_factory=dict)
    margin_type: dict[str, str] = field(default_factory=dict)
    positions: dict[tuple[str, str], Position] = field(default_factory=dict)
    orders: list[Order] = field(default_factory=list)
    orders_by_id: dict[int, Order] = field(default_factory=dict)
    orders_by_client_id: dict[str, Order] = field(default_factory=dict)
    fills: list[Fill] = field(default_factory=list)
    liquidations: list[Liquidation] = field(default_factory=list)
    realised_pnl: Decimal = Decimal(0)
    fees: Decimal = Decimal(0)


class Engine:
    """One BingX account. Every method takes `now` (ms) from the caller, so the engine never reads a clock."""

    def __init__(self, balance: Decimal, prices: Mapping[str, Decimal], *, now: int = 0,
                 default_leverage: int = DEFAULT_LEVERAGE, first_order_id: int = FIRST_ORDER_ID) -> None:
        if balance < 0:
            raise ValueError("the starting balance cannot be negative")
        self.default_leverage = default_leverage
        self._start_balance = balance
        self._start_prices = {**BUILTIN_PRICES, **prices}
        self._next_id = first_order_id  # never rewound by a reset, so an order id is never seen twice
        self._book = _Book(deposits=balance, prices={}, markets=dict(BUILTIN_MARKETS), tickers={})
        self.set_prices(self._start_prices, now)

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def reset(self, now: int, *, balance: Decimal | None = None) -> None:
        if balance is not None:
            if balance < 0:
                raise ValueError("the starting balance cannot be negative")
            self._start_balance = balance
        self._book = _Book(deposits=self._start_balance, prices={}, markets=dict(BUILTIN_MARKETS), tickers={})
        self.set_prices(self._start_prices, now)

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    # ---- persistence -----------------------------------------------------------------------------------------

    def prune(self, now: int, *, max_age_ms: int = HISTORY_MS, keep: int = HISTORY_MAX) -> int:
        """Forget finished orders, fills and liquidations older than `max_age_ms` or beyond the latest `keep` of each.

        Open orders are always kept. Totals (balance, realised PnL, fees) are kept apart from the history, so the
        account's money is unchanged. Returns how many records were dropped.
        """
        book, cutoff = self._book, now - max_age_ms

        def recent(records: list[_R], time_of: Callable[[_R], int], finished: Callable[[_R], bool]) -> list[_R]:
            kept: list[_R] = []
            finished_kept = 0
            for record in reversed(records):
                if finished(record):
                    if finished_kept >= keep or time_of(record) < cutoff:
                        continue
                    finished_kept += 1
                kept.append(record)
            kept.reverse()
            return kept

        orders = recent(book.orders, lambda o: o.update_time, lambda o: not o.is_open)
        fills = recent(book.fills, lambda f: f.time, lambda f: True)
        liquidations = recent(book.liquidations, lambda x: x.time, lambda x: True)
        dropped = (len(book.orders) - len(orders)) + (len(book.fills) - len(fills))
        dropped += len(book.liquidations) - len(liquidations)
        if dropped:
            book.orders, book.fills, book.liquidations = orders, fills, liquidations
            book.orders_by_id = {o.order_id: o for o in orders}
            # A dropped order's client id may be used again (how long BingX holds one is not in the reference).
            book.orders_by_client_id = {o.client_order_id: o for o in orders if o.client_order_id}
        return dropped

    def to_document(self) -> dict[str, Any]:
        """The whole account as plain JSON-like data (Decimals as exact strings), for restore()."""
        book = self._book
        return {
            "version": DOCUMENT_VERSION, "next_id": self._next_id, "default_leverage": self.default_leverage,
            "start_balance": str(self._start_balance),
            "start_prices": {s: str(p) for s, p in self._start_prices.items()},
            "deposits": str(book.deposits), "realised_pnl": str(book.realised_pnl), "fees": str(book.fees),
            "hedged": book.hedged,
            "prices": {s: str(p) for s, p in book.prices.items()},
            "markets": [_encode(m) for m in book.markets.values()],
            "tickers": {s: _encode(t) for s, t in book.tickers.items()},
            "leverage": [[symbol, side, value] for (symbol, side), value in book.leverage.items()],
            "margin_type": dict(book.margin_type),
            "positions": [_encode(p) for p in book.positions.values()],
            "orders": [_encode(o) for o in book.orders],
            "fills": [_encode(f) for f in book.fills],
            "liquidations": [_encode(x) for x in book.liquidations],
        }

    def restore(self, document: Mapping[str, Any]) -> None:
        """Replace the account with a saved one; ValueError if the document is of another version."""
        if document.get("version") != DOCUMENT_VERSION:
            raise ValueError(f"saved account has version {document.get('version')}, not {DOCUMENT_VERSION}")
        orders = [_decode(Order, o) for o in document["orders"]]
        positions = [_decode(Position, p) for p in document["positions"]]
        book = _Book(
            deposits=Decimal(document["deposits"]),
            prices={s: Decimal(p) for s, p in document["prices"].items()},
            markets={m["symbol"]: _decode(Market, m) for m in document["markets"]},
            tickers={s: _decode(TickerStats, t) for s, t in document["tickers"].items()},
            hedged=bool(document["hedged"]),
            leverage={(symbol, side): int(value) for symbol, side, value in document["leverage"]},
            margin_type=dict(document["margin_type"]),
            positions={(p.symbol, p.side): p for p in positions},
            orders=orders,
            orders_by_id={o.order_id: o for o in orders},
            orders_by_client_id={o.client_order_id: o for o in orders if o.client_order_id},
            fills=[_decode(Fill, f) for f in document["fills"]],
            liquidations=[_decode(Liquidation, x) for x in document["liquidations"]],
            realised_pnl=Decimal(document["realised_pnl"]),
            fees=Decimal(document["fees"]),
        )
        self._book = book
        self._start_balance = Decimal(document["start_balance"])
        self._start_prices = {s: Decimal(p) for s, p in document["start_prices"].items()}
        self.default_leverage = int(document["default_leverage"])
        # Never hand out an id the saved account (or this run) already used.
        self._next_id = max(self._next_id, int(document["next_id"]))

    # ---- markets and prices ----------------------------------------------------------------------------------

    @property
    def markets(self) -> list[Market]:
        return list(self._book.markets.values())

    def market(self, symbol: str | None) -> Market:
        if not symbol:
            raise bad_parameter("symbol is required")
        market = self._book.markets.get(symbol)
        if market is None:
            raise BingxError(109425, f"{symbol} not exist, please verify it")
        return market

    def price(self, symbol: str) -> Decimal:
        return self._book.prices[symbol]

    @property
    def prices(self) -> dict[str, Decimal]:
        return dict(self._book.prices)

    def set_prices(self, prices: Mapping[str, Decimal], now: int) -> None:
        """Move marks (a symbol not yet listed becomes a generic market), then run what the new marks trigger."""
        staged: list[tuple[Market, Decimal]] = []
        for symbol, price in prices.items():
            if not is_symbol(symbol):
                raise ValueError(f"{symbol!r} is not a USDT-M symbol like BTC-USDT")
            if not price.is_finite() or price <= 0:
                raise ValueError(f"the price of {symbol} must be a positive number")
            market = self._book.markets.get(symbol) or generic_market(
                symbol, price, str(100 + len(self._book.markets) + len(staged)))
            # Marks sit on the market's tick, so what is shown is exactly what fills and PnL use.
            price = price.quantize(market.tick, rounding=ROUND_HALF_UP)
            if price <= 0:
                raise ValueError(f"the price of {symbol} is below the market's tick of {market.tick}")
            staged.append((market, price))
        moves: list[tuple[str, Decimal]] = []
        for market, price in staged:  # all or nothing: a bad entry leaves every price as it was
            self._book.markets.setdefault(market.symbol, market)
            moves.append((market.symbol, self._book.prices.get(market.symbol, price)))
            self._book.prices[market.symbol] = price
            stats = self._book.tickers.get(market.symbol)
            if stats is None:
                self._book.tickers[market.symbol] = TickerStats(open_price=price, open_time=now, high=price, low=price)
            else:
                stats.high, stats.low = max(stats.high, price), min(stats.low, price)
        for symbol, previous in moves:
            self._run_triggers(symbol, previous, now)
        # In cross margin any move changes every position's liquidation price, so all are checked.
        while self._liquidate_one(None, now):
            pass

    def ticker(self, symbol: str) -> Ticker:
        market = self.market(symbol)
        return Ticker(market.symbol, self._book.prices[market.symbol], self._book.tickers[market.symbol])

    # ---- account ---------------------------------------------------------------------------------------------

    @property
    def hedged(self) -> bool:
        return self._book.hedged

    @property
    def deposits(self) -> Decimal:
        return self._book.deposits

    def account(self) -> Account:
        views = self._position_views_without_liquidation()
        return Account(
            deposits=self._book.deposits,
            realised_pnl=self._book.realised_pnl,
            fees=self._book.fees,
            unrealised=sum((v.unrealised for v in views), Decimal(0)),
            used_margin=sum((v.margin for v in views), Decimal(0)),
            frozen_margin=sum((o.frozen_margin for o in self._book.orders if o.is_open), Decimal(0)),
        )

    def leverage(self, symbol: str, side: str) -> int:
        return self._book.leverage.get((symbol, side), self.default_leverage)

    def margin_type(self, symbol: str) -> str:
        return self._book.margin_type.get(symbol, "CROSSED")

    def set_position_mode(self, hedged: bool) -> None:
        if self._book.hedged != hedged and (self._book.positions or self.open_orders()):
            raise _busy_account()
        self._book.hedged = hedged

    def set_margin_type(self, symbol: str, margin_type: str) -> None:
        self.market(symbol)
        margin_type = margin_type.upper()
        if margin_type not in MARGIN_TYPES:
            raise bad_parameter("marginType must be ISOLATED, CROSSED or SEPARATE_ISOLATED")
        if margin_type != self.margin_type(symbol) and (
            any(s == symbol for s, _ in self._book.positions) or self.open_orders(symbol)
        ):
            raise _busy_account()
        self._book.margin_type[symbol] = margin_type

    def set_leverage(self, symbol: str, side: str, leverage: int) -> None:
        if symbol not in self._book.markets:
            raise BingxError(109500, "symbol not exist")
        market = self._book.markets[symbol]
        side = side.upper()
        if self._book.hedged and side not in ("LONG", "SHORT"):
            raise BingxError(109400, "In the Hedge mode, the 'Side' field can only be set to LONG or SHORT.")
        if not self._book.hedged and side != "BOTH":
            raise BingxError(109400, "In the One-way mode, the 'Side' field can only be set to BOTH.")
        if not 1 <= leverage <= market.max_leverage:
            raise BingxError(109400, f"leverage must be between 1 and {market.max_leverage}")
        sides = ("LONG", "SHORT") if side == "BOTH" else (side,)
        before = {s: self.leverage(symbol, s) for s in sides}
        for s in sides:
            self._book.leverage[(symbol, s)] = leverage
        # A resting opening order fills at the side's leverage of the moment, so what it holds follows the leverage:
        # otherwise an order frozen at 20x could fill at 2x with ten times the margin the account was asked for.
        refrozen = [(o, o.frozen_margin, o.leverage) for o in self.open_orders(symbol)
                    if o.frozen_margin and (o.position_side in sides or not self._book.hedged)]
        for order, frozen, placed_at in refrozen:
            order.frozen_margin, order.leverage = _money(frozen * placed_at / leverage), leverage
        # A lower leverage on an open position or order needs more margin: refuse it rather than go below zero.
        if self.account().raw_available < 0:
            for s, value in before.items():
                self._book.leverage[(symbol, s)] = value
            for order, frozen, placed_at in refrozen:
                order.frozen_margin, order.leverage = frozen, placed_at
            raise BingxError(101204, "Insufficient margin")

    # ---- positions -------------------------------------------------------------------------------------------

    def positions(self, symbol: str | None = None) -> list[PositionView]:
        views = self._position_views_without_liquidation()
        if symbol is not None:
            views = [v for v in views if v.position.symbol == symbol]
        raw_available = self.account().raw_available
        return [self._with_liquidation(v, raw_available) for v in views]

    def _position_views_without_liquidation(self) -> list[PositionView]:
        views = []
        for position in self._book.positions.values():
            mark = self._book.prices[position.symbol]
            leverage = self.leverage(position.symbol, position.side)
            direction = 1 if position.side == "LONG" else -1
            views.append(PositionView(
                position=position,
                leverage=leverage,
                isolated=self.margin_type(position.symbol) != "CROSSED",
                mark_price=mark,
                unrealised=(mark - position.entry_price) * position.qty * direction,
                margin=self._margin(position.symbol, position.side, position.qty, position.entry_price),
                liquidation_price=Decimal(0),
                one_way=not self._book.hedged,
            ))
        return views

    @staticmethod
    def _collateral(view: PositionView, raw_available: Decimal) -> Decimal:
        """What stands behind a position, and so what its liquidation loses."""
        if view.isolated:
            return view.margin
        # In cross mode the free margin of the whole account also stands behind the position.
        return view.margin + max(raw_available - view.unrealised, Decimal(0))

    def _with_liquidation(self, view: PositionView, raw_available: Decimal) -> PositionView:
        """The mark at which the position's collateral falls to maintenance margin."""
        position = view.position
        collateral = self._collateral(view, raw_available)
        cost = position.entry_price * position.qty
        if position.side == "LONG":
            price = (cost - collateral) / (position.qty * (1 - MAINTENANCE_RATE))
        else:
            price = (cost + collateral) / (position.qty * (1 + MAINTENANCE_RATE))
        tick = self._book.markets[position.symbol].tick
        price = max(price, Decimal(0)).quantize(tick, rounding=ROUND_HALF_UP)
        return PositionView(**{**view.__dict__, "liquidation_price": price})

    # ---- orders ----------------------------------------------------------------------------------------------

    def open_orders(self, symbol: str | None = None) -> list[Order]:
        return [o for o in self._book.orders if o.is_open and (symbol is None or o.symbol == symbol)]

    def all_orders(self, symbol: str | None = None) -> list[Order]:
        return [o for o in self._book.orders if symbol is None or o.symbol == symbol]

    @property
    def fills(self) -> list[Fill]:
        return list(self._book.fills)

    @property
    def liquidations(self) -> list[Liquidation]:
        return list(self._book.liquidations)

    def find_order(self, symbol: str | None, order_id: int | None, client_order_id: str | None) -> Order | None:
        order = None
        if order_id is not None:
            order = self._book.orders_by_id.get(order_id)
        elif client_order_id:
            order = self._book.orders_by_client_id.get(client_order_id.lower())
        if order is not None and symbol and order.symbol != symbol:
            return None
        return order

    def cancel_order(self, symbol: str | None, order_id: int | None, client_order_id: str | None, now: int) -> Order:
        order = self.find_order(symbol, order_id, client_order_id)
        if order is None:
            raise BingxError(109414, "order not exist")
        if not order.is_open:
            state = "filled" if order.status == "FILLED" else "cancelled"
            raise BingxError(80018, f"order is already {state}")
        self._cancel(order, now)
        return order

    def cancel_all(self, symbol: str | None, now: int) -> list[Order]:
        orders = self.open_orders(symbol)
        for order in orders:
            self._cancel(order, now)
        return orders

    def _cancel(self, order: Order, now: int, status: str = "CANCELLED") -> None:
        order.status = status
        order.update_time = now
        order.frozen_margin = Decimal(0)

    def close_all_positions(self, symbol: str | None, now: int) -> list[int]:
        """Market-close every position (of one symbol, if given); returns the ids of the closing orders."""
        ids = []
        for (sym, side), position in list(self._book.positions.items()):
            if symbol is not None and sym != symbol:
                continue
            hedged = self._book.hedged
            request = OrderRequest(
                symbol=sym, side="SELL" if side == "LONG" else "BUY", type="MARKET",
                position_side=side if hedged else "BOTH", quantity=position.qty,
                reduce_only=None if hedged else True,
            )
            ids.append(self.place_order(request, now).order_id)
        return ids

    def close_position(self, position_id: int, now: int) -> tuple[Order, Position]:
        """Market-close one whole position by its id (POST /v1/trade/closePosition); 80017 if there is none."""
        for (symbol, side), position in self._book.positions.items():
            if position.position_id == position_id:
                break
        else:
            raise BingxError(80017, "position not exist")
        hedged = self._book.hedged
        request = OrderRequest(
            symbol=symbol, side="SELL" if side == "LONG" else "BUY", type="MARKET",
            position_side=side if hedged else "BOTH", quantity=position.qty, reduce_only=None if hedged else True,
        )
        return self.place_order(request, now), position

    def place_order(self, request: OrderRequest, now: int, *, test: bool = False) -> Order:
        """Validate as BingX does, then fill a MARKET (or marketable LIMIT) order at the mark, or let it rest.

        With `test` (POST /trade/order/test) every check runs but nothing is placed: the order that would have been
        created is returned as it stood before any fill, and the account is untouched.
        """
        market = self.market(request.symbol)
        side = request.side.upper()
        if side not in ("BUY", "SELL"):
            raise bad_parameter("side must be BUY or SELL")
        order_type = request.type.upper()
        if order_type not in ORDER_TYPES:
            raise bad_parameter(f"type {request.type} is not supported")
        position_side = self._position_side(request)
        client_order_id = self._client_order_id(request.client_order_id)
        time_in_force = (request.time_in_force or "GTC").upper()
        if time_in_force not in TIMES_IN_FORCE:
            raise bad_parameter("timeInForce must be GTC, IOC, FOK or PostOnly")
        price, stop_price = self._prices_of(request, order_type, market)
        attached = [self._attached(raw, name, market) for raw, name in
                    ((request.stop_loss, "stopLoss"), (request.take_profit, "takeProfit")) if raw]

        mark = self._book.prices[market.symbol]
        reference = price if order_type == "LIMIT" else mark
        if attached:
            # Attached protection guards the position the order opens, measured from where it opens it.
            entry = price if order_type in PRICED_TYPES else (stop_price or mark)
            for attachment in attached:
                self._check_trigger_side(attachment.type, attachment.stop_price, "LONG" if side == "BUY" else "SHORT",
                                         entry, "order")
        if order_type in CLOSING_TYPES:
            if self._book.hedged:
                protected = position_side
            else:
                protected = "LONG" if side == "SELL" else "SHORT"
            if request.close_position:
                self._check_no_position_protection(market.symbol, order_type, protected)
            self._check_trigger_side(order_type, stop_price, protected, mark, "current")
        reduce_only = bool(request.reduce_only) and not self._book.hedged
        # First only to learn which position the order would close; the real split needs the quantity.
        target = self._plan(market.symbol, side, position_side, Decimal(0), close_only=False)
        close_only = reduce_only or request.close_position or (self._book.hedged and target.open_side is None)
        qty = self._quantity(request, market, target, reference)
        conditional = order_type in CONDITIONAL_TYPES
        if not conditional and close_only and target.close is None:
            if reduce_only and self._position_of(market.symbol) is not None:
                raise BingxError(101290, "Reduce Only order can only reduce your position")
            raise BingxError(101205, "No position to close")
        if not request.close_position:
            self._check_minimums(market, qty, reference, opening=not close_only)

        plan = self._plan(market.symbol, side, position_side, qty, close_only=close_only)
        if self._book.hedged:
            leverage_side = position_side
        else:
            leverage_side = plan.close.side if plan.close else ("LONG" if side == "BUY" else "SHORT")
        leverage = self.leverage(market.symbol, leverage_side)
        marketable = order_type == "MARKET" or (
            order_type == "LIMIT" and (price >= mark if side == "BUY" else price <= mark)
        )
        frozen = Decimal(0)
        if order_type == "LIMIT" and marketable and time_in_force == "POSTONLY":
            raise BingxError(101215, "The Maker (Post Only) order ordered will be matched immediately as a taker")
        if not conditional and marketable:
            self._require_margin_for_fill(market.symbol, plan, mark)
        elif order_type == "LIMIT" and plan.open_qty > 0:
            frozen = _money(plan.open_qty * price / leverage)
            if self.account().raw_available < frozen:
                raise BingxError(101204, "Insufficient margin")

        order = Order(
            # A test order takes an id too, so no real order ever shows the id a test answer showed.
            order_id=self._new_id(), symbol=market.symbol, side=side, position_side=position_side,
            type=order_type, orig_qty=qty, price=price, stop_price=stop_price, time=now, update_time=now,
            leverage=leverage, client_order_id=client_order_id or "", reduce_only=reduce_only,
            close_position=request.close_position, time_in_force=time_in_force,
            working_type=(request.working_type or "MARK_PRICE").upper(), price_rate=request.price_rate or Decimal(0),
            stop_loss=request.stop_loss or "", take_profit=request.take_profit or "",
            frozen_margin=frozen, only_one_position=not self._book.hedged, trigger_above=stop_price > mark,
        )
        if test:
            return order
        self._book.orders.append(order)
        self._book.orders_by_id[order.order_id] = order
        if client_order_id:
            self._book.orders_by_client_id[client_order_id] = order

        if not conditional and marketable:
            self._fill(order, plan, mark, now)
            if plan.open_qty > 0:
                for attachment in attached:
                    self._attach(order, attachment, now)
        elif order_type == "LIMIT" and time_in_force in ("IOC", "FOK"):
            self._cancel(order, now)  # no book to match against, so what cannot fill now expires unfilled
        return order

    @staticmethod
    def _prices_of(request: OrderRequest, order_type: str, market: Market) -> tuple[Decimal, Decimal]:
        price = Decimal(0)
        if order_type in PRICED_TYPES:
            if request.price is None or request.price <= 0:
                raise bad_parameter("price is required for this order type")
            price = market.truncate_price(request.price)
        elif order_type == "TRAILING_STOP_MARKET" and request.price is not None:
            price = request.price  # the trailing distance in USDT
        stop_price = Decimal(0)
        if order_type in TRIGGERED_TYPES:
            if request.stop_price is None or request.stop_price <= 0:
                raise bad_parameter("stopPrice is required for this order type")
            stop_price = market.truncate_price(request.stop_price)
        return price, stop_price

    @staticmethod
    def _quantity(request: OrderRequest, market: Market, target: _Plan, reference: Decimal) -> Decimal:
        if request.close_position:
            return target.close.qty if target.close is not None else Decimal(0)
        if request.quote_order_qty is not None:
            if request.quote_order_qty <= 0:
                raise bad_parameter("quoteOrderQty must be greater than 0")
            return market.truncate_qty(request.quote_order_qty / reference)
        if request.quantity is None:
            raise bad_parameter("quantity is required")
        if request.quantity <= 0:
            raise bad_parameter("quantity must be greater than 0")
        return market.truncate_qty(request.quantity)

    @staticmethod
    def _check_minimums(market: Market, qty: Decimal, reference: Decimal, *, opening: bool) -> None:
        # A pure close may be smaller than the minimums (what is left of a position must stay closable).
        if qty < market.step or (opening and qty < market.min_qty):
            raise BingxError(101400, f"The minimum order amount is {market.min_qty} {market.base}.")
        if opening and qty * reference < market.min_notional:
            raise BingxError(101400, f"The order's minimum nominal value must be greater than {market.min_notional}u.")

    @staticmethod
    def _check_trigger_side(order_type: str, trigger: Decimal, protected: str, reference: Decimal, what: str) -> None:
        """A stop-loss must sit on the losing side of `reference` and a take-profit on the winning side, as BingX says.

        110411 is a stop-loss on the wrong side, 110412 a take-profit on the wrong side, 110413 a trigger at the price.
        """
        long = protected == "LONG"
        if order_type in STOP_TYPES:
            kind, code, below = "stop loss", 110411, long
        elif order_type in TAKE_PROFIT_TYPES:
            kind, code, below = "take profit", 110412, not long
        else:
            return
        if trigger == reference:
            raise BingxError(110413, f"The {kind} trigger price cannot be equal to the {what} price {reference}")
        if (trigger > reference) if below else (trigger < reference):
            relation = "lower" if below else "higher"
            side = "long" if long else "short"
            raise BingxError(code, f"The {kind} trigger price of a {side} position must be {relation} than the "
                                   f"{what} price {reference}")

    def _check_no_position_protection(self, symbol: str, order_type: str, protected: str) -> None:
        """A position has at most one whole-position (closePosition) stop-loss and one take-profit."""
        family = STOP_TYPES if order_type in STOP_TYPES else TAKE_PROFIT_TYPES
        for order in self.open_orders(symbol):
            if not (order.close_position and order.type in family):
                continue
            if self._book.hedged:
                same = order.position_side == protected
            else:
                same = order.side == ("SELL" if protected == "LONG" else "BUY")
            if same:
                if family is STOP_TYPES:
                    raise BingxError(110406, "The position already has a stop loss order, please cancel it first")
                raise BingxError(110407, "The position already has a take profit order, please cancel it first")

    def _position_side(self, request: OrderRequest) -> str:
        given = (request.position_side or "").upper()
        if self._book.hedged:
            given = given or "LONG"
            if given not in ("LONG", "SHORT"):
                raise BingxError(109400, "In the Hedge mode, the 'PositionSide' field can only be set to LONG or SHORT.")
            if request.reduce_only:
                raise BingxError(109400, "In the Hedge mode, the 'ReduceOnly' field can not be filled.")
            return given
        given = given or "BOTH"
        if given != "BOTH":
            raise BingxError(109400, "In the One-way mode, the 'PositionSide' field can only be set to BOTH.")
        return given

    def _client_order_id(self, raw: str | None) -> str | None:
        if raw is None:
            return None
        # BingX stores client ids lower-cased, so a resend in another case is still a duplicate.
        client_order_id = raw.lower()
        if not 1 <= len(client_order_id) <= 40:
            raise bad_parameter("clientOrderID must be 1 to 40 characters")
        if client_order_id in self._book.orders_by_client_id:
            raise BingxError(101481, "clientOrderID cannot be repeated")
        return client_order_id

    def _attached(self, raw: str, name: str, market: Market) -> _Attachment:
        """Validate an attached stopLoss/takeProfit (compact JSON, as ccxt sends it) before anything fills."""
        try:
            spec = json.loads(raw)
        except ValueError:
            raise bad_parameter(f"{name} must be a JSON object") from None
        if not isinstance(spec, dict):
            raise bad_parameter(f"{name} must be a JSON object")

        def number(key: str, required: bool) -> Decimal | None:
            value = spec.get(key)
            if value in (None, "") and not required:
                return None
            try:
                result = Decimal(str(value))
            except InvalidOperation:
                raise bad_parameter(f"{name}.{key} must be a number") from None
            if not result.is_finite() or result < 0 or (required and result == 0):
                raise bad_parameter(f"{name}.{key} must be greater than 0")
            return result

        stop_price = number("stopPrice", True)
        assert stop_price is not None
        price, qty = number("price", False), number("quantity", False)
        default_type = "STOP_MARKET" if name == "stopLoss" else "TAKE_PROFIT_MARKET"
        order_type = str(spec.get("type") or default_type).upper()
        return _Attachment(
            type=order_type if order_type in TRIGGERED_TYPES else default_type,
            stop_price=market.truncate_price(stop_price),
            price=market.truncate_price(price) if price else Decimal(0),
            qty=market.truncate_qty(qty) if qty else None,
            working_type=str(spec.get("workingType") or "MARK_PRICE").upper(),
        )

    def _position_of(self, symbol: str) -> Position | None:
        for side in ("LONG", "SHORT"):
            position = self._book.positions.get((symbol, side))
            if position is not None:
                return position
        return None

    def _plan(self, symbol: str, side: str, position_side: str, qty: Decimal, *, close_only: bool) -> _Plan:
        if self._book.hedged:
            # In hedge mode the pair side x positionSide says whether the order opens or closes.
            opening = (side, position_side) in (("BUY", "LONG"), ("SELL", "SHORT"))
            if opening:
                # A stop-loss or take-profit sent with the opening pair (BUY+LONG) has nothing to close: it never opens.
                return _Plan(None, Decimal(0), None if close_only else position_side, Decimal(0) if close_only else qty)
            position = self._book.positions.get((symbol, position_side))
            return _Plan(position, min(qty, position.qty) if position else Decimal(0), None, Decimal(0))
        direction = "LONG" if side == "BUY" else "SHORT"
        position = self._position_of(symbol)
        if position is None or position.side == direction:
            if close_only:
                return _Plan(None, Decimal(0), None, Decimal(0))
            return _Plan(None, Decimal(0), direction, qty)
        close_qty = min(qty, position.qty)
        open_qty = Decimal(0) if close_only else qty - close_qty
        return _Plan(position, close_qty, direction if open_qty > 0 else None, open_qty)

    def _margin(self, symbol: str, side: str, qty: Decimal, entry: Decimal) -> Decimal:
        return _money(qty * entry / self.leverage(symbol, side))

    def _require_margin_for_fill(self, symbol: str, plan: _Plan, price: Decimal) -> None:
        """Refuse a fill that would leave the available margin below zero (a close is never refused)."""
        if plan.open_qty <= 0:
            return
        # Filling at the mark changes equity only by the fee; used margin changes by exactly what _fill will do.
        change = -(plan.close_qty + plan.open_qty) * price * TAKER_FEE
        if plan.close is not None:
            closing = plan.close
            change += self._margin(symbol, closing.side, closing.qty, closing.entry_price)
            change -= self._margin(symbol, closing.side, closing.qty - plan.close_qty, closing.entry_price)
        assert plan.open_side is not None
        held = self._book.positions.get((symbol, plan.open_side))
        held_qty, held_entry = (held.qty, held.entry_price) if held else (Decimal(0), price)
        total = held_qty + plan.open_qty
        entry = _money((held_entry * held_qty + price * plan.open_qty) / total)
        change -= self._margin(symbol, plan.open_side, total, entry)
        change += self._margin(symbol, plan.open_side, held_qty, held_entry)
        if self.account().raw_available + change < 0:
            raise BingxError(101204, "Insufficient margin")

    def _fill(self, order: Order, plan: _Plan, price: Decimal, now: int, fee_rate: Decimal = TAKER_FEE) -> None:
        book = self._book
        realised = Decimal(0)
        if plan.close is not None and plan.close_qty > 0:
            position = plan.close
            direction = 1 if position.side == "LONG" else -1
            realised = (price - position.entry_price) * plan.close_qty * direction
            position.qty -= plan.close_qty
            position.realised += realised - plan.close_qty * price * fee_rate
            position.update_time = now
            if position.qty == 0:
                del book.positions[(position.symbol, position.side)]
                self._cancel_protection(position, now)
        if plan.open_side is not None and plan.open_qty > 0:
            key = (order.symbol, plan.open_side)
            position = book.positions.get(key)
            if position is None:
                position = Position(self._new_id(), order.symbol, plan.open_side, Decimal(0), price, now, now)
                book.positions[key] = position
            total = position.qty + plan.open_qty
            position.entry_price = _money((position.entry_price * position.qty + price * plan.open_qty) / total)
            position.qty = total
            position.realised -= plan.open_qty * price * fee_rate
            position.update_time = now
        executed = plan.close_qty + plan.open_qty
        fee = executed * price * fee_rate
        order.frozen_margin = Decimal(0)
        book.realised_pnl += realised
        book.fees += fee
        order.status = "FILLED"
        order.executed_qty = executed
        order.avg_price = price
        order.cum_quote = executed * price
        order.commission = -fee
        order.profit = realised
        order.update_time = now
        if order.type == "MARKET":
            order.price = price
        stats = book.tickers[order.symbol]
        stats.volume += executed
        stats.quote_volume += executed * price
        stats.last_qty = executed
        book.fills.append(Fill(order.order_id, order.client_order_id, order.symbol, order.side,
                               order.position_side, order.type, executed, price, -fee, realised, now))

    def _cancel_protection(self, position: Position, now: int) -> None:
        """A position's stop-loss and take-profit orders go when the position goes, as on BingX."""
        closing_side = "SELL" if position.side == "LONG" else "BUY"
        for order in self.open_orders(position.symbol):
            protective = (
                order.type in CONDITIONAL_TYPES and order.side == closing_side
                and order.position_side in (position.side, "BOTH")
                # In one-way mode only a reduce-only/closePosition order belongs to the position.
                and (self._book.hedged or order.reduce_only or order.close_position)
            )
            if protective:
                self._cancel(order, now)

    def _attach(self, parent: Order, attachment: _Attachment, now: int) -> None:
        """Turn an attached stopLoss/takeProfit into the conditional order BingX creates after the fill."""
        child = Order(
            order_id=self._new_id(), symbol=parent.symbol, side="SELL" if parent.side == "BUY" else "BUY",
            position_side=parent.position_side, type=attachment.type,
            orig_qty=attachment.qty or parent.executed_qty, price=attachment.price,
            stop_price=attachment.stop_price, time=now, update_time=now, leverage=parent.leverage,
            reduce_only=not self._book.hedged, working_type=attachment.working_type,
            only_one_position=parent.only_one_position,
        )
        self._book.orders.append(child)
        self._book.orders_by_id[child.order_id] = child

    # ---- what a price move triggers --------------------------------------------------------------------------

    def _run_triggers(self, symbol: str, previous: Decimal, now: int) -> None:
        """Fire what the move from `previous` crossed, nearest level first, as a continuous move would have.

        One event at a time, because each fill can attach or cancel orders and moves liquidation prices.
        """
        while True:
            mark = self._book.prices[symbol]
            events: list[tuple[Decimal, int, Order | None]] = []
            for order in self.open_orders(symbol):
                level = self._crossed_level(order, mark)
                if level is not None:
                    events.append((abs(level - previous), 0, order))
            liquidation = self._liquidation_level(symbol)
            if liquidation is not None:
                events.append((abs(liquidation - previous), 1, None))
            if not events:
                return
            # min() keeps the first of equals: orders in the order they were placed, then liquidation.
            _, _, order = min(events, key=lambda event: (event[0], event[1]))
            if order is None:
                self._liquidate_one(symbol, now)
            else:
                self._execute(order, mark, now)

    @staticmethod
    def _crossed_level(order: Order, mark: Decimal) -> Decimal | None:
        """The price level of `order` that `mark` has reached, or None if it has not (or is not simulated)."""
        if order.type == "LIMIT" or order.triggered:
            level = order.price
            hit = mark <= level if order.side == "BUY" else mark >= level
        elif order.type in STOP_TYPES:  # a stop-loss: a long's sells below, a short's buys above
            level = order.stop_price
            hit = mark <= level if order.side == "SELL" else mark >= level
        elif order.type in TAKE_PROFIT_TYPES:
            level = order.stop_price
            hit = mark >= level if order.side == "SELL" else mark <= level
        elif order.type in ("TRIGGER_MARKET", "TRIGGER_LIMIT"):
            level = order.stop_price
            hit = mark >= level if order.trigger_above else mark <= level
        else:
            return None  # trailing orders are accepted and rest, but are not simulated
        return level if hit else None

    def _execute(self, order: Order, mark: Decimal, now: int) -> None:
        """Fill (or arm) an order whose level the mark crossed."""
        if order.type in PRICED_TYPES - {"LIMIT"} and not order.triggered:
            # The stop fired: from now on it is a limit order, which fills at once only if marketable.
            order.triggered, order.update_time = True, now
            if not (order.price >= mark if order.side == "BUY" else order.price <= mark):
                return
            price, fee_rate = mark, TAKER_FEE
        elif order.type == "LIMIT" or order.triggered:
            # A resting limit is hit at its own price, as a maker (a gap past it does not improve the fill).
            price, fee_rate = order.price, MAKER_FEE
        else:
            price, fee_rate = mark, TAKER_FEE  # a fired stop is a market order at the mark
        hedged = self._book.hedged
        closing_pair = (order.side, order.position_side) in (("SELL", "LONG"), ("BUY", "SHORT"))
        close_only = (order.reduce_only or order.close_position or order.type in CLOSING_TYPES
                      or (hedged and closing_pair))
        target = self._plan(order.symbol, order.side, order.position_side, Decimal(0), close_only=False)
        qty = order.orig_qty
        if order.close_position:
            qty = target.close.qty if target.close is not None else Decimal(0)
        plan = self._plan(order.symbol, order.side, order.position_side, qty, close_only=close_only)
        if plan.close_qty + plan.open_qty == 0:
            self._cancel(order, now)  # its position is gone: a reduce-only order has nothing left to do
            return
        # A resting LIMIT's margin was frozen when it was placed (and _fill releases it); a fired trigger order,
        # which froze nothing, must find its margin now or fail as BingX's do.
        if plan.open_qty > 0 and order.type != "LIMIT":
            try:
                self._require_margin_for_fill(order.symbol, plan, price)
            except BingxError:
                self._cancel(order, now, status="FAILED")
                return
        self._fill(order, plan, price, now, fee_rate)
        if plan.open_qty > 0:
            market = self._book.markets[order.symbol]
            for raw, name in ((order.stop_loss, "stopLoss"), (order.take_profit, "takeProfit")):
                if raw:
                    self._attach(order, self._attached(raw, name, market), now)

    def _liquidation_level(self, symbol: str) -> Decimal | None:
        for view in self.positions(symbol):
            if self._past_liquidation(view):
                return view.liquidation_price
        return None

    @staticmethod
    def _past_liquidation(view: PositionView) -> bool:
        if view.position.side == "LONG":
            return view.liquidation_price > 0 and view.mark_price <= view.liquidation_price
        return view.mark_price >= view.liquidation_price

    def _liquidate_one(self, symbol: str | None, now: int) -> bool:
        """Close the first position past its liquidation price at the mark; its whole collateral is lost."""
        raw_available = self.account().raw_available
        for view in self.positions(symbol):
            if self._past_liquidation(view):
                self._liquidate(view, self._collateral(view, raw_available), now)
                return True
        return False

    def _liquidate(self, view: PositionView, lost: Decimal, now: int) -> None:
        book, position, mark = self._book, view.position, view.mark_price
        hedged = book.hedged
        order = Order(
            order_id=self._new_id(), symbol=position.symbol, side="SELL" if position.side == "LONG" else "BUY",
            position_side=position.side if hedged else "BOTH", type="MARKET", orig_qty=position.qty, price=mark,
            stop_price=Decimal(0), time=now, update_time=now, leverage=view.leverage, status="FILLED",
            reduce_only=not hedged, executed_qty=position.qty, avg_price=mark, cum_quote=position.qty * mark,
            profit=-lost, only_one_position=not hedged, liquidation=True,
        )
        book.orders.append(order)
        book.orders_by_id[order.order_id] = order
        # The loss is the collateral, not the move: the maintenance margin left at the liquidation price is
        # BingX's (its insurance fund), and a gap past the bankruptcy price costs no more than the collateral.
        book.realised_pnl -= lost
        position.realised -= lost
        del book.positions[(position.symbol, position.side)]
        self._cancel_protection(position, now)
        book.fills.append(Fill(order.order_id, "", position.symbol, order.side, order.position_side, "MARKET",
                               position.qty, mark, Decimal(0), -lost, now, liquidation=True))
        book.liquidations.append(Liquidation(order.order_id, position.symbol, position.side, position.qty,
                                             position.entry_price, mark, view.liquidation_price, lost,
                                             view.isolated, now))


# ---- saving dataclasses as plain data ------------------------------------------------------------------------------

_T = TypeVar("_T")
_R = TypeVar("_R")


def _encode(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Decimal):
        return str(value)  # a string keeps every digit; a float or Decimal128 might not
    return value


def _decode(cls: type[_T], raw: Mapping[str, Any]) -> _T:
    hints = get_type_hints(cls)
    values = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name in raw:
            value = raw[f.name]
            values[f.name] = Decimal(value) if hints[f.name] is Decimal else value
    return cls(**values)
