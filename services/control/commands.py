"""Telegram's door onto the control functions: a command table with no Telegram in it (the adapter is telegram.py).

Only the users in TELEGRAM_ADMIN_IDS are served; anyone else is refused without an answer and logged. A command
older than STALE_AFTER_S (Telegram delivers what it held back after downtime) is dropped, never run late: an old
`/autotrade on` must not turn trading on an hour after it was sent. Every answer is HTML with every value escaped.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from html import escape

from services.control import handlers
from services.control.handlers import ControlDeps
from shared.contracts import KillSwitchMode
from shared.messaging import PublishFailed

log = logging.getLogger(__name__)

STALE_AFTER_S = 60.0

HELP = (
    "<b>Commands</b>\n"
    "/autotrade on | off | status — trade or halt (on refuses while signals wait; /autotrade on force)\n"
    "/entries_off — closes only, nothing opens\n"
    "/flatten — cancel every order and close every position, then halt (asks for a confirmation)\n"
    "/status — mode, who set it, backlog, executors, latest signal and order\n"
    "/orders — the latest orders\n"
    "/positions, /balance — as an executor last read them at BingX\n"
    "/help — this list"
)


@dataclass(frozen=True)
class Command:
    user_id: int
    text: str
    sent_at: datetime


@dataclass
class CommandTable:
    deps: ControlDeps
    admins: frozenset[int]

    async def run(self, command: Command, now: datetime) -> str | None:
        """The answer to send back, or None when nothing may be said (a stranger, a stale command)."""
        words = command.text.strip().split()
        name = words[0].split("@", 1)[0].lower() if words else ""
        if command.user_id not in self.admins:
            log.warning("telegram command refused: the sender is not an admin", extra={"user_id": command.user_id, "command": name[:32]})
            return None
        age = (now - command.sent_at).total_seconds()
        if age > STALE_AFTER_S:
            log.warning("telegram command dropped: too old to run", extra={"user_id": command.user_id, "command": name[:32], "age_s": round(age, 1)})
            return None
        action = self._commands().get(name)
        if action is None:
            return f"Unknown command {escape(name[:32])}. /help lists them."
        log.info("telegram command", extra={"user_id": command.user_id, "command": name})
        try:
            return await action(command, words[1:])
        except PublishFailed as error:
            return f"Saved, but not yet sent to the services ({escape(str(error))}); it goes out as soon as the broker takes it."
        except handlers.ConcurrentChange as error:
            return escape(str(error))

    def _commands(self) -> dict[str, Callable[[Command, list[str]], Awaitable[str]]]:
        return {"/autotrade": self._autotrade, "/entries_off": self._entries_off, "/flatten": self._flatten,
                "/status": self._status, "/orders": self._orders, "/positions": self._positions, "/balance": self._balance,
                "/help": self._help, "/start": self._help}

    @staticmethod
    def _actor(command: Command) -> str:
        return f"telegram:{command.user_id}"

    async def _set(self, command: Command, mode: KillSwitchMode, reason: str, force: bool = False) -> str:
        try:
            state = await handlers.set_mode(self.deps, mode, actor=self._actor(command), reason=reason, force=force)
        except handlers.BacklogNotEmpty as error:
            return f"⛔ Not turned on: {escape(str(error))}. Send <code>/autotrade on force</code> to turn it on anyway."
        except handlers.BacklogUnknown as error:
            return f"⛔ Not turned on: {escape(str(error))}. Send <code>/autotrade on force</code> to turn it on anyway."
        forced = " (forced)" if state.forced else ""
        return f"Mode <b>{escape(state.mode.value)}</b>{forced}, version {state.version}."

    async def _autotrade(self, command: Command, args: list[str]) -> str:
        what = args[0].lower() if args else "status"
        if what == "on":
            force = len(args) > 1 and args[1].lower() == "force"
            return await self._set(command, KillSwitchMode.RUNNING, "/autotrade on" + (" force" if force else ""), force)
        if what == "off":
            return await self._set(command, KillSwitchMode.HALTED, "/autotrade off")
        if what == "status":
            return await self._status(command, [])
        return "Use /autotrade on, /autotrade off or /autotrade status."

    async def _entries_off(self, command: Command, args: list[str]) -> str:
        return await self._set(command, KillSwitchMode.ENTRIES_OFF, "/entries_off")

    async def _flatten(self, command: Command, args: list[str]) -> str:
        if not args:
            code = await handlers.ask_flatten(self.deps, actor=self._actor(command), reason="/flatten")
            return (f"⚠️ {escape(handlers.FLATTEN_WARNING)}.\nTo go ahead, send <code>/flatten {escape(code)}</code> "
                    f"within {handlers.FLATTEN_CONFIRM_S} s.")
        try:
            state = await handlers.confirm_flatten(self.deps, args[0], actor=self._actor(command))
        except handlers.ConfirmationRefused as error:
            return escape(str(error))
        return (f"🧹 Flattening: trading is <b>halted</b> (version {state.version}); an executor is cancelling every order "
                "and closing every position. Its report follows.")

    async def _status(self, command: Command, args: list[str]) -> str:
        status = await handlers.status(self.deps)
        lines = [f"Mode <b>{escape(str(status['mode']))}</b>, version {status['version']}, set by "
                 f"{escape(str(status['set_by']))}: {escape(str(status['reason']))}"]
        backlog = status["backlog_total"]
        lines.append("Waiting in the executor's queues: " + ("unknown (broker unreachable)" if backlog is None else str(backlog)))
        replicas = status["executor_replicas"]
        lines.append(f"Executors: {len(replicas)}" + (" — " + "; ".join(
            f"{escape(r['replica'])} shards {','.join(map(str, r['shards'])) or '-'}" for r in replicas) if replicas else " (none seen)"))
        signal = status["last_signal"]
        if signal:
            lines.append(f"Latest signal: {escape(str(signal.get('action')))} {escape(str(signal.get('symbol')))} "
                         f"<b>{escape(str(signal.get('status')))}</b> at {escape(_time(signal.get('received_at')))}")
        order = status["last_order"]
        if order:
            lines.append(f"Latest order: {escape(str(order.get('side')))} {escape(str(order.get('amount')))} "
                         f"{escape(str(order.get('symbol')))} {escape(str(order.get('status')))} at {escape(_time(order.get('placed_at')))}")
        return "\n".join(lines)

    async def _orders(self, command: Command, args: list[str]) -> str:
        orders = await handlers.recent_orders(self.deps)
        if not orders:
            return "No orders yet."
        return "<b>Latest orders</b>\n" + "\n".join(
            f"{escape(_time(o.get('placed_at')))} {escape(str(o.get('side')))} {escape(str(o.get('amount')))} "
            f"{escape(str(o.get('symbol')))} {escape(str(o.get('status')))}" + (" reduce-only" if o.get("reduce_only") else "")
            for o in orders)

    async def _snapshot(self) -> tuple[dict | None, str]:
        snapshot = await handlers.account(self.deps)
        if snapshot is None or snapshot.get("at") is None:
            return None, "No executor has read the account at BingX yet."
        note = f"as of {escape(_time(snapshot['at']))}"
        if not snapshot.get("reachable"):
            note += f"; BingX did not answer since: {escape(str(snapshot.get('error')))}"
        return snapshot, note

    async def _positions(self, command: Command, args: list[str]) -> str:
        snapshot, note = await self._snapshot()
        if snapshot is None:
            return note
        positions = snapshot.get("positions") or []
        if not positions:
            return f"No open position ({note})."
        return f"<b>Positions</b> ({note})\n" + "\n".join(
            f"{escape(str(p['symbol']))} {escape(str(p['side']))} {escape(str(p['contracts']))}"
            + (f" @ {escape(str(p['entry_price']))}" if p.get("entry_price") is not None else "") for p in positions)

    async def _balance(self, command: Command, args: list[str]) -> str:
        snapshot, note = await self._snapshot()
        if snapshot is None:
            return note
        balance = snapshot.get("balance") or {}
        return (f"<b>Balance</b> ({note})\nequity {escape(str(balance.get('equity')))} USDT, "
                f"free margin {escape(str(balance.get('free')))} USDT")

    async def _help(self, command: Command, args: list[str]) -> str:
        return HELP


def _time(value: object) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if isinstance(value, datetime) else str(value)

