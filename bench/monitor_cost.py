"""``python -m bench.monitor_cost``: what the signal journal and live scoring cost the candle.

In-process micro-measure (not a ``make bench`` section): one symbol, the service tests'
two-head fixture student on real onnxruntime, real SQLite in a temporary state dir, 4000
bundled BTCUSDT candles as live events. ``Pipeline.process`` is timed per candle with the
monitor's hand-off (``ModelMonitor.offer``) switched on for every other candle, so both
populations see the same machine at the same time; the event loop's next pass (the drain:
scoring, drift window, journal rows) and the journal's committed batches are timed too.
"""

from __future__ import annotations

import asyncio
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from service.market.kline_io import load_bundled
from service.metrics import Metrics
from service.model.predictor import ModelSlot, Predictor
from service.monitor.model_monitor import ModelMonitor
from service.pipeline.scoring import Pipeline
from service.pipeline.signals import SignalStore

ROOT = Path(__file__).resolve().parent.parent


def _fixtures() -> object:
    spec = importlib.util.spec_from_file_location("_fx", ROOT / "tests/service/conftest.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _q(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def measure(n: int = 4000) -> str:
    fx = _fixtures()
    tmp = Path(tempfile.mkdtemp())
    fm = fx.write_fixture_model(tmp / "model")  # type: ignore[attr-defined]
    table = load_bundled("BTCUSDT", "5")
    metrics = Metrics(CollectorRegistry())
    mon = ModelMonitor(
        symbols=["BTCUSDT"],
        interval="5",
        state_dir=tmp / "state",
        metrics=metrics,
    )
    await mon.start()
    writer = asyncio.create_task(mon.run())
    pipe = Pipeline(
        symbols=["BTCUSDT"],
        interval="5",
        slot=ModelSlot(Predictor.load(fm.onnx_path)),
        store=SignalStore(["BTCUSDT"]),
        metrics=metrics,
        long_threshold=0.55,
        short_threshold=0.45,
    )
    for ev in fx.events_from(table, 0, 400, source="rest"):  # type: ignore[attr-defined]
        pipe.process(ev)
    on_us: list[float] = []
    off_us: list[float] = []
    drain_us: list[float] = []
    for i, ev in enumerate(fx.events_from(table, 400, 400 + n, source="ws")):  # type: ignore[attr-defined]
        observed = i % 2 == 0
        pipe.observer = mon.offer_burst if observed else None
        t0 = time.perf_counter_ns()
        pipe.process(ev)
        t1 = time.perf_counter_ns()
        (on_us if observed else off_us).append((t1 - t0) / 1e3)
        await asyncio.sleep(0)  # the drain runs on this pass
        if observed:
            drain_us.append((time.perf_counter_ns() - t1) / 1e3)
        await asyncio.sleep(0.0005)  # let the writer commit, as between candles
    await mon.flush()
    writer.cancel()
    await mon.aclose()
    samples = {s.name: s.value for s in metrics.journal_write_seconds.collect()[0].samples}
    batches = samples["apprentice_journal_write_seconds_count"]
    mean_ms = 1e3 * samples["apprentice_journal_write_seconds_sum"] / max(batches, 1)
    return (
        f"Pipeline.process per candle, n={len(on_us)} each: with the monitor hand-off "
        f"p50 {statistics.median(on_us):.1f} µs, p99 {_q(on_us, 0.99):.1f} µs; without "
        f"p50 {statistics.median(off_us):.1f} µs, p99 {_q(off_us, 0.99):.1f} µs. "
        f"Next loop pass (drain) p50 {statistics.median(drain_us):.1f} µs. "
        f"Journal: {batches:.0f} committed batches, mean {mean_ms:.2f} ms each, on its thread."
    )


if __name__ == "__main__":
    print(asyncio.run(measure()))
