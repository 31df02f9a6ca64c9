"""The replay exchange speaks Bybit v5 on loopback: websocket protocol, pushes and REST."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import pytest
import requests
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from service.replay import Faults, ReplayConfig, ReplayExchange
from service.replay.tape import decimal_str

STEP = 300_000


def cfg(**kw: object) -> ReplayConfig:
    base: dict[str, object] = {
        "symbols": ("BTCUSDT", "ETHUSDT"),
        "speed": 6000.0,
        "history_bars": 400,
    }
    base.update(kw)
    return ReplayConfig(**base)  # type: ignore[arg-type]


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(5):
        msg = json.loads(await ws.recv())
    assert isinstance(msg, dict)
    return msg


async def next_reply(ws: ClientConnection) -> dict[str, Any]:
    """The next frame that is not a kline push."""
    while "topic" in (msg := await recv_json(ws)):
        pass
    return msg


def test_decimal_str_round_trips_without_exponent() -> None:
    for x in (81794.8, 0.00001234, 1e-7, 2.5, 100.0, 123456789.123):
        s = decimal_str(x)
        assert "e" not in s.lower() and float(s) == x
    assert decimal_str(100.0) == "100"


def test_fault_spec_parsing() -> None:
    assert Faults.parse("none") == Faults()
    assert Faults.parse("all") == Faults.all()
    f = Faults.parse("all,gap=0.5,disconnect=0,reject_topics=kline.5.XRPUSDT")
    assert f.gap == 0.5 and f.disconnect == 0 and f.malformed == Faults.all().malformed
    assert f.reject_topics == frozenset({"kline.5.XRPUSDT"})
    with pytest.raises(ValueError):
        Faults.parse("gap=2")
    with pytest.raises(ValueError):
        Faults.parse("nonsense=1")


async def test_subscribe_ack_ping_pong_and_error_replies() -> None:
    async with ReplayExchange(cfg()) as ex, connect(ex.ws_url) as ws:
        await ws.send('{"req_id":"s1","op":"subscribe","args":["kline.5.BTCUSDT"]}')
        ack = await next_reply(ws)
        assert ack == {**ack, "success": True, "ret_msg": "", "req_id": "s1", "op": "subscribe"}
        conn_id = ack["conn_id"]
        assert isinstance(conn_id, str) and conn_id
        await ws.send('{"op":"ping"}')
        assert await next_reply(ws) == {
            "success": True,
            "ret_msg": "pong",
            "req_id": "",
            "op": "ping",
            "conn_id": conn_id,
        }
        await ws.send('{"req_id":"s2","op":"subscribe","args":["kline.5.BTCUSDT"]}')
        dup = await next_reply(ws)
        assert (
            not dup["success"]
            and dup["ret_msg"] == "error:already subscribed,topic:kline.5.BTCUSDT"
        )
        # one bad topic voids the whole batch (the live behaviour)
        await ws.send(
            '{"req_id":"s3","op":"subscribe","args":["kline.5.ETHUSDT","kline.5.btcusdt"]}'
        )
        bad = await next_reply(ws)
        assert bad["ret_msg"] == "error:handler not found,topic:kline.5.btcusdt"
        assert bad["req_id"] == "s3" and bad["success"] is False
        await ws.send('{"op":"dance"}')
        assert (await next_reply(ws))["ret_msg"] == "error:invalid op"
        await ws.send("not json")
        assert (await next_reply(ws))["ret_msg"].startswith("Failed to decode incoming data")
        # the socket is still up and only BTCUSDT streams
        seen = set()
        for _ in range(12):
            msg = await recv_json(ws)
            if "topic" in msg:
                seen.add(msg["topic"])
        assert seen == {"kline.5.BTCUSDT"}


@pytest.mark.parametrize("jitter_ms", [0.0, 3.0])
async def test_pushes_are_updates_then_exactly_one_confirm_with_real_values(
    jitter_ms: float,
) -> None:
    """With push jitter (the CLI's default) the pushes still come in order, unchanged."""
    config = cfg(updates_per_candle=3, push_jitter_ms=jitter_ms)
    async with ReplayExchange(config) as ex, connect(ex.ws_url) as ws:
        await ws.send('{"req_id":"a","op":"subscribe","args":["kline.5.ETHUSDT"]}')
        items: list[tuple[int, dict[str, Any]]] = []
        while sum(1 for _, it in items if it["confirm"]) < 6:
            msg = await recv_json(ws)
            if "topic" not in msg:
                continue
            assert msg["type"] == "snapshot" and isinstance(msg["ts"], int)
            items += [(msg["ts"], it) for it in msg["data"]]
        tape = ex.tapes["ETHUSDT"]
        by_start: dict[int, list[dict[str, Any]]] = {}
        for ts, it in items:
            assert isinstance(it["start"], int) and isinstance(it["end"], int)
            assert it["end"] == it["start"] + STEP - 1 and it["start"] % STEP == 0
            for key in ("open", "high", "low", "close", "volume", "turnover", "interval"):
                assert isinstance(it[key], str)
            assert float(it["high"]) >= max(float(it["open"]), float(it["close"]))
            if it["confirm"]:
                assert ts > it["end"]  # the confirm lands just after the candle's end
            by_start.setdefault(it["start"], []).append(it)
        closed = [s for s, its in by_start.items() if its[-1]["confirm"]]
        first_full = closed[1]  # the first one may have started before we subscribed
        for s in closed[1:]:
            its = by_start[s]
            assert [it["confirm"] for it in its] == [False, False, False, True]
            want = tape.closed(s)
            assert want is not None
            last = its[-1]
            assert float(last["close"]) == want.close and float(last["high"]) == want.high
            assert float(last["volume"]) == want.volume
        assert first_full >= ex.start_ms
        rec = ex.recorded("ETHUSDT")  # what the exchange closed since the start, in order
        assert [k.start for k in rec] == [ex.start_ms + i * STEP for i in range(len(rec))]
        assert all(k == tape.closed(k.start) for k in rec) and len(rec) >= len(closed)


async def test_rest_envelope_newest_first_with_the_open_candle() -> None:
    async with ReplayExchange(cfg()) as ex:
        await asyncio.sleep(0.02)
        url = f"{ex.rest_url}/v5/market/kline?category=linear&symbol=BTCUSDT&interval=5&limit=5"
        resp = await asyncio.to_thread(requests.get, url, timeout=5)
        assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/json"
        body = resp.json()
        assert body["retCode"] == 0 and body["retMsg"] == "OK" and body["retExtInfo"] == {}
        assert body["result"]["symbol"] == "BTCUSDT" and body["result"]["category"] == "linear"
        rows = body["result"]["list"]
        assert len(rows) == 5 and all(
            len(r) == 7 and all(isinstance(c, str) for c in r) for r in rows
        )
        starts = [int(r[0]) for r in rows]
        assert starts == sorted(starts, reverse=True)
        assert starts[0] <= body["time"] < starts[0] + STEP  # the newest row is still open
        closed = ex.tapes["BTCUSDT"].closed(starts[1])
        assert closed is not None and float(rows[1][4]) == closed.close
        # inclusive bounds, anchored at start when only start is given
        s0 = ex.start_ms - 10 * STEP
        base = f"{ex.rest_url}/v5/market/kline?symbol=BTCUSDT&interval=5"
        url2 = f"{base}&start={s0}&end={s0 + 2 * STEP}"
        rows2 = (await asyncio.to_thread(requests.get, url2, timeout=5)).json()["result"]["list"]
        assert [int(r[0]) for r in rows2] == [s0 + 2 * STEP, s0 + STEP, s0]
        url3 = f"{ex.rest_url}/v5/market/kline?symbol=BTCUSDT&interval=5&start={s0}&limit=2"
        rows3 = (await asyncio.to_thread(requests.get, url3, timeout=5)).json()["result"]["list"]
        assert [int(r[0]) for r in rows3] == [s0 + STEP, s0]


@pytest.mark.parametrize(
    ("query", "msg"),
    [
        ("symbol=NOPEUSDT&interval=5", "Not supported symbols"),
        ("interval=5", "Not supported symbols"),
        ("symbol=BTCUSDT&interval=7", "Invalid period!"),
    ],
)
async def test_rest_errors_use_http_200_and_retcode_10001(query: str, msg: str) -> None:
    async with ReplayExchange(cfg()) as ex:
        resp = await asyncio.to_thread(
            requests.get, f"{ex.rest_url}/v5/market/kline?{query}", timeout=5
        )
        assert resp.status_code == 200
        body = resp.json()
        assert body["retCode"] == 10001 and body["retMsg"] == msg and body["result"] == {}


async def test_handshake_refusal_after_a_disconnect() -> None:
    faults = Faults(disconnect=1.0, refuse_handshakes=1)
    async with ReplayExchange(cfg(faults=faults)) as ex:
        async with connect(ex.ws_url) as ws:
            await ws.send('{"req_id":"a","op":"subscribe","args":["kline.5.BTCUSDT"]}')
            with pytest.raises(ConnectionClosed):  # a clean close or an abort
                for _ in range(100):
                    await recv_json(ws)
        with pytest.raises(InvalidStatus) as err:
            async with connect(ex.ws_url):
                pass
        assert err.value.response.status_code == 503


def test_push_jitter_is_bounded_spread_and_seeded() -> None:
    """Each push waits an extra uniform [0, N) ms (real time), drawn from its own seeded
    generator: the same seed gives the same delays, and faults' draws are not shifted."""
    draws = [ReplayExchange(cfg(push_jitter_ms=4.0)).push_jitter_s() for _ in range(3)]
    assert draws[0] == draws[1] == draws[2]  # a fresh exchange, the same first draw
    ex = ReplayExchange(cfg(push_jitter_ms=4.0))
    delays = [ex.push_jitter_s() for _ in range(400)]
    assert all(0.0 <= d < 0.004 for d in delays)
    assert max(delays) - min(delays) > 0.0035  # spread over a whole 4 ms timer tick
    assert len({int(d * 1e4) for d in delays}) == 40  # every 0.1 ms bin is hit
    plain = ReplayExchange(cfg())
    assert [plain.push_jitter_s() for _ in range(5)] == [0.0] * 5
    with pytest.raises(ValueError, match="push_jitter_ms"):
        ReplayExchange(cfg(push_jitter_ms=-1.0))


def test_cli_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "service.replay", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--faults" in out.stdout and "--speed" in out.stdout
    assert "--push-jitter-ms" in out.stdout


def test_candle_faults_can_be_scoped_to_symbols() -> None:
    f = Faults.parse("missing_confirm=1,only=BTCUSDT+ETHUSDT")
    assert f.missing_confirm == 1.0 and f.only == frozenset({"BTCUSDT", "ETHUSDT"})
