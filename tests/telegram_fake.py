"""A fake Telegram under the real Telethon client: it replaces the network sender and answers what a bot asks."""

from __future__ import annotations

import asyncio
import datetime
import os
import struct
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from telethon import TelegramClient, utils
from telethon.errors import rpc_message_to_error
from telethon.extensions import BinaryReader
from telethon.network import MTProtoSender
from telethon.tl import TLObject, TLRequest, functions, types

from services.notifier.telegram import TelethonMessenger

from tests.support import LEAKS, secrets_in

TEST_API_ID = 1234567
TEST_API_HASH = "0123456789abcdef0123456789abcdef"
TEST_BOT_TOKEN = "7000000001:AAHtestTOKENnot-a-real-one_0123456789"

# The envelopes Telethon puts around a query: the connection's first request, and every request of a send-only client.
_ENVELOPES = (functions.InvokeWithLayerRequest, functions.InvokeWithoutUpdatesRequest, functions.InitConnectionRequest)
_VECTOR = 0x1CB5C415
_MAX_LENGTH = 4096


def access_hash(peer_id: int) -> int:
    """The access hash the fake hands out for a user or channel: deterministic, so tests can build input peers."""
    return (peer_id * 0x9E3779B97F4A7C15) % 2**63


@dataclass(frozen=True)
class SentMessage:
    """One messages.sendMessage that Telegram accepted, as it arrived on the wire."""

    chat_id: int  # marked, as the notifier addresses chats: user ids positive, channels -100…
    peer: TLObject
    text: str
    entities: list[TLObject]
    no_webpage: bool


@dataclass(frozen=True)
class Received:
    """One request as decoded from its bytes, with the names of the envelopes it came in."""

    query: TLObject
    envelopes: tuple[str, ...]


class _RpcFailure(Exception):
    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class FakeTelegram:
    """The server side: remembers authorized keys, the chats the bot can reach, and every message it accepted.

    `chats` are marked ids the bot may write to (users who started it, groups and channels it belongs to); a
    message to any other peer gets PEER_ID_INVALID, as from Telegram. `fail_next` queues RPC errors by name (or
    exceptions, as the network layer raises them) for the next requests of one type.
    """

    def __init__(
        self,
        *,
        bot_token: str = TEST_BOT_TOKEN,
        bot_username: str = "tvtb_test_bot",
        api_id: int = TEST_API_ID,
        chats: Iterable[int] = (),
    ) -> None:
        self.bot_token = bot_token
        self.bot_id = int(bot_token.partition(":")[0])
        self.bot_username = bot_username
        self.api_id = api_id
        self.chats = set(chats)
        self.received: list[Received] = []
        self.sent: list[SentMessage] = []
        self.send_attempts = 0
        self.logins = 0
        self._authorized_keys: set[int] = set()
        self._failures: dict[type[TLRequest], deque[_RpcFailure | BaseException]] = {}
        self._pts = 1
        self._message_id = 0

    def fail_next(
        self,
        error: str | BaseException,
        times: int = 1,
        *,
        on: type[TLRequest] = functions.messages.SendMessageRequest,
        code: int | None = None,
    ) -> None:
        """Answer the next `times` requests of type `on` with RPC error `error` (e.g. "FLOOD_WAIT_7"), or raise it."""
        queue = self._failures.setdefault(on, deque())
        for _ in range(times):
            queue.append(error if isinstance(error, BaseException) else _RpcFailure(error, code))

    def install(self, client: TelegramClient) -> FakeSender:
        """Put a sender talking to this fake in place of the client's network sender (before it connects)."""
        sender = FakeSender(client, self)
        client._sender = sender
        return sender

    def incoming(self, client: TelegramClient, user_id: int, text: str, *, date: datetime.datetime | None = None) -> None:
        """A user writes `text` to the bot in a private chat, as Telegram pushes it: a real `Updates` on the client's
        queue, next in the account's pts sequence, so Telethon's own update handling and event builders run."""
        self._pts += 1
        self._message_id += 1
        user = types.User(id=user_id, access_hash=access_hash(user_id), first_name=f"user{user_id}")
        message = types.Message(id=self._message_id, peer_id=types.PeerUser(user_id=user_id), date=date or _now(),
                                message=text, out=False)
        client._updates_queue.put_nowait(types.Updates(
            updates=[types.UpdateNewMessage(message=message, pts=self._pts, pts_count=1)],
            users=[user], chats=[], date=_now(), seq=0,
        ))

    def requests_of(self, kind: type[TLRequest]) -> list[Received]:
        return [r for r in self.received if isinstance(r.query, kind)]

    # The server side of each request.

    def answer(self, query: TLObject, key_id: int) -> TLObject | list[TLObject]:
        failures = self._failures.get(type(query))
        if isinstance(query, functions.messages.SendMessageRequest):
            self.send_attempts += 1
        if failures:
            raise failures.popleft()
        if isinstance(query, functions.help.GetConfigRequest):
            return _config()
        if isinstance(query, functions.auth.ImportBotAuthorizationRequest):
            return self._import_bot_authorization(query, key_id)
        if key_id not in self._authorized_keys:
            raise _RpcFailure("AUTH_KEY_UNREGISTERED")
        if isinstance(query, functions.users.GetUsersRequest):
            return self._get_users(query)
        if isinstance(query, functions.channels.GetChannelsRequest):
            return self._get_channels(query)
        if isinstance(query, functions.updates.GetStateRequest):
            return types.updates.State(pts=self._pts, qts=0, date=_now(), seq=1, unread_count=0)
        if isinstance(query, functions.updates.GetDifferenceRequest):
            return types.updates.DifferenceEmpty(date=_now(), seq=1)
        if isinstance(query, functions.messages.SendMessageRequest):
            return self._send_message(query)
        raise NotImplementedError(f"FakeTelegram does not answer {type(query).__name__}: teach it, or avoid the call")

    def _import_bot_authorization(self, query: functions.auth.ImportBotAuthorizationRequest, key_id: int) -> TLObject:
        if query.api_id != self.api_id:
            raise _RpcFailure("API_ID_INVALID")
        if query.bot_auth_token != self.bot_token:
            raise _RpcFailure("ACCESS_TOKEN_INVALID")
        self._authorized_keys.add(key_id)
        self.logins += 1
        return types.auth.Authorization(user=self._bot())

    def _get_users(self, query: functions.users.GetUsersRequest) -> list[TLObject]:
        found: list[TLObject] = []
        for wanted in query.id:
            if isinstance(wanted, types.InputUserSelf):
                found.append(self._bot())
            elif isinstance(wanted, types.InputUser) and wanted.user_id in self.chats:
                found.append(_user(wanted.user_id))
        # Users the bot has never met are left out, as by Telegram; Telethon then cannot resolve the id.
        return found

    def _get_channels(self, query: functions.channels.GetChannelsRequest) -> TLObject:
        channels = []
        for wanted in query.id:
            if not isinstance(wanted, types.InputChannel) or utils.get_peer_id(wanted) not in self.chats:
                raise _RpcFailure("CHANNEL_INVALID")
            channels.append(_channel(wanted.channel_id))
        return types.messages.Chats(chats=channels)

    def _send_message(self, query: functions.messages.SendMessageRequest) -> TLObject:
        if not self._reachable(query.peer):
            raise _RpcFailure("PEER_ID_INVALID")
        if not query.message:
            raise _RpcFailure("MESSAGE_EMPTY")
        if len(query.message) > _MAX_LENGTH:
            raise _RpcFailure("MESSAGE_TOO_LONG")
        # What the bot sends must hold no secret: looked at in every test, counted at the end of the run.
        LEAKS.extend(f"{name} in a Telegram message" for name in secrets_in(query.message))
        self.sent.append(
            SentMessage(
                chat_id=utils.get_peer_id(query.peer),
                peer=query.peer,
                text=query.message,
                entities=list(query.entities or []),
                no_webpage=bool(query.no_webpage),
            )
        )
        self._pts += 1
        self._message_id += 1
        # Telegram answers sends to groups and channels with full Updates; the client reads only the id and date
        # either way, and one account-wide pts keeps Telethon's update state free of gaps (no getDifference).
        return types.UpdateShortSentMessage(id=self._message_id, pts=self._pts, pts_count=1, date=_now(), out=True)

    def _reachable(self, peer: TLObject) -> bool:
        if isinstance(peer, types.InputPeerUser):
            return peer.user_id in self.chats and peer.access_hash == access_hash(peer.user_id)
        if isinstance(peer, types.InputPeerChannel):
            return utils.get_peer_id(peer) in self.chats and peer.access_hash == access_hash(peer.channel_id)
        if isinstance(peer, types.InputPeerChat):
            return utils.get_peer_id(peer) in self.chats
        return False

    def _bot(self) -> TLObject:
        return types.User(
            id=self.bot_id,
            is_self=True,
            bot=True,
            access_hash=access_hash(self.bot_id),
            first_name="TVTB test bot",
            username=self.bot_username,
            bot_info_version=1,
        )


class FakeSender(MTProtoSender):
    """Takes the place of `client._sender`: no socket, no encryption; each request crosses as its TL bytes.

    Telethon's client only uses its sender through `connect`, `send` (futures resolved when the answer arrives),
    `disconnect`, `is_connected`, `disconnected` and `auth_key`; the rest of MTProtoSender stays idle.
    """

    def __init__(self, client: TelegramClient, server: FakeTelegram) -> None:
        super().__init__(
            client.session.auth_key,
            loggers=client._log,
            auth_key_callback=client._auth_key_callback,
            updates_queue=client._updates_queue,
        )
        self._server = server
        self._in_flight: set[asyncio.Future] = set()
        self._closed: asyncio.Future | None = None

    async def connect(self, connection: object) -> bool:
        if self._user_connected:
            return False
        if not self.auth_key:
            # Stands in for the key exchange: the server and the session now share a key, saved like a real one.
            self.auth_key.key = os.urandom(256)
            await self._auth_key_callback(self.auth_key)
        self._user_connected = True
        self._closed = asyncio.get_running_loop().create_future()
        return True

    async def disconnect(self) -> None:
        if not self._user_connected:
            return
        self._user_connected = False
        for future in self._in_flight:
            future.cancel()
        self._in_flight.clear()
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    @property
    def _disconnected(self) -> asyncio.Future:
        # MTProtoSender keeps this future under a name-mangled attribute; the keepalive loop waits on it.
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_future()
            self._closed.set_result(None)
        return self._closed

    def send(
        self, request: TLRequest | list[TLRequest], ordered: bool = False
    ) -> asyncio.Future | list[asyncio.Future]:
        if not self._user_connected:
            raise ConnectionError("Cannot send requests while disconnected")
        if utils.is_list_like(request):
            return [self._enqueue(r) for r in request]
        return self._enqueue(request)

    def _enqueue(self, request: TLRequest) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._in_flight.add(future)
        # Answer on a later turn of the loop, as the network would: the caller awaits a pending future.
        loop.call_soon(self._deliver, request, bytes(request), future)
        return future

    def _deliver(self, request: TLRequest, data: bytes, future: asyncio.Future) -> None:
        self._in_flight.discard(future)
        if future.done():
            return
        try:
            query, envelopes = _open(BinaryReader(data).tgread_object())
            self._server.received.append(Received(query, envelopes))
            answer = self._server.answer(query, self.auth_key.key_id)
            result = request.read_result(BinaryReader(_to_bytes(answer)))
        except _RpcFailure as failure:
            code = failure.code if failure.code is not None else _code_of(failure.message)
            future.set_exception(rpc_message_to_error(types.RpcError(code, failure.message), request))
        except Exception as e:  # anything else reaches the caller: a fake that hangs would hide the bug
            future.set_exception(e)
        else:
            self._store_own_updates(result)  # as MTProtoSender does, so the update state follows our sends
            future.set_result(result)


async def fake_messenger(
    tmp_path: Path,
    *,
    fake: FakeTelegram | None = None,
    bot_token: str = TEST_BOT_TOKEN,
    flood_sleep_threshold: int = 5,
    start: bool = True,
    **fake_opts: object,
) -> tuple[TelethonMessenger, FakeTelegram]:
    """A TelethonMessenger whose real TelegramClient (real SQLite session under tmp_path) talks to a FakeTelegram.

    Pass `fake` to reuse a server (a restart), or FakeTelegram's keywords (`chats=[...]`) to build one. The caller
    closes the messenger.
    """
    server = fake if fake is not None else FakeTelegram(**fake_opts)

    def client_factory(*args: object, **kwargs: object) -> TelegramClient:
        client = TelegramClient(*args, **kwargs)
        server.install(client)
        return client

    messenger = TelethonMessenger(
        api_id=TEST_API_ID,
        api_hash=TEST_API_HASH,
        bot_token=bot_token,
        session_path=str(tmp_path / "notifier.session"),
        flood_sleep_threshold=flood_sleep_threshold,
        client_factory=client_factory,
    )
    if start:
        await messenger.start()
    return messenger, server


def _open(obj: TLObject) -> tuple[TLObject, tuple[str, ...]]:
    envelopes: list[str] = []
    while isinstance(obj, _ENVELOPES):
        envelopes.append(type(obj).__name__)
        obj = obj.query
    return obj, tuple(envelopes)


def _to_bytes(answer: TLObject | list[TLObject]) -> bytes:
    if isinstance(answer, list):
        return struct.pack("<Ii", _VECTOR, len(answer)) + b"".join(bytes(item) for item in answer)
    return bytes(answer)


def _code_of(message: str) -> int:
    # Telethon knows each named error's class and so its code (420 flood, 403 forbidden...); 400 for the rest.
    return rpc_message_to_error(types.RpcError(400, message), None).code or 400


def _user(user_id: int) -> TLObject:
    return types.User(id=user_id, access_hash=access_hash(user_id), first_name=f"user {user_id}")


def _channel(channel_id: int) -> TLObject:
    return types.Channel(
        id=channel_id,
        title=f"channel {channel_id}",
        photo=types.ChatPhotoEmpty(),
        date=_now(),
        broadcast=True,
        access_hash=access_hash(channel_id),
    )


def _config() -> TLObject:
    now = _now()
    return types.Config(
        date=now,
        expires=now + datetime.timedelta(hours=1),
        test_mode=False,
        this_dc=2,
        dc_options=[types.DcOption(id=2, ip_address="149.154.167.51", port=443)],
        dc_txt_domain_name="_",
        chat_size_max=200,
        megagroup_size_max=200000,
        forwarded_count_max=100,
        online_update_period_ms=210000,
        offline_blur_timeout_ms=5000,
        offline_idle_timeout_ms=30000,
        online_cloud_timeout_ms=300000,
        notify_cloud_delay_ms=30000,
        notify_default_delay_ms=1500,
        push_chat_period_ms=60000,
        push_chat_limit=2,
        edit_time_limit=172800,
        revoke_time_limit=2147483647,
        revoke_pm_time_limit=2147483647,
        rating_e_decay=2419200,
        stickers_recent_limit=200,
        channels_read_media_period=604800,
        call_receive_timeout_ms=20000,
        call_ring_timeout_ms=90000,
        call_connect_timeout_ms=30000,
        call_packet_timeout_ms=10000,
        me_url_prefix="https://t.me/",
        caption_length_max=1024,
        message_length_max=_MAX_LENGTH,
        webfile_dc_id=4,
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
