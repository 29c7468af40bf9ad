"""Proof that no secret leaks: gather everything a test made the services produce (log records, HTTP answers, every
document of every collection, Telegram messages, broker messages) and look for every secret in it.

A leak is the secret, or any piece of it of PIECE characters, compared without regard to case (a secret lowercased
in a reason is still a secret). The bot token's part before the colon is the bot's public id: only the part after it
is looked for. Secrets are random-looking, so a piece of one cannot turn up by chance. (The broker's and the test
database's passwords are not among them: the tests' servers use guest/guest, which is also the user's name.)

Use: `scan = SecretScan(SECRETS)`; `with scan.capturing_logs(): ...`; `scan.add(where, text)` for anything else
(`add_response`, `add_database`, `add_telegram`, `add_messages`); then `scan.assert_clean()`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from bson import json_util

# Quieted as shared.observability.setup_logging quiets them in every service: their DEBUG never becomes a log line.
from shared.observability import QUIET_LOGGERS, JsonFormatter

PIECE = 10

# The secrets every test of tests/abuse configures (and presents in the wrong places). Random-looking on purpose.
WEBHOOK_SECRET = "Wq7hT2x5nR0pLk4wV9cYb1mJ6sEoA3uG"
WEBHOOK_OTHER_SECRET = "Zr4uB8nQ2yXe6KcP0tLm9HsD5jVa1FgW"
CONTROL_API_TOKEN = "Ct9Lp2Wz6Qk0Ry4Hv8Nx3Js7Bf1Md5Gu"
BINGX_API_KEY = "Bk3Nv7Xq1Lw5Zp9Hr2Ty6Mc0Jd4Fs8Ga"
BINGX_API_SECRET = "Bs6Yh0Ue4Kt8Wn2Qm5Xv9Lc3Rp7Dz1Jf"
TELEGRAM_BOT_TOKEN = "7000000042:AAHq8Vd3Kx6Lm0Wp4Nz7Tr2Yc5Bf9Gh1Js"
TELEGRAM_API_HASH = "e3a91c07b5d24f68a0c1e9d7b3f5a246"

SECRETS: dict[str, str] = {
    "webhook token main": WEBHOOK_SECRET,
    "webhook token rotated": WEBHOOK_OTHER_SECRET,
    "CONTROL_API_TOKEN": CONTROL_API_TOKEN,
    "BINGX_API_KEY": BINGX_API_KEY,
    "BINGX_API_SECRET": BINGX_API_SECRET,
    "TELEGRAM_BOT_TOKEN": TELEGRAM_BOT_TOKEN,
    "TELEGRAM_API_HASH": TELEGRAM_API_HASH,
}
WEBHOOK_TOKENS = f"main:{WEBHOOK_SECRET},rotated:{WEBHOOK_OTHER_SECRET}"



def secret_part(secret: str) -> str:
    """What of a value is secret: a Telegram bot token's id (before the colon) is public."""
    head, sep, tail = secret.partition(":")
    return tail if sep and head.isdigit() else secret


@dataclass
class SecretScan:
    secrets: Mapping[str, str]
    seen: list[tuple[str, str]] = field(default_factory=list)
    records: list[logging.LogRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._pieces: list[tuple[str, str]] = []
        for label, secret in self.secrets.items():
            part = secret_part(secret).casefold()
            assert len(part) >= PIECE, f"{label} is too short to be looked for"
            self._pieces += [(label, part[i:i + PIECE]) for i in range(len(part) - PIECE + 1)]

    def leaks_in(self, text: str) -> list[str]:
        """The secrets (by label) of which `text` holds a piece."""
        folded = text.casefold()
        return sorted({label for label, piece in self._pieces if piece in folded})

    def add(self, where: str, text: object) -> None:
        self.seen.append((where, text if isinstance(text, str) else repr(text)))

    def add_response(self, method: str, path: str, status: int, body: str, headers: Mapping[str, str] | None = None) -> None:
        # The path is what the caller sent (it may hold a token on purpose); the answer is what must not.
        self.add(f"HTTP answer to {method} {_shorten(path)} ({status})", body)
        if headers:
            self.add(f"HTTP headers of the answer to {method} {_shorten(path)}", "\n".join(f"{k}: {v}" for k, v in headers.items()))

    async def add_database(self, db) -> int:
        """Every document of every collection of `db`; returns how many were read."""
        count = 0
        for name in await db.list_collection_names():
            async for document in db[name].find({}):
                self.add(f"mongo {db.name}.{name}", json_util.dumps(document, default=str))
                count += 1
        return count

    def add_telegram(self, fake) -> int:
        """Every message a FakeTelegram accepted (its text and entities), and every request it received."""
        for message in fake.sent:
            self.add(f"telegram message to {message.chat_id}", f"{message.text}\n{[e.to_dict() for e in message.entities]!r}")
        for received in fake.received:
            query = received.query
            if type(query).__name__ in ("ImportBotAuthorizationRequest",):
                continue  # the login itself carries the bot token to Telegram, as it must
            self.add(f"telegram request {type(query).__name__}", repr(query.to_dict()))
        return len(fake.sent)

    def add_messages(self, where: str, messages: Iterable[object]) -> None:
        for message in messages:
            dump = getattr(message, "model_dump_json", None)
            self.add(where, dump() if dump else repr(message))

    @contextlib.contextmanager
    def capturing_logs(self, level: int = logging.DEBUG) -> Iterator[None]:
        """Every log record of the process while inside, at `level` and up, with the loggers the services quiet
        quieted the same way (their records never become a line in production)."""
        handler = _Keep(self.records)
        root = logging.getLogger()
        saved = root.level, {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
        root.addHandler(handler)
        root.setLevel(level)
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(max(logging.WARNING, level))
        try:
            yield
        finally:
            root.removeHandler(handler)
            root.setLevel(saved[0])
            for name, old in saved[1].items():
                logging.getLogger(name).setLevel(old)

    def log_lines(self) -> list[tuple[str, str]]:
        """Each record as the services' JSON formatter writes it, but without its redaction: what code logged."""
        formatter = JsonFormatter("scan")  # no secrets given: nothing is redacted
        return [(f"log record {r.name} {r.levelname} {r.msg!r}"[:200], formatter.format(r)) for r in self.records]

    def leaks(self) -> list[str]:
        found = []
        for where, text in [*self.seen, *self.log_lines()]:
            for label in self.leaks_in(text):
                found.append(f"{label} in {where}: {_around(text, self.secrets[label])}")
        return found

    def assert_clean(self) -> None:
        found = self.leaks()
        assert not found, f"{len(found)} secret leak(s):\n" + "\n".join(found[:20])


class _Keep(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.NOTSET)
        self._records = records

    def emit(self, record: logging.LogRecord) -> None:
        self._records.append(record)


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _around(text: str, secret: str) -> str:
    """A little of the text around the first piece found, to say where it leaked."""
    folded, part = text.casefold(), secret_part(secret).casefold()
    for i in range(len(part) - PIECE + 1):
        at = folded.find(part[i:i + PIECE])
        if at >= 0:
            return repr(text[max(0, at - 60):at + 60])
    return repr(text[:120])
