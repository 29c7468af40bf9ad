"""Nobody without the right credentials changes anything: every control route (as the router lists them, so a new one is
covered the day it is added) refuses a request without the bearer token, with a wrong one, or with the token in the
wrong scheme or place; every Telegram command (as the command table lists them) from a user who is not an admin, or
sent in a group, is refused or ignored. In both cases the database, the broker and the kill switch stay as they were.
"""

from __future__ import annotations

import base64
import logging
from decimal import Decimal

from telethon import events
from telethon.tl import types

from services.control.commands import CommandTable
from services.control.openapi import SPEC
from shared.contracts import Action, SignalReceivedV1, utcnow
from tests.abuse.apps import ADMIN, AUTH, STRANGER, answer, control_client, database_state, routes_of
from tests.abuse.secrets_scan import CONTROL_API_TOKEN, TELEGRAM_API_HASH, TELEGRAM_BOT_TOKEN, WEBHOOK_SECRET
from tests.support import drain_signals, wait_for
from tests.telegram_fake import access_hash

GROUP = 777001  # a basic group the bot is a member of (marked id -777001)

# (what is presented, the request's extra keyword arguments): none of these is the right bearer token.
WRONG_CREDENTIALS = [
    ("nothing", {}),
    ("a wrong token", {"headers": {"Authorization": "Bearer not-the-token-0123456789"}}),
    ("the token less its last character", {"headers": {"Authorization": f"Bearer {CONTROL_API_TOKEN[:-1]}"}}),
    ("the token and one more character", {"headers": {"Authorization": f"Bearer {CONTROL_API_TOKEN}x"}}),
    ("the token lowercased", {"headers": {"Authorization": f"Bearer {CONTROL_API_TOKEN.lower()}"}}),
    ("an empty bearer", {"headers": {"Authorization": "Bearer "}}),
    ("the scheme alone", {"headers": {"Authorization": "Bearer"}}),
    ("the token without a scheme", {"headers": {"Authorization": CONTROL_API_TOKEN}}),
    ("the token glued to the scheme", {"headers": {"Authorization": f"Bearer{CONTROL_API_TOKEN}"}}),
    ("the token as Basic", {"headers": {"Authorization": f"Basic {CONTROL_API_TOKEN}"}}),
    ("the token as Basic user:password",
     {"headers": {"Authorization": "Basic " + base64.b64encode(f"api:{CONTROL_API_TOKEN}".encode()).decode()}}),
    ("the token as Token", {"headers": {"Authorization": f"Token {CONTROL_API_TOKEN}"}}),
    ("the token and another", {"headers": {"Authorization": f"Bearer {CONTROL_API_TOKEN}, Bearer x"}}),
    ("the token in X-Api-Key", {"headers": {"X-Api-Key": CONTROL_API_TOKEN}}),
    ("the token in a cookie", {"headers": {"Cookie": f"token={CONTROL_API_TOKEN}"}}),
    ("the token in the query", {"params": {"token": CONTROL_API_TOKEN, "access_token": CONTROL_API_TOKEN}}),
    ("the Telegram bot token", {"headers": {"Authorization": f"Bearer {TELEGRAM_BOT_TOKEN}"}}),
    ("the Telegram api hash", {"headers": {"Authorization": f"Bearer {TELEGRAM_API_HASH}"}}),
    ("a webhook token", {"headers": {"Authorization": f"Bearer {WEBHOOK_SECRET}"}}),
]


def public_routes() -> set[tuple[str, str]]:
    """The routes the API's description declares open to anyone (`security: []`): health, metrics, the description."""
    return {(method.upper(), path) for path, operations in SPEC["paths"].items()
            for method, operation in operations.items() if operation.get("security") == []}


async def seed(db) -> str:
    """An expired signal: with the token, a replay would send it to the executor at once."""
    signal = SignalReceivedV1(signal_id="expired-1", token_name="main", symbol="BTC/USDT:USDT", action=Action.CLOSE,
                              qty=Decimal("0.01"), received_at=utcnow())
    await db.signals.insert_one({"_id": signal.signal_id, "status": "expired", "account": "default", "symbol": signal.symbol,
                                 "action": signal.action.value, "signal": signal.model_dump(mode="python"),
                                 "received_at": signal.received_at, "updated_at": signal.received_at})
    return signal.signal_id


async def test_every_control_route_refuses_without_the_right_token_and_nothing_changes(
        amqp_url, mongo_uri, mongo_db_name, mongo_db, secret_scan):
    async with control_client(amqp_url, mongo_uri, mongo_db_name) as (http, _, _):
        signal_id = await seed(mongo_db)
        # A flatten the API asked for: a refused request that carried its confirmation would flatten.
        status, _, asked = await answer(secret_scan, http, "POST", "/bot/flatten", headers=AUTH, json={"reason": "drill"})
        assert status == 202
        code = asked["confirm"]
        # What each route would do with the token: halt, flatten, replay, or tell what only an operator may read.
        bodies = {("PUT", "/bot/settings"): {"autotrade": False, "reason": "intruder", "force": True},
                  ("POST", "/bot/flatten"): {"confirm": code, "reason": "intruder"},
                  ("POST", "/bot/signals/{signal_id}/replay"): {"reason": "intruder"}}

        routes = routes_of(http.app)
        # Open to anyone: only what a probe or a scraper needs, and the description. Anything else must refuse.
        assert public_routes() == {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/openapi.json")}
        protected = [route for route in routes if route not in public_routes()]
        assert set(bodies) <= set(protected) and ("GET", "/status") in protected
        before = await database_state(mongo_db)
        refused = 0
        for method, pattern in protected:
            path = pattern.replace("{signal_id}", signal_id)
            for what, credentials in WRONG_CREDENTIALS:
                status, text, body = await answer(secret_scan, http, method, path, json=bodies.get((method, pattern)),
                                                  **credentials)
                assert status in (401, 403), f"{method} {path} with {what}: {status} {text[:200]}"
                assert body == {"status": "error", "reason": "missing or wrong bearer token"}, (method, path, what, text)
                refused += 1
        assert refused == len(protected) * len(WRONG_CREDENTIALS)
        # The token pasted into the path instead of the header: refused, and the path is neither logged nor counted.
        for method, path in [("POST", f"/bot/signals/{CONTROL_API_TOKEN}/replay"), ("GET", f"/bot/{CONTROL_API_TOKEN}"),
                             ("GET", f"/bot/settings/{CONTROL_API_TOKEN}")]:
            status, text, body = await answer(secret_scan, http, method, path)
            assert status == 401 and body == {"status": "error", "reason": "missing or wrong bearer token"}, (path, text)

        # Nothing changed: not the kill switch, not the flatten's confirmation, not the expired signal; nothing was sent.
        assert await database_state(mongo_db) == before
        assert await drain_signals(amqp_url) == []
        # The refusals are counted by route, never by the path a caller made up.
        status, metrics, _ = await answer(secret_scan, http, "GET", "/metrics")
        counted = {line.split('endpoint="', 1)[1].split('"', 1)[0]: line.rsplit(" ", 1)[1] for line in metrics.splitlines()
                   if line.startswith("tvtb_control_requests_total{") and 'result="unauthorized"' in line}
        assert set(counted) == {pattern for _, pattern in protected} | {"unmatched"}, counted
        # The confirmation was not used up by the refused one: its owner can still use it.
        status, _, body = await answer(secret_scan, http, "POST", "/bot/flatten", headers=AUTH, json={"confirm": code})
        assert status == 202 and body["status"] == "flattening"
    await secret_scan.add_database(mongo_db)


def in_group(fake, client, user_id: int, text: str) -> None:
    """`user_id` writes `text` in the group GROUP where the bot is a member, as Telegram pushes it (see
    FakeTelegram.incoming for a private chat)."""
    _push(fake, client, user_id, text, types.PeerChat(chat_id=GROUP),
          chats=[types.Chat(id=GROUP, title="traders", photo=types.ChatPhotoEmpty(), participants_count=3,
                            date=utcnow(), version=1)])


def forwarded(fake, client, user_id: int, text: str, original_sender: int) -> None:
    """`user_id` forwards to the bot, in a private chat, a message `original_sender` wrote."""
    _push(fake, client, user_id, text, types.PeerUser(user_id=user_id),
          fwd_from=types.MessageFwdHeader(date=utcnow(), from_id=types.PeerUser(user_id=original_sender)))


def _push(fake, client, user_id: int, text: str, peer, *, chats=(), fwd_from=None) -> None:
    fake._pts += 1
    fake._message_id += 1
    users = [types.User(id=uid, access_hash=access_hash(uid), first_name=f"user{uid}") for uid in {user_id, ADMIN}]
    message = types.Message(id=fake._message_id, peer_id=peer, date=utcnow(), message=text, out=False,
                            from_id=types.PeerUser(user_id=user_id), fwd_from=fwd_from)
    client._updates_queue.put_nowait(types.Updates(
        updates=[types.UpdateNewMessage(message=message, pts=fake._pts, pts_count=1)],
        users=users, chats=list(chats), date=utcnow(), seq=0,
    ))


async def test_no_telegram_command_from_a_stranger_or_in_a_group_does_anything(
        amqp_url, mongo_uri, mongo_db_name, mongo_db, tmp_path, secret_scan):
    async with control_client(amqp_url, mongo_uri, mongo_db_name, tmp_path=tmp_path) as (http, fake, client):
        fake.chats.add(-GROUP)  # an answer there would be delivered (and seen): the bot must not give one
        handled: list[str] = []

        async def probe(event) -> None:  # added after the bot's own handler: Telethon runs it once that one is done
            handled.append(event.raw_text)

        client.add_event_handler(probe, events.NewMessage(incoming=True))
        # The admin asks for a flatten in private: a code someone else might try to use.
        fake.incoming(client, ADMIN, "/flatten")
        await wait_for(lambda: _answered(fake, ADMIN), what="the bot to ask the admin for a confirmation")
        code = fake.sent[-1].text.split("send /flatten ", 1)[1].split()[0]
        await wait_for(lambda: _at_least(handled, 1), what="the admin's command to be handled through")

        names = sorted(CommandTable(deps=None, admins=frozenset())._commands())
        assert {"/autotrade", "/flatten", "/entries_off", "/status"} <= set(names)
        texts = [text for name in names for text in (name, f"{name} on force", f"{name} off", f"{name}@tvtb_test_bot on")]
        texts += [f"/flatten {code}", f"/flatten@tvtb_test_bot {code}"]
        before, sent, attempts = await database_state(mongo_db), len(fake.sent), fake.send_attempts
        admin_answers = len([m for m in fake.sent if m.chat_id == ADMIN])
        for text in texts:
            fake.incoming(client, STRANGER, text)  # a stranger, in private
            forwarded(fake, client, STRANGER, text, original_sender=ADMIN)  # a stranger passing on what the admin wrote
            in_group(fake, client, STRANGER, text)  # a stranger, in a group
            in_group(fake, client, ADMIN, text)  # the admin, in a group: answers (positions, a flatten code) stay private
        await wait_for(lambda: _at_least(handled, 1 + 4 * len(texts)), what=f"{4 * len(texts)} commands to be handled")
        # No answer anywhere, nothing changed, nothing was sent to the executor.
        assert fake.send_attempts == attempts and fake.sent[sent:] == []
        assert await database_state(mongo_db) == before
        assert await drain_signals(amqp_url) == []
        refusals = [r for r in secret_scan.records if r.getMessage() == "telegram command refused: the sender is not an admin"]
        assert len(refusals) == 2 * len(texts)  # the private ones, logged; the group ones are not even looked at
        assert {r.levelno for r in refusals} == {logging.WARNING}
        # The admin's own confirmation is still there: the admin, in private, flattens with it.
        fake.incoming(client, ADMIN, f"/flatten {code}")
        await wait_for(lambda: _answered(fake, ADMIN, admin_answers + 1), what="the flatten to be confirmed")
        assert fake.sent[-1].text.startswith("🧹 Flattening")
        secret_scan.add_telegram(fake)
    await secret_scan.add_database(mongo_db)


async def _at_least(items: list, count: int) -> bool:
    return len(items) >= count


async def _answered(fake, chat_id: int, count: int = 1) -> bool:
    return len([m for m in fake.sent if m.chat_id == chat_id]) >= count

