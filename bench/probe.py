"""The external probe: what a user sees, measured from outside the service.

A second websocket client subscribes to the replay exchange's kline topic beside the
service. On each ``confirm=true`` push it stamps the frame's arrival and polls the
service's ``GET /signal/{symbol}`` on one keep-alive connection until that candle's signal
is served: frame → served-signal latency (resolution one GET round trip plus the poll
pause). Every poll's round trip is kept too, so a run says how much of the figure is the
HTTP queue in front of the read rather than the candle path.

Also here: a process's CPU time from ``/proc`` (the service's idle CPU) and a journal
filled with many fills before the service starts (for the heavy-read load).
"""

from __future__ import annotations

import http.client
import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.timing import Summary

POLL_PAUSE_S = 0.0002  # between polls: the probe must not be the load it measures


@dataclass
class ProbeResult:
    """Frame → served latencies (ns) of every confirmed candle, and every poll's RTT (ns)."""

    served_ns: list[int] = field(default_factory=list)
    rtt_ns: list[int] = field(default_factory=list)
    missed: int = 0

    def served(self, name: str = "frame → served") -> Summary | None:
        """Percentiles of the served latencies (µs), None without a candle."""
        if not self.served_ns:
            return None
        return Summary.of(name, np.asarray(self.served_ns, dtype=np.int64))

    def rtt(self, name: str = "GET round trip") -> Summary | None:
        """Percentiles of the poll round trips (µs), None without a poll."""
        if not self.rtt_ns:
            return None
        return Summary.of(name, np.asarray(self.rtt_ns, dtype=np.int64))


def confirmed_start(raw: str | bytes, topic: str) -> int | None:
    """The newest confirmed candle start in a kline push of ``topic``, else None."""
    msg = json.loads(raw)
    if not isinstance(msg, dict) or msg.get("topic") != topic:
        return None
    closed = [int(k["start"]) for k in msg.get("data", ()) if k.get("confirm") is True]
    return max(closed) if closed else None


def served_latencies(
    ws_url: str,
    http_port: int,
    symbol: str,
    interval: str,
    seconds: float,
    *,
    give_up_s: float = 2.0,
) -> ProbeResult:
    """Run the probe for ``seconds``; see the module docstring."""
    from websockets.sync.client import connect

    out = ProbeResult()
    conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
    path = f"/signal/{symbol}"
    topic = f"kline.{interval}.{symbol}"
    clock = time.perf_counter_ns
    try:
        with connect(ws_url, max_size=2**20, compression=None) as ws:
            ws.send(json.dumps({"op": "subscribe", "args": [topic]}))
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                raw = ws.recv(timeout=10)
                t_frame = clock()
                want = confirmed_start(raw, topic)
                if want is None:
                    continue
                give_up = t_frame + int(give_up_s * 1e9)
                while True:
                    t0 = clock()
                    conn.request("GET", path)
                    resp = conn.getresponse()
                    body = resp.read()
                    now = clock()
                    out.rtt_ns.append(now - t0)
                    if resp.status == 200 and json.loads(body)["candle_start"] >= want:
                        out.served_ns.append(now - t_frame)
                        break
                    if now > give_up:
                        out.missed += 1
                        break
                    time.sleep(POLL_PAUSE_S)
    finally:
        conn.close()
    return out


def parse_proc_stat(text: str) -> tuple[int, int]:
    """(utime, stime) clock ticks from a ``/proc/<pid>/stat`` line (the name may hold
    spaces and parentheses: fields are counted after its last ``)``)."""
    rest = text[text.rindex(")") + 2 :].split()
    return int(rest[11]), int(rest[12])  # fields 14 and 15 of proc(5)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of every thread of ``pid`` so far (Linux)."""
    utime, stime = parse_proc_stat(Path(f"/proc/{pid}/stat").read_text())
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def idle_cpu_percent(pid: int, seconds: float) -> float:
    """% of one core that ``pid`` used over a fixed window of ``seconds``."""
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    c1, t1 = cpu_seconds(pid), time.monotonic()
    return 100.0 * (c1 - c0) / (t1 - t0)


def fill_journal(state_dir: Path, n: int, symbols: tuple[str, ...] = ("BTCUSDT",)) -> int:
    """Write ``n`` flat round-trip fills into a fresh account of the service's journal at
    ``state_dir`` (before the service starts; their candles lie long before the replay's).
    Returns the account's epoch."""
    from service.paper.journal import Journal

    j = Journal(state_dir)
    j.open()
    try:
        epoch = j.current_account(10_000.0, 1_000.0, 5.5, 1.0).epoch
        cols = (
            "epoch, symbol, candle_start, side, qty, price, close, fee, realized_pnl, "
            "position_after, avg_entry_after, probability_up, action, ts_ms"
        )
        rows = []
        for i in range(n):
            buy = i % 2 == 0  # open long, then close it: the account ends flat
            price = 20_000.0 + (i % 1000)
            rows.append(
                (
                    epoch,
                    symbols[(i // 2) % len(symbols)],
                    i * 300_000,
                    "buy" if buy else "sell",
                    0.05,
                    price,
                    price,
                    0.055,
                    0.0 if buy else 0.5,
                    0.05 if buy else 0.0,
                    price if buy else 0.0,
                    0.6 if buy else 0.5,
                    "long" if buy else "flat",
                    1_600_000_000_000 + i,
                )
            )
        db: sqlite3.Connection = j.db
        db.execute("BEGIN")
        db.executemany(f"INSERT INTO fills ({cols}) VALUES ({', '.join('?' * 14)})", rows)
        db.execute("COMMIT")
        return epoch
    finally:
        j.close()
