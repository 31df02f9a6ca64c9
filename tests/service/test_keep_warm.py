"""Keep-warm: the shadow path runs the live code on scratch state; idle-time collection."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from service.bybit import KlineFrame, parse_frame
from service.keep_warm import SHADOW_SYMBOL, IdleCollector, ShadowPath, keep_warm, shadow_frame
from service.klines import KlineEvent, KlineTable
from service.metrics import Metrics
from service.pipeline import BARS_TO_FIRST_SIGNAL, Pipeline
from service.predictor import ModelSlot, Predictor
from service.signals import SignalStore


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


def test_shadow_path_scores_but_serves_and_counts_nothing(
    fixture_model: Any, btc_5m: KlineTable, make_events: Callable[..., list[KlineEvent]]
) -> None:
    predictor = Predictor.load(fixture_model.onnx_path)
    live, registry = _live(predictor)
    plain, _ = _live(Predictor.load(fixture_model.onnx_path))
    shadow = ShadowPath(live)
    for ev in make_events(btc_5m, 0, 150):
        a, b = live.process(ev), plain.process(ev)
        assert (a is None) == (b is None)
        if a is not None and b is not None:  # interleaved shadow ticks change no probability
            assert a.probability_up == b.probability_up
        shadow.tick()
    before = _samples(registry)
    latest = live.store.latest("BTCUSDT")
    for _ in range(20):
        shadow.tick()
    assert _samples(registry) == before  # live metrics untouched
    assert live.store.latest("BTCUSDT") == latest
    assert SHADOW_SYMBOL not in live.states and live.processed == plain.processed
    # ...but the shadow really ran the whole path, the student included
    assert shadow.ticks == 170
    assert shadow.pipeline.processed == 170 - BARS_TO_FIRST_SIGNAL + 1
    sig = shadow.pipeline.store.latest(SHADOW_SYMBOL)
    assert sig is not None and 0.0 <= sig.probability_up <= 1.0 and sig.inference_us > 0


def test_shadow_path_without_a_model_only_warms_features(fixture_model: Any) -> None:
    live, _ = _live(None)
    shadow = ShadowPath(live)
    for _ in range(100):
        shadow.tick()
    assert shadow.pipeline.processed == 0 and shadow.pipeline.states[SHADOW_SYMBOL].warm
    live.slot.swap(Predictor.load(fixture_model.onnx_path))  # a model arrives: used at once
    shadow.tick()
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
    for _ in range(500):
        await asyncio.sleep(0.002)
        if shadow.ticks >= BARS_TO_FIRST_SIGNAL + 5:
            break
    assert collector.active and not gc.isenabled()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert shadow.pipeline.processed > 0
    assert gc.isenabled() and not collector.active and gc.get_freeze_count() == 0
