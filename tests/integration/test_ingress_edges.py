"""The ingress against TradingView as it really is: other bridges' formats, resends, path tokens, sources, limits,
and a broker link that drops while alerts arrive."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from tests.integration.test_ingress import OTHER_SECRET, SECRET, ingress_client, queued_signals, records
from tests.proxy import TcpProxy
from tests.support import RABBIT_PORT, drain_signals, wait_for

WEBHOOK = "/webhook/tradingview"


async def post(client, body: bytes | str | dict, *, path: str = WEBHOOK, headers: dict | None = None):
    data = orjson.dumps(body) if isinstance(body, dict) else body
    response = await client.post(path, data=data, headers=headers or {"Content-Type": "text/plain"})
    return response.status, await response.json()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"secret": SECRET, "timestamp": "2026-12-03T12:00:00Z", "max_lag": "300", "trigger_price": "60000", "tv_exchange": "BINANCE",
          "tv_instrument": "BTCUSDT.P", "action": "buy", "order": {"amount": "0.01", "currency_type": "base"}, "bot_uuid": "x"},
         {"format": "3commas", "symbol": "BTC/USDT:USDT", "action": "buy", "qty": "0.01", "max_lag_s": 300.0}),
        ({"secret": SECRET, "tv_instrument": "ETHUSDT.P", "action": "sell", "order": {"amount": "250", "currency_type": "quote"}},
         {"format": "3commas", "symbol": "ETH/USDT:USDT", "action": "sell", "usdt": "250"}),
        (f"EXCHANGE=binance\nSYMBOL=SOLUSDT.P\nSIGNAL=BUY\nVOLUME=2%\nLEVERAGE=5\nTOKEN={SECRET}",
         {"format": "octobot", "symbol": "SOL/USDT:USDT", "action": "buy", "percent": "2", "leverage": 5}),
        (f"SYMBOL=BTCUSDT.P;SIGNAL=SELL;ORDER_TYPE=LIMIT;PRICE=65000;VOLUME=0.02;REDUCE_ONLY=true;TOKEN={SECRET}",
         {"format": "octobot", "symbol": "BTC/USDT:USDT", "action": "sell", "order_type": "limit", "price": "65000",
          "qty": "0.02", "reduce_only": True}),
        ({"passphrase": SECRET, "symbol": "BTCUSDT.P", "action": "exit-long"},
         {"format": "native", "symbol": "BTC/USDT:USDT", "action": "close_long"}),
        ({"token": SECRET, "symbol": "BTCUSDT.P", "action": "enter-short", "qty": 1},
         {"format": "native", "action": "short", "qty": "1"}),
    ],
)
async def test_every_format_becomes_the_same_signal(amqp_url, mongo_uri, mongo_db_name, mongo_db, body, expected):
    expected_format = expected.pop("format")
    async with ingress_client(amqp_url, mongo_uri, mongo_db_name) as client:
        status, answer = await post(client, body)
    assert status == 200 and answer["status"] == "accepted", answer
    [signal] = await queued_signals(amqp_url)
    dumped = signal.model_dump(mode="json")
    assert {k: dumped[k] for k in expected} == expected
    [record] = await records(mongo_db, 1)
    assert record["format"] == expected_format and record["result"] == "accepted"


async def test_the_token_may_come_in_the_path_and_is_never_recorded(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    async with ingress_client(amqp_url, mongo_uri, mongo_db_name) as client:
        ok = await post(client, {"symbol": "BTCUSDT.P", "action": "buy", "qty": 1}, path=f"{WEBHOOK}/{OTHER_SECRET}")
        refused = await post(client, {"symbol": "BTCUSDT.P", "action": "buy", "qty": 1}, path=f"{WEBHOOK}/guessed-{SECRET}")
    assert ok[0] == 200 and refused == (401, {"status": "rejected", "reason": "unknown token"})
    [signal] = await queued_signals(amqp_url)
    assert signal.token_name == "rotated"
    stored = str(await records(mongo_db, 2))
    assert SECRET not in stored and OTHER_SECRET not in stored


async def test_four_identical_deliveries_are_one_signal(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    body = {"token": SECRET, "symbol": "BTCUSDT.P", "action": "buy", "qty": "0.01", "timestamp": "2026-12-03T12:00:00Z"}
    async with ingress_client(amqp_url, mongo_uri, mongo_db_name) as client:
        first = await post(client, body)
        # TradingView resends after a 5xx; two may even arrive at once.
        rest = await asyncio.gather(post(client, body), post(client, body), post(client, body))
    assert first[0] == 200 and first[1]["status"] == "accepted"
    assert [r for r in rest] == [(200, {"status": "duplicate", "signal_id": first[1]["signal_id"]})] * 3
    assert [s.signal_id for s in await queued_signals(amqp_url)] == [first[1]["signal_id"]]
    results = sorted(r["result"] for r in await records(mongo_db, 4))
    assert results == ["accepted", "duplicate", "duplicate", "duplicate"]


async def test_concurrent_identical_deliveries_publish_once(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    body = {"token": SECRET, "id": "same-moment", "symbol": "BTCUSDT.P", "action": "buy", "qty": "0.01"}
    async with ingress_client(amqp_url, mongo_uri, mongo_db_name) as client:
        answers = await asyncio.gather(*(post(client, body) for _ in range(4)))
    assert sorted(a[1]["status"] for a in answers) == ["accepted", "duplicate", "duplicate", "duplicate"]
    assert [s.signal_id for s in await queued_signals(amqp_url)] == ["same-moment"]


async def test_an_id_reused_by_a_different_alert_gets_409(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    async with ingress_client(amqp_url, mongo_uri, mongo_db_name) as client:
        await post(client, {"token": SECRET, "id": "Long", "symbol": "BTCUSDT.P", "action": "buy", "qty": 1})
        status, body = await post(client, {"token": SECRET, "id": "Long", "symbol": "BTCUSDT.P", "action": "buy", "qty": 2})
    assert status == 409 and "already used by a different alert" in body["reason"]
    assert len(await queued_signals(amqp_url)) == 1


async def test_a_resend_after_a_restart_is_still_a_duplicate(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    body = {"token": SECRET, "id": "before-restart", "symbol": "BTCUSDT.P", "action": "buy", "qty": 1}
    async with ingress_client(amqp_url, mongo_uri, mongo_db_name) as client:
        assert (await post(client, body))[1]["status"] == "accepted"
    await records(mongo_db, 1)
    async with ingress_client(amqp_url, mongo_uri, mongo_db_name) as client:
        assert await post(client, body) == (200, {"status": "duplicate", "signal_id": "before-restart"})
    assert len(await queued_signals(amqp_url)) == 1


async def test_a_token_limited_to_symbols_and_strategies(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    async with ingress_client(amqp_url, mongo_uri, mongo_db_name, webhook_token_symbols="main=BTCUSDT.P|ETH-USDT",
                              webhook_token_strategies="rotated=trend") as client:
        assert (await post(client, {"token": SECRET, "symbol": "ETHUSDT.P", "action": "buy", "qty": 1}))[0] == 200
        status, body = await post(client, {"token": SECRET, "symbol": "SOLUSDT.P", "action": "buy", "qty": 1})
        assert (status, body["reason"]) == (403, "token 'main' may not trade SOL/USDT:USDT")
        status, body = await post(client, {"token": OTHER_SECRET, "symbol": "SOLUSDT.P", "action": "buy", "qty": 1, "strategy": "scalp"})
        assert (status, body["reason"]) == (403, "token 'rotated' may not send strategy scalp")
    assert len(await queued_signals(amqp_url)) == 1


@pytest.mark.parametrize(
    ("settings", "headers", "status"),
    [
        ({"webhook_allowed_sources": "tradingview"}, {}, 403),  # the test client is 127.0.0.1
        ({"webhook_allowed_sources": "tradingview"}, {"X-Forwarded-For": "52.89.214.238"}, 403),  # not from a trusted proxy
        ({"webhook_allowed_sources": "tradingview", "webhook_trusted_proxies": "127.0.0.1"}, {"X-Forwarded-For": "52.89.214.238"}, 200),
        # The left part of the chain is whatever the client wrote: only the hop the proxy saw counts.
        ({"webhook_allowed_sources": "tradingview", "webhook_trusted_proxies": "127.0.0.1"}, {"X-Forwarded-For": "52.89.214.238, 203.0.113.9"}, 403),
        ({"webhook_allowed_sources": "127.0.0.0/8"}, {}, 200),
    ],
)
async def test_the_source_allowlist_believes_forwarded_for_only_from_trusted_proxies(amqp_url, mongo_uri, mongo_db_name, mongo_db, settings, headers, status):
    async with ingress_client(amqp_url, mongo_uri, mongo_db_name, **settings) as client:
        answer = await post(client, {"token": SECRET, "symbol": "BTCUSDT.P", "action": "buy", "qty": 1}, headers=headers)
    assert answer[0] == status, answer
    if status == 403:
        assert answer[1]["reason"] == "this source address may not send alerts"


async def test_rate_limits_per_token_and_per_address(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    # Rates are per second with a burst of five, so alerts fired together (a close and an open) pass.
    async with ingress_client(amqp_url, mongo_uri, mongo_db_name, webhook_rate_limit_per_token=0.01) as client:
        statuses = [(await post(client, {"token": SECRET, "symbol": "BTCUSDT.P", "action": "buy", "qty": i + 1}))[0] for i in range(7)]
        other = await post(client, {"token": OTHER_SECRET, "symbol": "BTCUSDT.P", "action": "buy", "qty": 1})
    assert statuses == [200] * 5 + [429, 429] and other[0] == 200
    async with ingress_client(amqp_url, mongo_uri, mongo_db_name + "b", webhook_rate_limit_per_ip=0.01) as client:
        statuses = [(await post(client, {"token": SECRET, "symbol": "BTCUSDT.P", "action": "buy", "qty": i + 10}))[0] for i in range(6)]
        assert statuses == [200] * 5 + [429]
        body = (await post(client, {"token": SECRET, "symbol": "BTCUSDT.P", "action": "buy", "qty": 99}))[1]
    assert body == {"status": "rejected", "reason": "too many requests from this address"}


async def test_a_dropped_broker_link_loses_nothing_and_keeps_the_order(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    proxy = await TcpProxy("127.0.0.1", RABBIT_PORT).start()
    proxied = amqp_url.replace(f":{RABBIT_PORT}/", f":{proxy.port}/")
    accepted: list[str] = []
    try:
        async with ingress_client(proxied, mongo_uri, mongo_db_name) as client:
            async def send(n: int) -> None:
                status, body = await post(client, {"token": SECRET, "id": f"seq-{n:03d}", "symbol": "BTCUSDT.P", "action": "buy", "qty": 1})
                assert status == 200, body
                accepted.append(body["signal_id"])

            for n in range(20):
                await send(n)
            proxy.cut()  # the network to the broker goes away while alerts keep coming
            for n in range(20, 60):
                await send(n)
            proxy.restore()
            for n in range(60, 80):
                await send(n)

            async def relayed() -> bool:
                metrics = await (await client.get("/metrics")).text()
                return "tvtb_webhook_outbox_pending 0.0" in metrics

            await wait_for(relayed, timeout=30, what="the outbox to drain")
            assert await mongo_db.outbox.count_documents({}) == 0
    finally:
        await proxy.stop()
    delivered = [s.signal_id for s in await drain_signals(amqp_url)]
    assert accepted == [f"seq-{n:03d}" for n in range(80)]
    assert delivered == accepted  # every alert answered 200, exactly once, in order
    durable = [r["durable"] for r in await records(mongo_db, 80) if r["result"] == "accepted"]
    assert durable[:20] == ["published"] * 20 and durable[20:60] == ["outbox"] * 40  # the cut was real


async def test_a_broker_link_cut_under_concurrent_load_loses_and_reorders_nothing(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    """16 senders on two symbols; the link drops while publishes are in flight and comes back while alerts still come.

    Each sender waits for its answer before its next alert, so its alerts must reach the queue in its own order.
    """
    proxy = await TcpProxy("127.0.0.1", RABBIT_PORT).start()
    proxied = amqp_url.replace(f":{RABBIT_PORT}/", f":{proxy.port}/")
    senders, per_sender = 16, 15
    accepted: dict[int, list[str]] = {k: [] for k in range(senders)}
    answered = asyncio.Event()
    try:
        async with ingress_client(proxied, mongo_uri, mongo_db_name) as client:
            async def sender(k: int) -> None:
                symbol = "BTCUSDT.P" if k % 2 else "ETHUSDT.P"
                for n in range(per_sender):
                    status, body = await post(client, {"token": SECRET, "id": f"s{k:02d}-{n:03d}", "symbol": symbol, "action": "buy", "qty": 1})
                    assert status == 200, body
                    accepted[k].append(body["signal_id"])
                    answered.set()

            async def cutter() -> None:
                def count() -> int:
                    return sum(map(len, accepted.values()))

                while count() < 40:
                    answered.clear()
                    await answered.wait()
                proxy.cut()  # other senders' alerts are being committed right now
                while count() < 140:
                    answered.clear()
                    await answered.wait()
                proxy.restore()

            await asyncio.wait_for(asyncio.gather(cutter(), *(sender(k) for k in range(senders))), timeout=60)

            async def relayed() -> bool:
                metrics = await (await client.get("/metrics")).text()
                return "tvtb_webhook_outbox_pending 0.0" in metrics

            await wait_for(relayed, timeout=30, what="the outbox to drain")
    finally:
        await proxy.stop()
    delivered = [s.signal_id for s in await drain_signals(amqp_url)]
    assert len(delivered) == len(set(delivered)) == senders * per_sender  # every 200 in the queue, none twice
    for k in range(senders):
        assert [i for i in delivered if i.startswith(f"s{k:02d}-")] == accepted[k]  # each sender's order kept
    durable = {r["durable"] for r in await records(mongo_db, senders * per_sender) if r["result"] == "accepted"}
    assert durable == {"published", "outbox"}  # the cut was real


async def test_the_same_alert_text_firing_again_after_the_resend_window_is_a_new_signal(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    body = {"token": SECRET, "symbol": "BTCUSDT.P", "action": "buy", "qty": "0.01"}  # no id, no {{timenow}}
    async with ingress_client(amqp_url, mongo_uri, mongo_db_name, webhook_resend_window_s=0) as client:
        first = await post(client, body)
        again = await post(client, body)
    assert first[1]["status"] == again[1]["status"] == "accepted"
    assert first[1]["signal_id"] != again[1]["signal_id"]
    assert len(await queued_signals(amqp_url)) == 2


async def test_a_forged_forwarded_for_line_before_the_proxys_own_does_not_pass_the_allowlist(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    from multidict import CIMultiDict

    headers = CIMultiDict([("Content-Type", "text/plain"), ("X-Forwarded-For", "52.89.214.238"), ("X-Forwarded-For", "203.0.113.9")])
    async with ingress_client(amqp_url, mongo_uri, mongo_db_name, webhook_allowed_sources="tradingview",
                              webhook_trusted_proxies="127.0.0.1") as client:
        response = await client.post(WEBHOOK, data=orjson.dumps({"token": SECRET, "symbol": "BTCUSDT.P", "action": "buy", "qty": 1}),
                                     headers=headers)
    assert response.status == 403


async def test_a_body_that_trickles_in_too_slowly_gets_408_and_a_record(amqp_url, mongo_uri, mongo_db_name, mongo_db):
    async with ingress_client(amqp_url, mongo_uri, mongo_db_name, body_timeout_s=0.3) as client:
        reader, writer = await asyncio.open_connection(client.host, client.port)
        try:
            body = orjson.dumps({"token": SECRET, "symbol": "BTCUSDT.P", "action": "buy", "qty": 1})
            writer.write(b"POST /webhook/tradingview HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:10])
            await writer.drain()  # the rest never comes
            status_line = await asyncio.wait_for(reader.readline(), timeout=5)
        finally:
            writer.close()
        assert status_line.startswith(b"HTTP/1.1 408"), status_line
        [record] = await records(mongo_db, 1)
    assert record["result"] == "timeout" and record["reason"] == "the body did not arrive in time"
    assert await queued_signals(amqp_url) == []

