"""The hot path: parity with the batch features + onnxruntime, warm-up, live vs backfill."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from service.features import batch_features, make_windows
from service.klines import KlineEvent, KlineTable
from service.metrics import Metrics
from service.pipeline import BARS_TO_FIRST_SIGNAL, Pipeline
from service.predictor import ModelSlot, Predictor
from service.signals import Signal, SignalStore

COMMITTED = Path(__file__).resolve().parents[2] / "models" / "student_pooled_5m.onnx"


def _pipeline(
    predictor: Predictor | None,
    sink: list[Signal] | None = None,
    defer: Callable[[Callable[[], None]], object] | None = None,
) -> tuple[Pipeline, Metrics]:
    metrics = Metrics(CollectorRegistry())
    pipe = Pipeline(
        symbols=["BTCUSDT"],
        interval="5",
        slot=ModelSlot(predictor),
        store=SignalStore(["BTCUSDT"]),
        metrics=metrics,
        long_threshold=0.55,
        short_threshold=0.45,
        sink=sink.append if sink is not None else None,
        defer=defer,
    )
    return pipe, metrics


@pytest.mark.parametrize("model", ["fixture", "committed"])
def test_probability_equals_onnxruntime_on_batch_features(
    model: str,
    fixture_model: Any,
    btc_5m: KlineTable,
    make_events: Callable[..., list[KlineEvent]],
) -> None:
    """The linear fixture runs the full graph every time; the committed TCN student streams
    (full graph for the first window, prepared step after that)."""
    n = 400
    if model == "committed" and not COMMITTED.exists():
        pytest.skip("no committed student yet (make train)")
    predictor = Predictor.load(fixture_model.onnx_path if model == "fixture" else COMMITTED)
    assert (predictor.streaming is not None) == (model == "committed")
    pipe, _ = _pipeline(predictor)
    got: dict[int, float] = {}
    for i, ev in enumerate(make_events(btc_5m, 0, n)):
        signal = pipe.process(ev)
        if signal is not None:
            got[i] = signal.probability_up
    t = btc_5m.slice(0, n)
    feats = batch_features(t.open, t.high, t.low, t.close, t.volume)  # (N, F)
    ends = np.array(sorted(got))
    assert ends[0] == BARS_TO_FIRST_SIGNAL - 1 and len(ends) == n - BARS_TO_FIRST_SIGNAL + 1
    expected = predictor.predict_batch(make_windows(feats, ends))  # plain session.run path
    np.testing.assert_allclose([got[e] for e in ends], expected, rtol=0, atol=1e-6)
    assert np.ptp(expected) > 0.1  # the parity is not between constants


def test_backfill_signals_are_not_live_and_not_timed(
    fixture_model: Any, btc_5m: KlineTable, make_events: Callable[..., list[KlineEvent]]
) -> None:
    sink: list[Signal] = []
    pipe, metrics = _pipeline(Predictor.load(fixture_model.onnx_path), sink)
    for ev in make_events(btc_5m, 0, 100, source="rest"):
        pipe.process(ev)
    assert len(sink) == 100 - BARS_TO_FIRST_SIGNAL + 1
    assert not any(s.live for s in sink)
    latency = metrics.registry.get_sample_value("apprentice_signal_latency_seconds_count")
    assert latency == 0
    for ev in make_events(btc_5m, 100, 105):
        pipe.process(ev)
    assert all(s.live for s in sink[-5:])
    assert metrics.registry.get_sample_value("apprentice_signal_latency_seconds_count") == 5
    assert metrics.registry.get_sample_value("apprentice_inference_seconds_count") == len(sink)
    assert metrics.registry.get_sample_value("apprentice_feature_update_seconds_count") == 105
    latest = pipe.store.latest("BTCUSDT")
    assert latest is sink[-1] and latest.candle_start == int(btc_5m.start[104])
    ups = metrics.registry.get_sample_value(
        "apprentice_signals_total", {"symbol": "BTCUSDT", "direction": "up"}
    )
    downs = metrics.registry.get_sample_value(
        "apprentice_signals_total", {"symbol": "BTCUSDT", "direction": "down"}
    )
    assert ups is not None and downs is not None and ups + downs == len(sink)
    s = sink[-1]
    assert s.features_us > 0 and s.inference_us > 0
    assert s.confidence == pytest.approx(abs(2 * s.probability_up - 1))


def test_duplicates_unknown_symbols_and_open_candles_are_ignored(
    fixture_model: Any, btc_5m: KlineTable, make_events: Callable[..., list[KlineEvent]]
) -> None:
    pipe, metrics = _pipeline(Predictor.load(fixture_model.onnx_path))
    events = make_events(btc_5m, 0, 90)
    for ev in events:
        pipe.process(ev)
    before = pipe.states["BTCUSDT"].bars
    assert pipe.process(events[50]) is None  # an old candle again
    assert (
        metrics.registry.get_sample_value(
            "apprentice_klines_rejected_total", {"reason": "out_of_order"}
        )
        == 1
    )
    other = replace(events[0], kline=replace(events[0].kline, symbol="DOGEUSDT"))
    assert pipe.process(other) is None
    nxt = make_events(btc_5m, 90, 91)[0]
    open_candle = replace(nxt, kline=replace(nxt.kline, confirm=False))
    assert pipe.process(open_candle) is None
    assert pipe.states["BTCUSDT"].bars == before
    assert pipe.process(nxt) is not None


def test_no_signal_without_a_model(
    btc_5m: KlineTable, make_events: Callable[..., list[KlineEvent]]
) -> None:
    pipe, _ = _pipeline(None)
    assert all(pipe.process(ev) is None for ev in make_events(btc_5m, 0, 100))
    assert pipe.states["BTCUSDT"].warm  # features kept warming


@pytest.mark.skipif(not COMMITTED.exists(), reason="no committed student yet (make train)")
def test_streamed_student_uses_the_full_graph_only_for_a_first_window(
    btc_5m: KlineTable, make_events: Callable[..., list[KlineEvent]]
) -> None:
    """Full graph for the first window and the first window after a reload; the prepared
    step for every other candle, with the same probabilities as the batch graph."""
    n, reload_at = 300, 200
    full_calls: list[int] = []

    def counted(predictor: Predictor) -> Predictor:
        whole = predictor.predict

        def predict(window: np.ndarray) -> float:
            full_calls.append(len(got))
            return whole(window)

        predictor.predict = predict  # type: ignore[method-assign]
        return predictor

    pipe, _ = _pipeline(counted(Predictor.load(COMMITTED)))
    got: dict[int, float] = {}
    for i, ev in enumerate(make_events(btc_5m, 0, n)):
        if i == reload_at:
            pipe.slot.swap(counted(Predictor.load(COMMITTED)))
        signal = pipe.process(ev)
        if signal is not None:
            got[i] = signal.probability_up
    first = BARS_TO_FIRST_SIGNAL - 1
    assert full_calls == [0, reload_at - first]  # by signals made before each full call
    t = btc_5m.slice(0, n)
    feats = batch_features(t.open, t.high, t.low, t.close, t.volume)
    ends = np.array(sorted(got))
    expected = pipe.slot.current.predict_batch(make_windows(feats, ends))  # type: ignore[union-attr]
    np.testing.assert_allclose([got[e] for e in ends], expected, rtol=0, atol=1e-6)


@pytest.mark.skipif(not COMMITTED.exists(), reason="no committed student yet (make train)")
def test_deferred_preparation_may_run_late_and_stays_exact(
    btc_5m: KlineTable, make_events: Callable[..., list[KlineEvent]]
) -> None:
    """The runtime defers each candle's preparation to the loop's next pass. Until it runs
    the next candle takes the full graph; a preparation that runs after a later candle (or
    twice) reads the state as it is then, so every probability still matches."""
    pending: list[Callable[[], None]] = []
    predictor = Predictor.load(COMMITTED)
    pipe, _ = _pipeline(predictor, defer=pending.append)
    n = 200
    got: dict[int, float] = {}
    stepped: list[int] = []
    for i, ev in enumerate(make_events(btc_5m, 0, n)):
        st = pipe.states["BTCUSDT"]
        if st.stream is not None and st.stream.ready_for == st.window.pushes + 1:
            stepped.append(i)  # prepared for this candle: it takes the step
        signal = pipe.process(ev)
        if signal is not None:
            got[i] = signal.probability_up
        if i % 3 != 0:  # every third candle's preparation waits one more candle
            for callback in pending:
                callback()
            pending.clear()
    assert pipe.errors == 0 and len(stepped) > 60  # of 121 signals
    assert all(i % 3 != 1 for i in stepped)  # after a waiting candle: the full graph
    t = btc_5m.slice(0, n)
    feats = batch_features(t.open, t.high, t.low, t.close, t.volume)
    ends = np.array(sorted(got))
    expected = predictor.predict_batch(make_windows(feats, ends))
    np.testing.assert_allclose([got[e] for e in ends], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("model", ["fixture", "committed"])
def test_warming_the_live_data_between_candles_changes_no_signal(
    model: str,
    fixture_model: Any,
    btc_5m: KlineTable,
    make_events: Callable[..., list[KlineEvent]],
) -> None:
    """Keep-warm calls ``warm_live`` between candles (any number of times, warming up or
    not): every probability stays exactly what a pipeline never warmed gives."""
    if model == "committed" and not COMMITTED.exists():
        pytest.skip("no committed student yet (make train)")
    path = fixture_model.onnx_path if model == "fixture" else COMMITTED
    plain, _ = _pipeline(Predictor.load(path))
    warmed, _ = _pipeline(Predictor.load(path))
    warmed.warm_live()  # before any candle
    a: list[float] = []
    b: list[float] = []
    for i, ev in enumerate(make_events(btc_5m, 0, 160)):
        sa, sb = plain.process(ev), warmed.process(ev)
        for _ in range(i % 3):
            warmed.warm_live()
        if sa is not None and sb is not None:
            a.append(sa.probability_up)
            b.append(sb.probability_up)
        assert (sa is None) == (sb is None)
    assert len(a) == 160 - BARS_TO_FIRST_SIGNAL + 1
    assert a == b  # exactly: the prepared sums are recomputed from the same rings
