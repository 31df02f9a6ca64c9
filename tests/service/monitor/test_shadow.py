"""Shadow scoring driven through the real pipeline: the challenger scores the champion's
windows, its scores use the live-score code on the same candles, it is journaled with its
role, never stored as a signal, and a rebuild from the journal gives the same scores."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest

from service.features import N_FEATURES, WINDOW
from service.market.klines import KlineTable
from service.metrics import Metrics
from service.model.predictor import ModelSlot, Predictor
from service.monitor.model_monitor import ModelMonitor
from service.monitor.role_journal import read_rows
from service.monitor.shadow import ShadowScorer
from service.pipeline.scoring import Pipeline
from service.pipeline.signals import SignalStore


def _shadow(mon: ModelMonitor) -> ShadowScorer:
    return ShadowScorer(
        symbols=mon.symbols,
        interval=mon.interval,
        metrics=mon.metrics,
        journal=mon.journal,
        call=mon.call,
        score_window=mon.scorer.window,
    )


async def test_shadow_scores_journals_and_rebuilds(
    tmp_path: Path,
    btc_5m: KlineTable,
    make_events: Callable[..., Any],
    fixture_model: Any,
    model_writer: Callable[..., Any],
) -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    mon = ModelMonitor(
        symbols=["BTCUSDT"], interval="5", state_dir=tmp_path, metrics=metrics, score_window=50
    )
    await mon.start()
    shadow = _shadow(mon)
    await shadow.start(None)
    champion = Predictor.load(fixture_model.onnx_path)
    const = model_writer(tmp_path / "c", name="constant", version="0.5", scale=0.0)
    store = SignalStore(["BTCUSDT"])
    pipe = Pipeline(
        symbols=["BTCUSDT"],
        interval="5",
        slot=ModelSlot(champion),
        store=store,
        metrics=metrics,
        long_threshold=0.55,
        short_threshold=0.45,
        observer=shadow.tee(mon.offer_burst),
    )
    batches: list[tuple[tuple[int, ...], tuple[str, ...]]] = []

    def hook(windows: Any, symbols: Any, starts: Any) -> None:
        batches.append((windows.shape, tuple(symbols)))
        shadow.score(windows, symbols, starts)

    pipe.shadow = hook
    for ev in make_events(btc_5m, 0, 100):
        pipe.process(ev)
    await asyncio.sleep(0.01)
    assert shadow.scored == 0  # no challenger: nothing paired
    shadow.set_challenger(Predictor.load(const.onnx_path))
    for ev in make_events(btc_5m, 100, 200):
        pipe.process(ev)
        assert store.latest("BTCUSDT").model_version == "0.0.1"  # never served
    await asyncio.sleep(0.01)
    await mon.flush()
    await shadow.aclose()
    assert batches[-1] == ((1, N_FEATURES, WINDOW), ("BTCUSDT",))

    rep = shadow.report()
    assert shadow.scored == 99  # the 100th waits for its next candle
    for head in ("direction", "volatility"):
        h = rep["symbols"]["BTCUSDT"][head]
        assert h["n"] == 50 == h["champion"]["n"] == h["challenger"]["n"]
        assert h["challenger"]["log_loss"] == round(math.log(2), 6)
        assert h["paired"]["diff"] == round(math.log(2) - h["champion"]["log_loss"], 6)
    # the champion column is the monitor's own score of the same candles
    assert rep["symbols"]["BTCUSDT"]["direction"]["champion"]["log_loss"] == round(
        mon.scorer.report("BTCUSDT", "direction")[0]["log_loss"],
        6,  # type: ignore[index]
    )
    rows = await mon.call(read_rows, mon.journal.db, "BTCUSDT", "5", "constant", "0.5")
    assert len(rows) == 100 and {r.role for r in rows} == {"challenger"}
    assert all(r.probability_up == 0.5 for r in rows)

    again = _shadow(mon)  # a restart: the same calls from the journal, the same scores
    await again.start(Predictor.load(const.onnx_path))
    assert again.report() == rep and again.scored == 99
    shadow.update_gauges()
    text = generate_latest(registry).decode()
    assert (
        'apprentice_live_log_loss{head="volatility",role="challenger",symbol="BTCUSDT"} 0.69'
        in text
    )
    await mon.aclose()
    assert np.isfinite(rep["pooled"]["volatility"]["diff"])


async def _report(
    tmp: Path, events: list[Any], champion_path: Path, challenger_path: Path, hook_first: bool
) -> dict[str, Any]:
    mon = ModelMonitor(
        symbols=["BTCUSDT"],
        interval="5",
        state_dir=tmp,
        metrics=Metrics(CollectorRegistry()),
        score_window=30,
    )
    await mon.start()
    shadow = _shadow(mon)
    await shadow.start(None)
    shadow.set_challenger(Predictor.load(challenger_path))
    pipe = Pipeline(
        symbols=["BTCUSDT"],
        interval="5",
        slot=ModelSlot(Predictor.load(champion_path)),
        store=SignalStore(["BTCUSDT"]),
        metrics=mon.metrics,
        long_threshold=0.55,
        short_threshold=0.45,
    )
    tee = shadow.tee(mon.offer_burst)
    if hook_first:
        pipe.observer, pipe.shadow = tee, shadow.score
    else:  # a batched path may hand the burst's windows over after the observer saw them

        def late(batch: Any) -> None:
            tee(batch)
            for event, _vec, signal in batch:
                if signal is not None:
                    st = pipe.states["BTCUSDT"]
                    shadow.score(st.window.view()[None], ("BTCUSDT",), (event.kline.start,))

        pipe.observer = late
    for ev in events:
        pipe.process(ev)
    await asyncio.sleep(0.01)
    rep = shadow.report()
    await shadow.aclose()
    await mon.aclose()
    return rep


async def test_the_hook_may_come_before_or_after_the_observer(
    tmp_path: Path,
    btc_5m: KlineTable,
    make_events: Callable[..., Any],
    fixture_model: Any,
    model_writer: Callable[..., Any],
) -> None:
    other = model_writer(tmp_path / "o", name="other", version="2", seed=5)
    events = make_events(btc_5m, 0, 160)
    first = await _report(tmp_path / "a", events, fixture_model.onnx_path, other.onnx_path, True)
    after = await _report(tmp_path / "b", events, fixture_model.onnx_path, other.onnx_path, False)
    assert first["symbols"]["BTCUSDT"]["volatility"]["n"] == 30
    assert first == after
