"""Issue 27 item 11: no signal is published before 300 bars of history are behind it.

RSI has infinite memory (DESIGN section 3): with only the ~80 bars a full window needs, a
feature vector, and so a served probability, differs from the one the full history gives
(the issue found 8e-5 served and 3.3e-4 journaled). The service's pipeline now warms on those
bars but publishes (stores, hands to the trader, shows the monitor as a signal) only from the
300th bar, and that first signal equals the full history's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from service.market.klines import KlineEvent, KlineTable
from service.metrics import Metrics
from service.model.predictor import ModelSlot, Predictor
from service.pipeline.scoring import EXACT_HORIZON_BARS, Pipeline
from service.pipeline.signals import Signal, SignalStore
from service.runtime import Runtime

COMMITTED = Path(__file__).resolve().parents[2] / "models" / "student_pooled_5m.onnx"
OFFSET = 600  # the service's REST history starts here; the reference has all bars before


def pipeline(predictor: Predictor, horizon: int, observed: list[Any]) -> Pipeline:
    return Pipeline(
        symbols=["BTCUSDT"],
        interval="5",
        slot=ModelSlot(predictor),
        store=SignalStore(["BTCUSDT"]),
        metrics=Metrics(CollectorRegistry()),
        long_threshold=0.55,
        short_threshold=0.45,
        observer=lambda batch: observed.extend(signal for _ev, _vec, signal in batch),
        horizon_bars=horizon,
    )


def signals(pipe: Pipeline, events: list[KlineEvent]) -> dict[int, Signal]:
    out = {}
    for ev in events:
        s = pipe.process(ev)
        if s is not None:
            out[ev.kline.start] = s
    return out


def test_the_first_published_signal_has_the_horizon_behind_it_and_is_exact(
    btc_5m: KlineTable, make_events: Callable[..., list[KlineEvent]]
) -> None:
    predictor = Predictor.load(COMMITTED)
    events = make_events(btc_5m, 0, OFFSET + 400, source="rest")
    reference = signals(pipeline(predictor, 0, []), events)  # 600 more bars of history

    observed: list[Any] = []
    service = pipeline(predictor, EXACT_HORIZON_BARS, observed)
    got = signals(service, events[OFFSET:])
    starts = [ev.kline.start for ev in events[OFFSET:]]
    assert min(got) == starts[EXACT_HORIZON_BARS - 1]  # the 300th bar, not the 79th
    assert len(got) == 400 - EXACT_HORIZON_BARS + 1
    assert observed[: EXACT_HORIZON_BARS - 1] == [None] * (EXACT_HORIZON_BARS - 1)
    assert service.store.latest("BTCUSDT") is got[max(got)]
    worst = max(
        max(
            abs(s.probability_up - reference[t].probability_up),
            abs(s.probability_high_vol - reference[t].probability_high_vol),
        )
        for t, s in got.items()
    )
    assert worst < 1e-6, worst

    # what was published before: the window's first signal, off by far more
    early = signals(pipeline(predictor, 0, []), events[OFFSET:])
    first = min(early)
    assert first == starts[78]
    assert abs(early[first].probability_high_vol - reference[first].probability_high_vol) > 1e-6


def test_the_service_pipeline_waits_for_the_horizon(make_settings: Any) -> None:
    from service.settings import Settings

    assert Settings.model_fields["signal_horizon_bars"].default == EXACT_HORIZON_BARS
    rt = Runtime(make_settings(signal_horizon_bars=300), registry=CollectorRegistry())
    assert rt.pipeline.needed == EXACT_HORIZON_BARS
    assert rt.pipeline.status()["BTCUSDT"]["needed"] == EXACT_HORIZON_BARS
