"""Keep-warm: the shadow path runs the live code on scratch state; idle-time collection."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from service.bybit import KlineFrame, parse_frame
from service.feed import KlineFeed
from service.grid_clock import GridClock
from service.keep_warm import (
    SHADOW_SYMBOL,
    BurstClock,
    IdleCollector,
    ShadowPath,
    keep_warm,
    shadow_frame,
)
from service.klines import KlineEvent, KlineTable
from service.metrics import Metrics
from service.pipeline import BARS_TO_FIRST_SIGNAL, Pipeline
from service.predictor import ModelSlot, Predictor
from service.replay.tape import push_frame, ws_item
from service.rest import RestKlines
from service.signals import SignalStore

COMMITTED = Path(__file__).resolve().parents[2] / "models" / "student_pooled_5m.onnx"


def _live(predictor: Predictor | None) -> tuple[Pipeline, CollectorRegistry]:
    registry = CollectorRegistry()
    pipe = Pipeline(
        symbols=["BTCUSDT"],
        interval="5",
        slot=ModelSlot(predictor),
        store=SignalStore(["BTCUSDT"]),
        metrics=Metrics(registry),
        long_threshold=0.55,
        short_threshold=0.45,
    )
    return pipe, registry


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for m in registry.collect()
        for s in m.samples
        if not s.name.endswith("_created")
    }


def test_shadow_frames_are_valid_closed_candles_in_sequence() -> None:
    frames = [parse_frame(shadow_frame("5", n)) for n in range(3)]
    assert all(isinstance(f, KlineFrame) for f in frames)
    klines = [f.klines[0] for f in frames if isinstance(f, KlineFrame)]
    assert [k.start for k in klines] == [0, 300_000, 600_000]
    assert all(k.confirm and k.symbol == SHADOW_SYMBOL for k in klines)
    assert klines[0].close != klines[1].close  # a zig-zag, not a flat market


@pytest.mark.parametrize("model", ["fixture", "committed"])
async def test_shadow_path_scores_but_serves_and_counts_nothing(
    model: str,
    fixture_model: Any,
    btc_5m: KlineTable,
    make_events: Callable[..., list[KlineEvent]],
) -> None:
    """With the committed (streaming) student the ticks also dry-run the live stream."""
    if model == "committed" and not COMMITTED.exists():
        pytest.skip("no committed student yet (make train)")
    path = fixture_model.onnx_path if model == "fixture" else COMMITTED
    predictor = Predictor.load(path)
    live, registry = _live(predictor)
    plain, _ = _live(Predictor.load(path))
    shadow = ShadowPath(live)
    for ev in make_events(btc_5m, 0, 150):
        a, b = live.process(ev), plain.process(ev)
        assert (a is None) == (b is None)
        if a is not None and b is not None:  # interleaved shadow ticks change no probability
            assert a.probability_up == b.probability_up
        await shadow.tick()
    before = _samples(registry)
    latest = live.store.latest("BTCUSDT")
    for _ in range(20):
        await shadow.tick()
    assert _samples(registry) == before  # live metrics untouched
    assert live.store.latest("BTCUSDT") == latest
    assert SHADOW_SYMBOL not in live.states and live.processed == plain.processed
    # ...but the shadow really ran the whole path, the student included
    assert shadow.ticks == 170
    assert shadow.pipeline.processed == 170 - BARS_TO_FIRST_SIGNAL + 1
    sig = shadow.pipeline.store.latest(SHADOW_SYMBOL)
    assert sig is not None and 0.0 <= sig.probability_up <= 1.0 and sig.inference_us > 0
    # the feed's own code ran too: every synthetic frame was a closed candle, in order
    assert shadow.feed.snapshot()["closed_ws"] == 170 and "rejected_duplicate" not in (
        shadow.feed.snapshot()
    )


async def test_shadow_path_without_a_model_only_warms_features(fixture_model: Any) -> None:
    live, _ = _live(None)
    shadow = ShadowPath(live)
    for _ in range(100):
        await shadow.tick()
    assert shadow.pipeline.processed == 0 and shadow.pipeline.states[SHADOW_SYMBOL].warm
    live.slot.swap(Predictor.load(fixture_model.onnx_path))  # a model arrives: used at once
    await shadow.tick()
    assert shadow.pipeline.processed == 1


def test_idle_collector_runs_the_generational_policy_and_restores_the_gc() -> None:
    was = gc.isenabled()
    collector = IdleCollector()
    collector.start()
    try:
        assert collector.active and not gc.isenabled() and gc.get_freeze_count() > 0
        assert collector.tick() in (None, 0)  # just collected: nothing or a young pass due
        threshold = gc.get_threshold()[0]
        # live allocations (the count drops on frees) and no automatic collection
        junk = [[i] for i in range(threshold + 10)]
        assert gc.get_count()[0] >= threshold
        assert collector.tick() is not None
        assert gc.get_count()[0] < threshold
        del junk
        ran = sum(collector.collections)
        kept = []
        for _ in range(gc.get_threshold()[1] + 1):  # enough young passes: an older one is due
            kept.append([[i] for i in range(threshold + 10)])
            collector.tick()
        assert sum(collector.collections) > ran and collector.collections[1] >= 1
        del kept
    finally:
        collector.stop()
    assert gc.isenabled() == was and gc.get_freeze_count() == 0 and not collector.active
    collector.stop()  # idempotent


async def test_keep_warm_task_ticks_and_gives_the_gc_back_on_cancel(fixture_model: Any) -> None:
    live, _ = _live(Predictor.load(fixture_model.onnx_path))
    shadow, collector = ShadowPath(live), IdleCollector()
    task = asyncio.create_task(keep_warm(shadow, collector, 0.001))
    await _until(lambda: shadow.ticks >= BARS_TO_FIRST_SIGNAL + 5)  # primed, then on period
    assert collector.active and not gc.isenabled()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert shadow.pipeline.processed > 0
    assert gc.isenabled() and not collector.active and gc.get_freeze_count() == 0


@pytest.mark.parametrize("with_model", [True, False])
async def test_keep_warm_primes_the_shadow_to_a_full_window_at_once(
    with_model: bool, fixture_model: Any
) -> None:
    """A first live candle can come before ~80 ticks have passed: the task fills the
    shadow's window back to back before its first sleep, so the student, the signal and
    the store are warm from the start (the period here is far longer than the test)."""
    live, registry = _live(Predictor.load(fixture_model.onnx_path) if with_model else None)
    before = _samples(registry)
    shadow, collector = ShadowPath(live), IdleCollector()
    task = asyncio.create_task(keep_warm(shadow, collector, 60.0))
    try:
        if with_model:
            await _until(lambda: shadow.pipeline.processed > 0)
            assert shadow.ticks == BARS_TO_FIRST_SIGNAL  # primed, and no tick beyond it
            assert shadow.pipeline.store.latest(SHADOW_SYMBOL) is not None
        else:  # nothing to score yet: the ticks warm the features on their period
            await asyncio.sleep(0.05)
            assert shadow.ticks == 0
        await asyncio.sleep(0.05)
        assert shadow.ticks == (BARS_TO_FIRST_SIGNAL if with_model else 0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert _samples(registry) == before and live.processed == 0  # nothing live touched
    assert gc.isenabled() and not collector.active


MS = 1_000_000


def test_burst_clock_aims_widely_after_one_gap() -> None:
    """From the third burst on the spin is aimed: at the full lead until three gaps give a
    spread (the first bursts after a start were the slow ones)."""
    clock = BurstClock(min_lead_ms=2.0, max_lead_ms=20.0)
    clock.observe(1000 * MS)
    assert clock.window(1000 * MS) is None  # one burst: no period yet
    clock.observe(2000 * MS)
    assert clock.window(2000 * MS) == (3000 * MS - 20 * MS, 3000 * MS + 20 * MS)
    clock.observe(3002 * MS)  # period: the median of 1000 and 1002 ms
    assert clock.window(3002 * MS) == (4003 * MS - 20 * MS, 4003 * MS + 20 * MS)


def test_burst_clock_learns_the_period_and_aims_just_before_the_next_burst() -> None:
    clock = BurstClock(min_lead_ms=2.0, max_lead_ms=20.0)
    assert clock.window(0) is None
    t = 10_000 * MS
    for k in range(5):  # bursts one second apart, three candles each, 0.3 ms apart
        for j in range(3):
            clock.observe(t + k * 1000 * MS + j * MS // 3)
            clock.observe(t + k * 1000 * MS + j * MS // 3)  # repeats are ignored
    assert list(clock.gaps) == [1000 * MS] * 4  # one gap per burst, not per candle
    start, end = clock.window(t + 4000 * MS + 1 * MS) or (0, 0)
    assert (start, end) == (t + 5000 * MS - 2 * MS, t + 5000 * MS + 2 * MS)  # no jitter: 2 ms
    # a missed burst: after its window the next one is aimed at, one period later
    start, end = clock.window(t + 5000 * MS + 3 * MS) or (0, 0)
    assert start == t + 6000 * MS - 2 * MS


def test_burst_clock_widens_with_jitter_up_to_its_cap_and_ignores_a_missed_candle() -> None:
    clock = BurstClock(min_lead_ms=2.0, max_lead_ms=20.0)
    t, arrivals = 0, []
    for jitter in (0, 3, -3, 3, -3, 0):
        t += 1000 * MS
        arrivals.append(t + jitter * MS)
    arrivals.append(arrivals[-1] + 2000 * MS)  # one candle never came
    for a in arrivals:
        clock.observe(a)
    start, end = clock.window(arrivals[-1]) or (0, 0)
    mid = (start + end) // 2
    assert abs(mid - (arrivals[-1] + 1000 * MS)) <= 3 * MS  # the median period survives
    assert 2 * MS < (end - start) // 2 <= 20 * MS
    wild = BurstClock(max_lead_ms=20.0)
    for a in (0, 700, 2100, 2600, 4100, 4300):
        wild.observe(a * MS)
    w = wild.window(4300 * MS)
    assert w is not None and (w[1] - w[0]) // 2 == 20 * MS  # capped


async def test_keep_warm_spins_inside_the_burst_window_and_sleeps_outside(
    fixture_model: Any,
) -> None:
    live, _ = _live(Predictor.load(fixture_model.onnx_path))
    shadow, collector = ShadowPath(live), IdleCollector()
    now = [0]
    bursts = BurstClock(min_lead_ms=50.0, max_lead_ms=50.0)
    for k in range(4):
        bursts.observe(k * 1000 * MS)  # the next burst is due at 4000 ms (fake clock)
    task = asyncio.create_task(
        keep_warm(shadow, collector, 0.05, bursts=bursts, clock=lambda: now[0])
    )
    now[0] = 3000 * MS  # far from the window: sleeps 50 ms per tick
    # Counted from the end of the start's priming, however long a slow machine takes on it.
    await _until(lambda: shadow.pipeline.processed > 0)
    primed = shadow.ticks
    await asyncio.sleep(0.12)
    slow = shadow.ticks - primed
    now[0] = 4000 * MS  # inside: once its sleep ends (a tick), it spins, a tick per 0.3 ms pass
    await _until(lambda: shadow.ticks > primed + slow)
    base = shadow.ticks
    for _ in range(200):  # a tick yields once inside: two loop passes per spin tick
        now[0] += 150_000
        await asyncio.sleep(0)
    fast = shadow.ticks - base
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert 0 <= slow <= 5 and fast >= 90


async def _until(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait (real time) until ``cond()``; a loaded CI machine can be slow to wake a task."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_before_the_bursts_are_learned_the_grid_clock_aims_the_spin(
    fixture_model: Any,
) -> None:
    """The first bursts after a start: no closed candle yet, but interim frames place the
    exchange's next close (here 1 s of local time per 5-minute candle) and the spin is there."""
    live, _ = _live(Predictor.load(fixture_model.onnx_path))
    shadow, collector = ShadowPath(live), IdleCollector()
    now = [0]
    grid = GridClock(300_000, lead_ms=50.0, min_span_ms=100.0)
    frames = iter([(60_000, 200 * MS), (120_000, 400 * MS)])  # 300× replay, close at 1000 ms
    latest: list[tuple[int, int] | None] = [None]

    def newest_frame() -> tuple[int, int] | None:
        latest[0] = next(frames, latest[0])
        return latest[0]

    task = asyncio.create_task(
        keep_warm(
            shadow,
            collector,
            0.05,
            bursts=BurstClock(min_lead_ms=50.0, max_lead_ms=50.0),  # never fed a candle
            grid=grid,
            newest_frame=newest_frame,
            clock=lambda: now[0],
        )
    )
    now[0] = 500 * MS  # before the window: sleeps 50 ms per pass, one frame read per pass
    await _until(lambda: grid.rate is not None)
    assert grid.window(now[0]) == (950 * MS, 1050 * MS)
    now[0] = 1000 * MS  # inside: spins once its current sleep ends (and it ticks)
    before = shadow.ticks
    await _until(lambda: shadow.ticks > before)
    slow = shadow.ticks
    for _ in range(200):
        now[0] += 150_000
        await asyncio.sleep(0)
    fast = shadow.ticks - slow
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert fast >= 90


async def test_the_live_feed_warm_reads_and_changes_nothing(
    fixture_model: Any, btc_5m: KlineTable
) -> None:
    """``KlineFeed.warm`` (called by every shadow tick once the runtime hands the feed over)
    leaves the counters, the sequencers and the next candle's handling as they were."""
    live, registry = _live(Predictor.load(fixture_model.onnx_path))
    feed = KlineFeed(
        symbols=["BTCUSDT"],
        interval="5",
        ws_url="ws://unused.invalid/",
        rest=RestKlines("http://unused.invalid"),  # never asked: no candle is overdue
        out=asyncio.Queue(),
        metrics=Metrics(CollectorRegistry()),
        backfill_bars=0,
        emit_interim=False,
        direct=live.handle,
    )
    feed.warm()  # before any frame
    frames = [_btc_frame(btc_5m, i) for i in range(5)]
    for i, raw in enumerate(frames[:4]):
        await feed.handle_frame(raw, i)
    before = (feed.snapshot(), feed.last_frame, live.bars_seen("BTCUSDT"), _samples(registry))
    shadow = ShadowPath(live)
    shadow.live_feed = feed
    calls: list[int] = []
    warm = feed.warm
    feed.warm = lambda: (calls.append(1), warm())[-1]  # type: ignore[method-assign]
    for _ in range(3):
        await shadow.tick()
    assert len(calls) == 3
    after = (feed.snapshot(), feed.last_frame, live.bars_seen("BTCUSDT"), _samples(registry))
    assert after == before
    await feed.handle_frame(frames[4], 5)
    assert live.bars_seen("BTCUSDT") == 5 and feed.snapshot()["closed_ws"] == 5


def _btc_frame(t: KlineTable, i: int) -> str:
    """Closed-candle push ``i`` of the bundled BTCUSDT 5m klines, as the replay writes it."""
    k = t.row(i)
    return push_frame("kline.5.BTCUSDT", [ws_item(k, k.end)], k.end + 4)
