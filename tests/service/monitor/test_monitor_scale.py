"""The monitor at market scale: O(1) per signal, one journal commit per burst, bounded series."""

from __future__ import annotations

import asyncio
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from service.market.klines import Kline, KlineEvent
from service.metrics import OTHER_SYMBOL, Metrics
from service.monitor.drift import LiveDrift, bins_of, psi
from service.monitor.live_score import LiveScorer
from service.monitor.model_monitor import ModelMonitor

STEP = 300_000


def test_running_scores_equal_the_full_report() -> None:
    """Through window wrap-around and a model change, the O(1) running figures equal the
    recomputed ones (to rounding)."""
    rng = random.Random(3)
    scorer = LiveScorer(["A"], STEP, window=50)
    price = 100.0
    checked = 0
    for t in range(400):
        o = price
        price *= math.exp(rng.gauss(0, 0.01))
        c = price
        scorer.on_kline("A", t * STEP, o, max(o, c) * 1.001, min(o, c) * 0.999, c)
        scorer.on_signal("A", t * STEP, rng.random(), rng.random(), True, "m2" if t > 250 else "m1")
        for head in ("direction", "volatility"):
            run = scorer.running("A", head)
            rep = scorer.report("A", head)
            assert (run is None) == (rep is None)
            if run is None or rep is None:
                continue
            n, loss, acc = run
            assert n == rep[0]["n"]
            assert loss == pytest.approx(rep[0]["log_loss"], rel=0, abs=1e-12)
            assert acc == pytest.approx(rep[0]["accuracy"], rel=0, abs=1e-12)
            checked += 1
    assert checked > 500


def test_live_drift_counts_equal_psi_over_the_window() -> None:
    rng = np.random.default_rng(1)
    levels = [i / 10 for i in range(11)]
    ref = [bins_of(levels, list(np.quantile(rng.normal(size=2000), levels))) for _ in range(3)]
    ref[1] = None  # a feature the reference lacks
    live = LiveDrift(maxlen=100)
    vecs = [rng.normal(0.3, 1.2, size=3) for _ in range(250)]
    vecs[7][0] = math.nan
    for v in vecs[:40]:
        live.append(v)
    live.bind("card-1", ref)  # counts built from what is there, then kept in step
    for v in vecs[40:]:
        live.append(v)
    window = np.array(vecs[-100:])
    assert len(live) == 100
    for j in (0, 2):
        r = ref[j]
        assert r is not None
        assert live.psi(j) == psi(window[:, j], *r)  # same bins, same arithmetic
    assert math.isnan(live.psi(1))


def _kline(sym: str, t: int) -> KlineEvent:
    k = Kline(sym, "5", t * STEP, 100.0, 101.0, 99.0, 100.5, 10.0, None, True)
    return KlineEvent(k, exchange_ts=(t + 1) * STEP, received_ns=0, source="ws")


def test_a_burst_is_one_journal_commit(tmp_path: Path) -> None:
    syms = [f"S{i}USDT" for i in range(200)]
    metrics = Metrics(CollectorRegistry())
    mon = ModelMonitor(symbols=syms, interval="5", state_dir=tmp_path, metrics=metrics)

    async def go() -> int:
        await mon.start()
        writer = asyncio.create_task(mon.run())
        for t in range(3):  # three bursts, handed over from another thread as the pipeline does
            burst = [(_kline(s, t), None, None) for s in syms]
            await asyncio.to_thread(mon.offer_burst, burst)
            while mon.rows_written < (t + 1) * len(syms):
                await asyncio.sleep(0.005)
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        await mon.aclose()
        return mon.rows_written

    assert asyncio.run(go()) == 600
    writes = metrics.registry.get_sample_value("apprentice_journal_write_seconds_count")
    assert writes == 3


def test_per_symbol_series_stop_at_the_ceiling(tmp_path: Path) -> None:
    """At 500 symbols the monitor's live gauges exist for the first 64 only and its counters
    past them add to one aggregate; the exposition stays bounded."""
    syms = [f"S{i:03d}USDT" for i in range(500)]
    metrics = Metrics(CollectorRegistry())
    mon = ModelMonitor(symbols=syms, interval="5", state_dir=tmp_path, metrics=metrics)
    for t in range(60):
        for s in syms:
            mon.scorer.on_kline(s, t * STEP, 100.0, 101.0 + t % 3, 99.0, 100.5)
            mon.scorer.on_signal(s, t * STEP, 0.6, 0.4, True, "m")
    mon.update_gauges(None)
    text = generate_latest(metrics.registry).decode()
    loss_series = [ln for ln in text.splitlines() if ln.startswith("apprentice_live_log_loss{")]
    assert len(loss_series) == 2 * metrics.symbol_series_max
    assert 'symbol="S063USDT"' in text and 'symbol="S064USDT"' not in text
    assert f'apprentice_live_scored_total{{head="direction",symbol="{OTHER_SYMBOL}"}}' in text


def test_update_gauges_cost_does_not_grow_with_symbols(tmp_path: Path) -> None:
    """The scrape-time work reads running sums of the symbols within the ceiling: the same
    number of score computations at 100 and 1000 symbols (counted, not timed)."""
    calls: dict[int, int] = {}
    for n in (100, 1000):
        syms = [f"S{i:04d}USDT" for i in range(n)]
        mon = ModelMonitor(
            symbols=syms, interval="5", state_dir=tmp_path / str(n), metrics=Metrics()
        )
        for t in range(52):
            for s in syms:
                mon.scorer.on_kline(s, t * STEP, 100.0, 101.0 + t % 3, 99.0, 100.5)
                mon.scorer.on_signal(s, t * STEP, 0.6, 0.4, True, "m")
        seen = 0
        real = mon.scorer.running

        def counting(sym: str, head: str, real: Any = real) -> Any:
            nonlocal seen
            seen += 1
            return real(sym, head)

        mon.scorer.running = counting  # type: ignore[method-assign]
        mon.update_gauges(None)
        calls[n] = seen
    assert calls[100] == calls[1000] == 2 * 64


def test_no_created_series_and_the_ceiling_is_first_come(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry(), symbol_series_max=2)
    assert [metrics.symbol_label(s) for s in ("A", "B", "C", "A")] == ["A", "B", OTHER_SYMBOL, "A"]
    metrics.signals.labels(symbol="A", direction="up").inc()
    metrics.signal_latency_seconds.observe(0.001)
    text = generate_latest(metrics.registry).decode()
    assert "apprentice_signals_total{" in text and "_created" not in text
