"""BingX request signing checks (reference §3): what a signed query must carry for the simulator to accept it."""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import unquote

from services.bingx_sim.engine import BingxError

DEFAULT_RECV_WINDOW_MS = 5000
# BingX caps the window a client may ask for; a huge recvWindow must not turn the timestamp check off.
MAX_RECV_WINDOW_MS = 60000


def sign(secret: str, to_sign: str) -> str:
    return hmac.new(secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()


def split_query(raw_query: str) -> tuple[str, str | None]:
    """The string that was signed and the signature sent with it.

    The parts are kept in the order they arrived (BingX: "splice all params without sorting") and each is
    percent-decoded on its own, which is what ccxt signs (`rawencode`) and what BingX's sample code signs.
    """
    signature: str | None = None
    kept: list[str] = []
    for part in raw_query.split("&") if raw_query else []:
        if part.startswith("signature="):
            signature = part[len("signature="):]
        else:
            kept.append(unquote(part))
    return "&".join(kept), signature


def parse_query(raw_query: str) -> dict[str, str]:
    """Decode a query the same way it was verified (unquote, not unquote_plus: ccxt encodes a space as %20)."""
    params: dict[str, str] = {}
    for part in raw_query.split("&") if raw_query else []:
        if not part:
            continue
        key, _, value = part.partition("=")
        params[unquote(key)] = unquote(value)
    return params


def verify(raw_query: str, api_key_sent: str | None, api_key: str, secret: str, now_ms: int) -> None:
    """Raise the BingX error a real server gives, in its order: key, signature present, signature, timestamp."""
    if not api_key_sent or not hmac.compare_digest(api_key_sent.encode(), api_key.encode()):
        raise BingxError(100413, "Incorrect apiKey, please check your valid api key")
    to_sign, signature = split_query(raw_query)
    if not signature:
        raise BingxError(100412, "Null signature")
    if not hmac.compare_digest(sign(secret, to_sign), signature.lower()):
        raise BingxError(100001, "Signature verification failed due to signature mismatch")
    params = parse_query(raw_query)
    check_timestamp(params.get("timestamp"), params.get("recvWindow"), now_ms)


def check_timestamp(timestamp: str | None, recv_window: str | None, now_ms: int) -> None:
    stale = BingxError(100421, "Null timestamp or timestamp mismatch")
    try:
        sent = int(timestamp) if timestamp else None
        window = int(recv_window) if recv_window else DEFAULT_RECV_WINDOW_MS
    except ValueError:
        raise stale from None
    window = min(max(window, 0), MAX_RECV_WINDOW_MS) or DEFAULT_RECV_WINDOW_MS
    if sent is None or abs(now_ms - sent) > window:
        raise stale
