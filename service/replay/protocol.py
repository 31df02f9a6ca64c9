"""What the replay exchange answers (pure): websocket ops and the REST kline envelope.

Shapes from ../shared/reference/bybit-v5-public.md §7: linear acks and pongs share
``{"success", "ret_msg", "conn_id", "req_id", "op"}`` (the pong keeps ``op: "ping"``); a bad
topic gets ``error:handler not found,topic:<first bad>`` and voids its batch; REST errors are
HTTP 200 with ``retCode`` 10001.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from service.replay.faults import Faults
from service.replay.tape import Tape


@dataclass
class OpResult:
    """Reply frames (without ``conn_id``), topic changes, and the fault to count, if any."""

    replies: list[dict[str, Any]] = field(default_factory=list)
    add: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    stat: str | None = None


def _subscribe(
    args: Any,
    req_id: str,
    subscribed: set[str],
    known: Callable[[str], bool],
    faults: Faults,
    rng: random.Random,
) -> OpResult:
    def ack(success: bool, ret_msg: str) -> dict[str, Any]:
        return {"success": success, "ret_msg": ret_msg, "req_id": req_id, "op": "subscribe"}

    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        return OpResult([ack(False, "error:args invalid")])
    if faults.reject_subscribe and rng.random() < faults.reject_subscribe:
        return OpResult([ack(False, "error:subscribe failed, try again")], stat="reject_subscribe")
    bad = [t for t in args if not known(t) or t in faults.reject_topics]
    good = [t for t in args if t not in bad]
    if bad:
        reply = ack(False, f"error:handler not found,topic:{bad[0]}")
        return OpResult([reply], add=[] if faults.void_batch else good, stat="rejected_topic")
    dup = [t for t in good if t in subscribed]
    if dup:
        return OpResult([ack(False, f"error:already subscribed,topic:{dup[0]}")], add=good)
    return OpResult([ack(True, "")], add=good)


def handle_op(
    raw: str | bytes,
    *,
    subscribed: set[str],
    known: Callable[[str], bool],
    faults: Faults,
    rng: random.Random,
) -> OpResult:
    """The exchange's answer to one client frame."""
    try:
        msg = json.loads(raw)
        if not isinstance(msg, dict):
            raise ValueError("not an object")
    except ValueError:
        text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
        return OpResult(
            [{"success": False, "ret_msg": f"Failed to decode incoming data:{text[:80]}"}]
        )
    op, req_id = msg.get("op"), str(msg.get("req_id", ""))
    if op == "ping":
        return OpResult([{"success": True, "ret_msg": "pong", "req_id": req_id, "op": "ping"}])
    if op == "subscribe":
        return _subscribe(msg.get("args"), req_id, subscribed, known, faults, rng)
    if op == "unsubscribe":
        args = msg.get("args")
        topics = [str(a) for a in args] if isinstance(args, list) else []
        reply = {"success": True, "ret_msg": "", "req_id": req_id, "op": "unsubscribe"}
        return OpResult([reply], remove=topics)
    return OpResult([{"success": False, "ret_msg": "error:invalid op"}])


def kline_envelope(
    tapes: Mapping[str, Tape], interval: str, query: Mapping[str, list[str]], now: int
) -> dict[str, Any]:
    """``GET /v5/market/kline`` at virtual time ``now`` (always HTTP 200, Bybit-style)."""

    def one(name: str) -> str | None:
        return query[name][0] if name in query else None

    def error(msg: str) -> dict[str, Any]:
        return {"retCode": 10001, "retMsg": msg, "result": {}, "retExtInfo": {}, "time": now}

    symbol = one("symbol")
    if one("category") not in (None, "linear"):
        return error("Illegal category")
    if symbol is None or symbol not in tapes:
        return error("Not supported symbols")
    if one("interval") != interval:
        return error("Invalid period!")
    try:
        limit = max(1, min(1000, int(one("limit") or 200)))
        start = int(s) if (s := one("start")) is not None else None
        end = int(e) if (e := one("end")) is not None else None
    except ValueError:
        return error("params error")
    rows = tapes[symbol].rest_rows(now, start, end, limit)
    result = {"symbol": symbol, "category": "linear", "list": rows}
    return {"retCode": 0, "retMsg": "OK", "result": result, "retExtInfo": {}, "time": now}
