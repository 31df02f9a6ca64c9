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
from service.market.klines import KlineEvent, KlineTable
from service.metrics import Metrics
from service.model.predictor import ModelSlot, Predictor
from service.pipeline.scoring import BARS_TO_FIRST_SIGNAL, Pipeline
from service.pipeline.signals import Signal, SignalStore

COMMITTED = Path(__file__).resolve().parents[3] / "models" / "student_pooled_5m.onnx"


def _pipeline(
    predictor: Predictor | None,
    sink: list[Signal] | None = None,
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
    )
    return pipe, metrics


@pytest.mark.parametrize("model", ["fixture", "committed"])
def test_probability_equals_onnxruntime_on_batch_features(
    model: str,
    fixture_model: Any,
    btc_5m: KlineTable,
    make_events: Callable[..., list[KlineEvent]],
) -> None:
    """Both students run the full graph on every close, exactly as ``session.run`` would."""
    n = 400
    if model == "committed" and not COMMITTED.exists():
        pytest.skip("no committed student yet (make train)")
    predictor = Predictor.load(fixture_model.onnx_path if model == "fixture" else COMMITTED)
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
