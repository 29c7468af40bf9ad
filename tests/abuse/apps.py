"""The ingress and control apps of the abuse suite, in-process on the real broker and database, configured with the
secrets of secrets_scan.py; and `answer`, which makes a request and puts its answer into the secret scan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import orjson
from bson import json_util
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from telethon import TelegramClient

from services.control.app import TELEGRAM_KEY
from services.control.app import create_app as create_control_app
from services.control.bootstrap import build as build_control
from services.control.settings import ControlSettings
from services.ingress.app import create_app as create_ingress_app
from services.ingress.bootstrap import build as build_ingress
from services.ingress.settings import IngressSettings
from tests.abuse.secrets_scan import CONTROL_API_TOKEN, TELEGRAM_API_HASH, TELEGRAM_BOT_TOKEN, WEBHOOK_TOKENS, SecretScan
from tests.support import wait_for
from tests.telegram_fake import TEST_API_ID, FakeTelegram

ADMIN, STRANGER = 424242, 515151
AUTH = {"Authorization": f"Bearer {CONTROL_API_TOKEN}"}


async def answer(scan: SecretScan, client: TestClient, method: str, path: str, **kwargs) -> tuple[int, str, dict | list | None]:
    """Make a request; its answer goes into the scan. Returns the status, the text and the JSON (None if not JSON)."""
    response = await client.request(method, path, **kwargs)
    text = await response.text(errors="replace")
    scan.add_response(method, path, response.status, text, response.headers)
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        body = None
    return response.status, text, body


@contextlib.asynccontextmanager
async def ingress_client(amqp_url: str, mongo_uri: str, db: str, **extra):
    config = IngressSettings(amqp_url=amqp_url, mongo_uri=mongo_uri, mongo_db=db, webhook_tokens=WEBHOOK_TOKENS, **extra)
    async with build_ingress(config) as ingress:
        # Served as shared.runtime.start_server serves it in production: without aiohttp's access log.
        async with TestClient(TestServer(create_ingress_app(ingress), access_log=None)) as client:
            yield client


def control_settings(amqp_url: str, mongo_uri: str, db: str, *, telegram_session: Path | None = None, **extra) -> ControlSettings:
    telegram = {}
    if telegram_session is not None:
        telegram = dict(telegram_api_id=TEST_API_ID, telegram_api_hash=TELEGRAM_API_HASH, telegram_bot_token=TELEGRAM_BOT_TOKEN,
                        telegram_admin_ids=str(ADMIN), telegram_control_session_path=str(telegram_session))
    return ControlSettings(amqp_url=amqp_url, mongo_uri=mongo_uri, mongo_db=db, control_api_token=CONTROL_API_TOKEN,
                           **telegram, **extra)


@contextlib.asynccontextmanager
async def control_client(amqp_url: str, mongo_uri: str, db: str, *, tmp_path: Path | None = None,
                         fake: FakeTelegram | None = None, **extra):
    """The control app; with `tmp_path`, also its Telegram bot (logged in to a FakeTelegram before this yields).

    Yields (http client, fake Telegram or None, the bot's Telethon client or None).
    """
    clients: list[TelegramClient] = []
    if tmp_path is not None:
        fake = fake or FakeTelegram(bot_token=TELEGRAM_BOT_TOKEN, chats=[ADMIN, STRANGER])

    def client_factory(*args, **kwargs) -> TelegramClient:
        client = TelegramClient(*args, **kwargs)
        fake.install(client)
        clients.append(client)
        return client

    config = control_settings(amqp_url, mongo_uri, db, telegram_session=tmp_path / "control.session" if tmp_path else None, **extra)
    async with build_control(config) as control:
        app = create_control_app(control, telegram_client_factory=client_factory if tmp_path else None)
        async with TestClient(TestServer(app, access_log=None)) as http:
            if tmp_path is not None:
                async def logged_in() -> bool:
                    return bool(clients) and clients[0].is_connected() and fake.logins > 0 and app_bot_listening(app)

                await wait_for(logged_in, what="the control bot to log in")
            yield http, fake, clients[0] if clients else None


def app_bot_listening(app: web.Application) -> bool:
    bot = app[TELEGRAM_KEY]
    return bot is not None and bot.client is not None  # set once its command handler is installed


T = TypeVar("T")


class OnLoop:
    """Hypothesis drives the examples from a worker thread; each example's requests run on the test's own event loop,
    where the app (built once per test, not per example) lives.

    `await on_loop.examples(test)` runs a @given test; inside it, `on_loop(coroutine)` runs one coroutine to its end.
    """

    def __init__(self, timeout_s: float = 30.0) -> None:
        self.loop = asyncio.get_running_loop()
        self.timeout_s = timeout_s

    def __call__(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(self.timeout_s)

    async def examples(self, test: Callable[[], None]) -> None:
        await asyncio.to_thread(test)


def routes_of(app: web.Application) -> list[tuple[str, str]]:
    """Every (method, path pattern) the app's router serves, HEAD aside (aiohttp adds it to every GET)."""
    found = {(route.method, route.resource.canonical) for route in app.router.routes()
             if route.method != "HEAD" and route.resource is not None}
    return sorted(found)


async def routed(client: TestClient, path: str, method: str = "POST") -> bool:
    """Whether `path`, as the client sends it (normalised: '/a/b/..' is '/a'), reaches a route of the app."""
    request = make_mocked_request(method, client.make_url(path).raw_path_qs, app=client.app)
    match = await client.app.router.resolve(request)
    return match.http_exception is None or match.http_exception.status == 405


async def database_state(db) -> dict[str, list[str]]:
    """Every document of every collection, as text, in a stable order: equal before and after means nothing changed."""
    state: dict[str, list[str]] = {}
    for name in sorted(await db.list_collection_names()):
        state[name] = sorted([json_util.dumps(document, sort_keys=True, default=str) async for document in db[name].find({})])
    return state
