"""The scale section's parts: the many-symbol exchange on a real loopback socket, the
driver's helpers, and one small measured point (no timing asserted: figures belong to
BENCHMARKS.md)."""

from __future__ import annotations

import asyncio
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.client import connect

from bench import outside, scale
from bench.many_symbols import ManySymbols, config, symbol_names, synthetic_tables
from bench.report import Section


def test_synthetic_symbols_share_one_grid_and_differ() -> None:
    tables = synthetic_tables(12, 500)
    names = symbol_names(12)
    assert list(tables) == names
    grid = tables[names[0]].start
    assert all(np.array_equal(t.start, grid) for t in tables.values())
    assert np.all(np.diff(grid) == 300_000)
    closes = {tuple(t.close[:5]) for t in tables.values()}
    assert len(closes) == 12  # every symbol its own numbers


def test_every_symbol_confirms_in_one_logged_burst(tmp_path: Path) -> None:
    """A real websocket client subscribed to 30 symbols gets one confirm per symbol per
    close, and the exchange logs each close's send times."""
    n = 30
    log = tmp_path / "bursts.jsonl"

    async def go() -> dict[int, set[str]]:
        with open(log, "a") as fh:
            async with ManySymbols(config(n, period_s=0.3, bars=600), fh) as ex:
                confirms: dict[int, set[str]] = {}
                async with connect(ex.ws_url) as ws:
                    topics = [f"kline.5.{s}" for s in symbol_names(n)]
                    await ws.send(json.dumps({"op": "subscribe", "args": topics, "req_id": "1"}))
                    while sum(len(v) == n for v in confirms.values()) < 2:
                        msg = json.loads(await asyncio.wait_for(ws.recv(), 5.0))
                        for k in msg.get("data", []):
                            if k["confirm"]:
                                confirms.setdefault(int(k["start"]), set()).add(msg["topic"])
                return confirms

    confirms = asyncio.run(go())
    lines = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert lines and all(ln["n"] == n and ln["last"] >= ln["first"] for ln in lines)
    full = [c for c, topics in confirms.items() if len(topics) == n]
    assert full and set(full) <= {int(ln["candle"]) for ln in lines}


def test_burst_log_tails_and_helpers(tmp_path: Path) -> None:
    log = tmp_path / "b.jsonl"
    log.write_text(json.dumps({"candle": 1, "first": 0.0, "last": 1.0, "n": 1}) + "\n")
    reader = outside.BurstLog(log)
    reader.skip()
    with open(log, "a") as fh:
        fh.write(json.dumps({"candle": 2, "first": 0.0, "last": 2.0, "n": 1}) + "\n")
    assert reader.next(1.0)["candle"] == 2
    with pytest.raises(TimeoutError):
        reader.next(0.05)
    assert outside.cpu_s(os.getpid()) > 0 and outside.rss_mib(os.getpid()) > 10
    p = scale.ScalePoint(10, latency_ms=[5.0, 1.0, 3.0, 2.0], cpu_burst_ms=2.0)
    assert p.lat(50) == 2.0 and p.lat(100) == 5.0 and p.cpu_per_symbol_us == 200.0
    folded = tmp_path / "f.txt"
    folded.write_text(
        "main (a.py:1);flush (service/pipeline/scoring.py:9) 3\n"
        "main (a.py:1);recv (websockets/x.py:2) 1\n"
    )
    top = dict(outside.top_frames(folded))
    assert top == {"service/pipeline": 0.75, "other": 0.25}


def test_a_small_point_end_to_end(tmp_path: Path) -> None:
    """Exchange and service as real processes: every burst's signals seen over HTTP."""
    point = scale.measure(3, tmp_path, period_s=0.6, lat_bursts=2, cpu_bursts=2)
    assert len(point.latency_ms) == 2 and point.incomplete == 0
    assert all(0 < x < 5000 for x in point.latency_ms)
    assert point.cpu_burst_ms >= 0 and point.rss_mib > 50 and point.scrape_bytes > 1000
    assert point.rows_per_batch >= 1 and not math.isnan(point.burst_complete_p99_ms)
    assert point.errors == 0 and point.reconnects == 0 and point.dropped == 0
    sec = Section("x")
    scale._write(sec, [point], [])
    assert any(line.startswith("| 3 |") for line in sec.lines)
