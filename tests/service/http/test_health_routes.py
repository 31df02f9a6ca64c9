"""/model/health, /chart and the metrics: live scores per symbol and head (N stated), PSI per
feature, the journal — and all of it rebuilt from the journal after a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service import features as fx
from service.http.app import create_app, runtime_of
from service.market.klines import KlineTable
from service.model.card import FeatureReference
from service.pipeline.scoring import BARS_TO_FIRST_SIGNAL
from service.runtime import Runtime

N_BACKFILL = 100
LEVELS = [i / 10 for i in range(11)]


def reference_of(table: KlineTable) -> FeatureReference:
    """Decile reference of a table's feature rows (what training writes into the card)."""
    feats = fx.batch_features(table.open, table.high, table.low, table.close, table.volume)
    rows = feats[~np.isnan(feats).any(axis=1)]
    return FeatureReference(
        quantiles=LEVELS,
        values={n: list(np.quantile(rows[:, j], LEVELS)) for j, n in enumerate(fx.FEATURE_NAMES)},
        rows=int(rows.shape[0]),
    )


@pytest.fixture
def health_app(
    tmp_path: Path,
    btc_5m: KlineTable,
    model_writer: Callable[..., Any],
    make_settings: Callable[..., Any],
    feed_factory_maker: Callable[..., Any],
    make_events: Callable[..., Any],
) -> Callable[..., Any]:
    """app(score_window) -> context manager yielding (client, runtime, push(lo, hi))."""
    metrics = {
        "direction": {"accuracy": 0.51, "log_loss": 0.693, "brier": 0.25, "auc": 0.52},
        "volatility": {"accuracy": 0.66, "log_loss": 0.62, "brier": 0.21, "auc": 0.71},
    }
    fm = model_writer(
        tmp_path / "m2",
        scale=0.02,
        card_extra={"metrics": metrics, "feature_reference": reference_of(btc_5m.slice(0, 3000))},
    )

    @contextmanager
    def _app(**overrides: Any) -> Iterator[tuple[TestClient, Runtime, Callable[[int, int], None]]]:
        settings = make_settings(symbols=["BTCUSDT", "ETHUSDT"], model=fm.onnx_path, **overrides)
        factory, built = feed_factory_maker({s: btc_5m for s in settings.symbols}, N_BACKFILL)
        app = create_app(settings, feed_factory=factory)
        with TestClient(app) as client:
            rt = runtime_of(app)

            def push(lo: int, hi: int) -> None:
                events = []
                for i in range(lo, hi):  # symbols interleaved, as live
                    for sym in settings.symbols:
                        events += make_events(btc_5m, i, i + 1, source="ws", symbol=sym)
                client.portal.call(built[0].push, events)  # type: ignore[union-attr]
                client.portal.call(_drained, rt)  # type: ignore[union-attr]

            client.portal.call(_wait_bars, rt, N_BACKFILL * 2)  # type: ignore[union-attr]
            yield client, rt, push

    return _app


async def _wait_bars(rt: Runtime, n: int) -> None:
    deadline = time.monotonic() + 30
    while sum(st.bars for st in rt.pipeline.states.values()) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.002)
    await _drained(rt)


async def _drained(rt: Runtime) -> None:
    await asyncio.sleep(0.01)  # the monitor's drain runs on the loop's next passes
    await rt.monitor.flush()


def test_health_scores_drift_metrics_and_chart(health_app: Callable[..., Any]) -> None:
    with health_app(score_window=20) as (client, rt, push):
        body = client.get("/model/health").json()
        assert body["window"] == 20
        # backfill alone is history: nothing scored yet, N says so
        assert body["symbols"]["BTCUSDT"]["volatility"]["n"] == 0
        assert body["symbols"]["BTCUSDT"]["volatility"]["live"] is None
        push(N_BACKFILL, N_BACKFILL + 30)
        body = client.get("/model/health").json()
        for sym in ("BTCUSDT", "ETHUSDT"):
            for head in ("direction", "volatility"):
                h = body["symbols"][sym][head]
                assert h["n"] == 20 and h["window"] == 20  # the last N of 29 scored
                assert h["scored_total"] == 29  # the 30th waits for its next candle
                assert set(h["live"]) == {"n", "accuracy", "log_loss", "brier", "auc", "base_rate"}
                assert h["no_skill"]["auc"] == 0.5 and h["no_skill"]["n"] == 20
                assert h["test"]["log_loss"] == pytest.approx(
                    0.693 if head == "direction" else 0.62
                )
                assert h["beats_no_skill"] == (h["live"]["log_loss"] < h["no_skill"]["log_loss"])
        # the scores equal the pure functions on the labels the candles gave
        pairs = rt.monitor.scorer.pairs("BTCUSDT", "direction")
        y = [a for a, _ in pairs]
        assert body["symbols"]["BTCUSDT"]["direction"]["live"]["base_rate"] == pytest.approx(
            sum(y) / len(y), abs=1e-6
        )
        drift = body["drift"]
        assert drift["n"] == 60 and drift["reference_rows"] > 2000  # 30 live vectors x 2
        assert set(drift["features"]) == set(fx.FEATURE_NAMES)
        assert all(v is not None and v >= 0 for v in drift["features"].values())
        assert body["journal"]["klines"] == 2 * (N_BACKFILL + 30)
        assert body["journal"]["signals"] == 2 * (N_BACKFILL + 30 - BARS_TO_FIRST_SIGNAL + 1)

        text = client.get("/metrics").text
        assert 'apprentice_live_scored_total{head="volatility",symbol="ETHUSDT"} 29.0' in text
        assert 'apprentice_live_log_loss{head="direction",role="champion",symbol="BTCUSDT"}' in text
        assert 'apprentice_live_accuracy{head="volatility",symbol="BTCUSDT"}' in text
        assert 'apprentice_feature_psi{feature="rsi_14"}' in text
        assert 'apprentice_signals_total{direction="up",symbol="BTCUSDT"}' in text or (
            'apprentice_signals_total{direction="down",symbol="BTCUSDT"}' in text
        )

        chart = client.get("/chart", params={"limit": 10}).json()
        pts = chart["points"]["BTCUSDT"]
        assert len(pts) == 10 and chart["regime_threshold"] == 0.5
        latest = rt.store.latest("BTCUSDT")
        assert latest is not None
        assert pts[-1] == {
            "candle_start": latest.candle_start,
            "close": latest.close,
            "action": latest.action,
            "probability_high_vol": pytest.approx(latest.probability_high_vol),
        }


def test_restart_rebuilds_scores_from_the_journal(health_app: Callable[..., Any]) -> None:
    with health_app(score_window=50) as (client, _, push):
        push(N_BACKFILL, N_BACKFILL + 40)
        before_body = client.get("/model/health").json()
        before = before_body["symbols"]
    with health_app(score_window=50) as (client, _rt, push):
        # the restart's backfill (the first 100 candles again) is ignored by the scorer
        after_body = client.get("/model/health").json()
        after = after_body["symbols"]
        assert after == before
        # drift: the live vectors are recomputed from the journaled klines (batch features)
        assert after_body["drift"]["n"] == before_body["drift"]["n"] == 80
        for name, value in before_body["drift"]["features"].items():
            assert after_body["drift"]["features"][name] == pytest.approx(value, abs=1e-6)
        push(N_BACKFILL + 40, N_BACKFILL + 45)  # continues: the pending signal is scored too
        h = client.get("/model/health").json()["symbols"]["BTCUSDT"]["direction"]
        assert h["scored_total"] == before["BTCUSDT"]["direction"]["scored_total"] + 5
        assert client.get("/model/health").json()["journal"]["signals"] == 2 * (
            N_BACKFILL + 45 - BARS_TO_FIRST_SIGNAL + 1
        )


def test_bad_chart_query_is_422_and_a_one_head_model_is_refused(
    health_app: Callable[..., Any], model_writer: Callable[..., Any]
) -> None:
    with health_app(admin_token="t0ken-t0ken-t0ken") as (client, rt, _):
        for bad in ("0", "301", "abc"):
            assert client.get("/chart", params={"limit": bad}).status_code == 422, bad
        model_dir = rt.settings.model.parent
        model_writer(model_dir, name="one_head", with_vol=False)
        r = client.post(
            "/admin/reload",
            headers={"Authorization": "Bearer t0ken-t0ken-t0ken"},
            json={"model": "one_head.onnx"},
        )
        assert r.status_code == 422 and "'prob_high_vol'" in r.json()["detail"]
        assert client.get("/model").json()["name"] == "student_fixture"  # still serving
