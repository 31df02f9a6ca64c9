"""Bybit v5 public websocket: pure frame parsing and request building (no I/O).

Shapes follow ../shared/reference/bybit-v5-public.md (sections 1-3): kline pushes carry
``data`` as an array whose every element is parsed; prices arrive as decimal strings; the
candle time is ``start`` (never ``timestamp``); only ``confirm: true`` is a closed candle.
Acks and pongs share the ``{"success", "ret_msg", "conn_id", "req_id", "op"}`` envelope
(the linear pong has ``op == "ping"`` and ``ret_msg == "pong"``).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from typing import Any

import orjson

from service.market.klines import VALID_INTERVALS, Kline, interval_ms

MAINNET_WS_URL = "wss://stream.bybit.com/v5/public/linear"
MAINNET_REST_URL = "https://api.bybit.com"


class FrameError(ValueError):
    """A frame that cannot be used; ``reason`` is a bounded metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def short(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: messages and logs never carry a whole
    hostile payload (a 10 MB string in a frame stays out of the log and out of memory)."""
    if isinstance(value, str | bytes) and len(value) > limit:
        value = value[:limit]  # cut before repr: repr of a huge string is a huge copy
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…"


@dataclass(frozen=True, slots=True)
class KlineFrame:
    """A ``kline.{interval}.{symbol}`` push; ``klines`` keeps the order of ``data``."""

    topic: str
    symbol: str
    interval: str
    ts: int
    klines: tuple[Kline, ...]


@dataclass(frozen=True, slots=True)
class Ack:
    """Reply to subscribe/unsubscribe (or an error reply to an unknown op)."""

    op: str
    success: bool
    ret_msg: str
    req_id: str
    conn_id: str


@dataclass(frozen=True, slots=True)
class Pong:
    """Reply to a JSON ``{"op": "ping"}``."""

    req_id: str
    conn_id: str


@dataclass(frozen=True, slots=True)
class Notice:
    """Valid JSON that is neither data nor an ack (e.g. an error text); logged, not fatal."""

    payload: dict[str, Any]


Frame = KlineFrame | Ack | Pong | Notice


def kline_topic(interval: str, symbol: str) -> str:
    """The public topic name, e.g. ``kline.5.BTCUSDT``."""
    return f"kline.{interval}.{symbol}"


@functools.lru_cache(maxsize=1024)
def parse_topic(topic: str) -> tuple[str, str] | None:
    """``(interval, symbol)`` of a well-formed kline topic, else None."""
    parts = topic.split(".")
    if len(parts) != 3 or parts[0] != "kline":
        return None
    interval, symbol = parts[1], parts[2]
    if interval not in VALID_INTERVALS or not symbol or symbol.upper() != symbol:
        return None
    return interval, symbol


def subscribe_message(topics: list[str], req_id: str, op: str = "subscribe") -> str:
    """A subscribe (or unsubscribe) request with a client-chosen ``req_id``."""
    return json.dumps({"req_id": req_id, "op": op, "args": topics}, separators=(",", ":"))


def ping_message(req_id: str) -> str:
    """The JSON heartbeat Bybit recommends every 20 s."""
    return json.dumps({"req_id": req_id, "op": "ping"}, separators=(",", ":"))


def rejected_topic(ret_msg: str) -> str | None:
    """The topic named by ``error:handler not found,topic:X`` (a permanent rejection)."""
    marker = "handler not found,topic:"
    i = ret_msg.find(marker)
    return ret_msg[i + len(marker) :].strip() if i >= 0 else None


def is_already_subscribed(ret_msg: str) -> bool:
    """``already subscribed`` is benign: the first subscription keeps streaming."""
    return "already subscribed" in ret_msg


def _int_field(obj: dict[str, Any], key: str) -> int:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise FrameError("bad_value", f"{key} must be an integer (ms), got {short(v)}")
    return v


def _num_field(obj: dict[str, Any], key: str, *, positive: bool) -> float:
    v = obj.get(key)
    if not isinstance(v, str):
        raise FrameError("bad_value", f"{key} must be a decimal string, got {short(v)}")
    try:
        x = float(v)
    except ValueError:
        raise FrameError("bad_value", f"{key} is not a number: {short(v)}") from None
    if not math.isfinite(x) or x < 0 or (positive and x == 0):
        raise FrameError("bad_price", f"{key} is not finite and positive: {short(v)}")
    return x


def parse_kline(obj: Any, symbol: str, interval: str) -> Kline:
    """One element of a push's ``data`` array → :class:`Kline` (validated).

    The hot path: a well-formed element is checked with a few combined comparisons; anything
    else goes through :func:`_parse_kline_checked`, which finds and names the problem. Both
    accept exactly the same elements.
    """
    try:
        so, sh, sl, sc, sv = obj["open"], obj["high"], obj["low"], obj["close"], obj["volume"]
        start, confirm, iv = obj["start"], obj["confirm"], obj["interval"]
        st = obj.get("turnover", "0")
        if (
            type(so) is str
            and type(sh) is str
            and type(sl) is str
            and type(sc) is str
            and type(sv) is str
            and type(st) is str
            and type(start) is int
            and type(confirm) is bool
            and iv == interval
            and (start % interval_ms(interval) == 0 or interval == "W")
        ):
            o, h, lo, c, v, t = float(so), float(sh), float(sl), float(sc), float(sv), float(st)
            # 0 < lo <= o, c <= h < inf: every price positive and finite; any NaN fails a
            # comparison (no min/max here: they let a NaN through)
            if (
                0.0 < lo <= o <= h < math.inf
                and lo <= c <= h
                and 0.0 <= v < math.inf
                and 0.0 <= t < math.inf
            ):
                turnover = t if "turnover" in obj else None
                return Kline(symbol, interval, start, o, h, lo, c, v, turnover, confirm)
    except (KeyError, TypeError, ValueError):
        pass
    return _parse_kline_checked(obj, symbol, interval)


def _parse_kline_checked(obj: Any, symbol: str, interval: str) -> Kline:
    """:func:`parse_kline` the slow way: each rule checked in turn, a FrameError naming it."""
    if not isinstance(obj, dict):
        raise FrameError("bad_shape", "data element is not an object")
    if obj.get("interval") != interval:
        raise FrameError(
            "bad_value", f"interval {short(obj.get('interval'))} != topic's {interval}"
        )
    start = _int_field(obj, "start")
    step = interval_ms(interval)
    if start % step != 0 and interval != "W":  # weeks start on Monday, not at epoch
        raise FrameError("off_grid", f"start {start} is not on the {interval} grid")
    confirm = obj.get("confirm")
    if not isinstance(confirm, bool):
        raise FrameError("bad_value", f"confirm must be a boolean, got {short(confirm)}")
    o = _num_field(obj, "open", positive=True)
    h = _num_field(obj, "high", positive=True)
    lo = _num_field(obj, "low", positive=True)
    c = _num_field(obj, "close", positive=True)
    v = _num_field(obj, "volume", positive=False)
    turnover = _num_field(obj, "turnover", positive=False) if "turnover" in obj else None
    if h < max(o, c, lo) or lo > min(o, c):
        raise FrameError("bad_ohlc", f"inconsistent OHLC o={o} h={h} l={lo} c={c}")
    return Kline(symbol, interval, start, o, h, lo, c, v, turnover, confirm)


def _ack(msg: dict[str, Any]) -> Ack | Pong:
    op = msg.get("op")
    ret_msg = msg.get("ret_msg", "")
    req_id = msg.get("req_id", "")
    conn_id = msg.get("conn_id", "")
    if not isinstance(ret_msg, str) or not isinstance(req_id, str):
        raise FrameError("bad_shape", "ret_msg/req_id must be strings")
    conn = conn_id if isinstance(conn_id, str) else str(conn_id)
    if op in ("ping", "pong") and (ret_msg == "pong" or op == "pong"):
        return Pong(req_id=req_id, conn_id=conn)
    return Ack(
        op=str(op or ""),
        success=msg.get("success") is True,
        ret_msg=ret_msg,
        req_id=req_id,
        conn_id=conn,
    )


def parse_frame(raw: str | bytes) -> Frame:
    """Parse one websocket text frame; raise :class:`FrameError` for anything unusable."""
    try:
        msg = orjson.loads(raw)  # ~3x json.loads on a kline push; rejects NaN/Infinity literals
    except (ValueError, UnicodeDecodeError, TypeError):
        raise FrameError("malformed_json", "frame is not JSON") from None
    if not isinstance(msg, dict):
        raise FrameError("bad_shape", "frame is not a JSON object")
    topic = msg.get("topic")
    if topic is None:
        if "op" in msg or "success" in msg:
            return _ack(msg)
        return Notice(payload=msg)
    if type(topic) is not str:
        raise FrameError("bad_shape", "topic is not a string")
    parsed = parse_topic(topic)
    if parsed is None:
        raise FrameError("unknown_topic", f"unexpected topic {short(topic)}")
    interval, symbol = parsed
    data = msg.get("data")
    if not isinstance(data, list) or not data:
        raise FrameError("bad_shape", "data must be a non-empty array")
    ts = _int_field(msg, "ts")
    if len(data) == 1:  # the usual push: skip the generator
        klines: tuple[Kline, ...] = (parse_kline(data[0], symbol, interval),)
    else:
        klines = tuple(parse_kline(item, symbol, interval) for item in data)
    return KlineFrame(topic=topic, symbol=symbol, interval=interval, ts=ts, klines=klines)


@dataclass(frozen=True, slots=True)
class AckOutcome:
    """What an ack means for the client: requests to send now, and how the batch ended."""

    resend: list[str]
    subscribed: list[str]
    rejected: str | None = None  # topic refused for good ("handler not found")
    give_up: bool = False  # transient refusals kept coming: reconnect


@dataclass
class _PendingRequest:
    topics: list[str]
    deadline: float
    attempt: int


class SubscriptionBook:
    """Subscribe bookkeeping of one client (pure): batches, ``req_id`` → ack, retries.

    Small batches because one bad topic voids its whole batch [3P]; a permanently refused
    topic is dropped and the rest of its batch requested again; any other refusal is retried
    up to ``max_attempts`` times; ``deadline()`` is when a missing ack becomes a failure.
    """

    def __init__(
        self,
        topics: list[str],
        *,
        batch: int = 10,
        ack_timeout_s: float = 10.0,
        max_attempts: int = 3,
    ) -> None:
        self.topics = list(topics)
        self.batch = max(1, batch)
        self.ack_timeout_s = ack_timeout_s
        self.max_attempts = max_attempts
        self.rejected: set[str] = set()
        self._pending: dict[str, _PendingRequest] = {}
        self._ids = 0

    def active(self) -> list[str]:
        """Topics still wanted (configured minus permanently rejected)."""
        return [t for t in self.topics if t not in self.rejected]

    def connect(self, now: float) -> list[str]:
        """A fresh connection: forget pending acks, return the subscribe requests to send."""
        self._pending.clear()
        return self.requests(self.active(), now)

    def requests(self, topics: list[str], now: float, attempt: int = 1) -> list[str]:
        """Subscribe requests for ``topics`` in batches, each with a unique ``req_id``."""
        out = []
        for i in range(0, len(topics), self.batch):
            self._ids += 1
            req_id = f"sub-{self._ids}"
            chunk = topics[i : i + self.batch]
            self._pending[req_id] = _PendingRequest(chunk, now + self.ack_timeout_s, attempt)
            out.append(subscribe_message(chunk, req_id))
        return out

    def deadline(self) -> float | None:
        """The earliest time an outstanding ack is overdue (None when nothing is pending)."""
        return min((p.deadline for p in self._pending.values()), default=None)

    def on_ack(self, ack: Ack, now: float) -> AckOutcome | None:
        """Match an ack to its request; None if it answers nothing we sent."""
        pending = self._pending.pop(ack.req_id, None)
        if ack.op != "subscribe" or pending is None:
            return None
        if ack.success or is_already_subscribed(ack.ret_msg):
            return AckOutcome(resend=[], subscribed=pending.topics)
        bad = rejected_topic(ack.ret_msg)
        if bad is not None and bad in pending.topics:
            self.rejected.add(bad)
            rest = [t for t in pending.topics if t != bad]
            return AckOutcome(self.requests(rest, now, pending.attempt), [], rejected=bad)
        if pending.attempt >= self.max_attempts:
            return AckOutcome(resend=[], subscribed=[], give_up=True)
        return AckOutcome(self.requests(pending.topics, now, pending.attempt + 1), [])
