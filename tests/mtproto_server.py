"""A small MTProto server on 127.0.0.1 for wire-level tests of the unmodified Telethon client.

The client gets a StringSession whose data centre is this server and whose auth key the server already knows (no
key exchange). Packets are TCP-full (`len|seq|body|crc32`), bodies MTProto 2.0 encrypted with AES-IGE (the keys
derived as Telethon derives them). Requests are answered by a FakeTelegram (tests/telegram_fake.py), so the two
layers share one notion of what Telegram says; answers go back as `rpc_result` with odd, increasing msg_ids.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
from hashlib import sha256
from zlib import crc32

from telethon.crypto import AES, AuthKey
from telethon.extensions import BinaryReader
from telethon.network.mtprotostate import MTProtoState
from telethon.sessions import StringSession
from telethon.tl import TLRequest, functions, types
from telethon.tl.core import GzipPacked, MessageContainer

from tests.telegram_fake import FakeTelegram, Received, _RpcFailure, _code_of, _open, _to_bytes

_RPC_RESULT = 0xF35C6D01
_DC_ID = 2


class MTProtoServer:
    def __init__(self, fake: FakeTelegram) -> None:
        self.fake = fake
        self.key = AuthKey(os.urandom(256))
        self.port = 0
        self.connections = 0
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._last_msg_id = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.drop_connections()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def session(self) -> StringSession:
        """A session for a client of this server: its address, and the auth key it already shares."""
        session = StringSession()
        session.set_dc(_DC_ID, "127.0.0.1", self.port)
        session.auth_key = AuthKey(self.key.key)
        return session

    def drop_connections(self) -> None:
        """Cut every client's socket, as a network failure would."""
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        send_seq = 0
        try:
            while True:
                head = await reader.readexactly(8)
                length, _seq = struct.unpack("<ii", head)
                rest = await reader.readexactly(length - 8)
                body, checksum = rest[:-4], struct.unpack("<I", rest[-4:])[0]
                if crc32(head + body) != checksum:
                    return
                for session_id, msg_id, request in self._decrypt(body):
                    answer = self._answer(request, msg_id)
                    if answer is None:
                        continue
                    packet = self._encrypt(session_id, answer)
                    frame = struct.pack("<ii", len(packet) + 12, send_seq) + packet
                    writer.write(frame + struct.pack("<I", crc32(frame)))
                    send_seq += 1
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    def _decrypt(self, body: bytes) -> list[tuple[int, int, object]]:
        msg_key = body[8:24]
        aes_key, aes_iv = MTProtoState._calc_key(self.key.key, msg_key, True)
        plain = AES.decrypt_ige(body[24:], aes_key, aes_iv)
        if sha256(self.key.key[88:120] + plain).digest()[8:24] != msg_key:
            raise ConnectionError("message key mismatch")
        _salt, session_id, msg_id, _seq, length = struct.unpack("<qqqii", plain[:32])
        obj = BinaryReader(plain[32:32 + length]).tgread_object()
        messages = obj.messages if isinstance(obj, MessageContainer) else [type("M", (), {"msg_id": msg_id, "obj": obj})]
        found = []
        for message in messages:
            inner = message.obj
            if isinstance(inner, GzipPacked):
                inner = BinaryReader(inner.data).tgread_object()
            found.append((session_id, message.msg_id, inner))
        return found

    def _answer(self, request: object, msg_id: int) -> bytes | None:
        """The body of the answer to one message: a pong, or an rpc_result with the result or the error."""
        if not isinstance(request, TLRequest):
            return None  # msgs_ack and other service messages: no answer
        if isinstance(request, (functions.PingRequest, functions.PingDelayDisconnectRequest)):
            return bytes(types.Pong(msg_id=msg_id, ping_id=request.ping_id))
        query, envelopes = _open(request)
        self.fake.received.append(Received(query, envelopes))
        try:
            result = _to_bytes(self.fake.answer(query, self.key.key_id))
        except _RpcFailure as failure:
            code = failure.code if failure.code is not None else _code_of(failure.message)
            result = bytes(types.RpcError(error_code=code, error_message=failure.message))
        return struct.pack("<Iq", _RPC_RESULT, msg_id) + result

    def _encrypt(self, session_id: int, body: bytes) -> bytes:
        msg_id = max((int(time.time() * 2**32) & ~3) | 1, self._last_msg_id + 4)
        self._last_msg_id = msg_id
        data = struct.pack("<qqqii", 0, session_id, msg_id, 1, len(body)) + body
        data += os.urandom(-(len(data) + 12) % 16 + 12)
        msg_key = sha256(self.key.key[96:128] + data).digest()[8:24]
        aes_key, aes_iv = MTProtoState._calc_key(self.key.key, msg_key, False)
        return struct.pack("<Q", self.key.key_id) + msg_key + AES.encrypt_ige(data, aes_key, aes_iv)
