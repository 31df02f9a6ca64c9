"""Live scoring: labels as DESIGN section 3, which signals count, restarts and gaps."""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from service import features as fx
from service.market.kline_io import load_bundled
from service.monitor.live_score import (
    VOL_LABEL_BARS,
    LiveScorer,
    direction_label,
    range_rel,
    volatility_label,
)

STEP = 300_000


def test_labels_by_hand() -> None:
    assert direction_label(100.0, 101.0) == 1.0
    assert direction_label(100.0, 100.0) == 0.0  # not above: 0
    ranges = [0.01] * 24 + [0.03] * 24  # median 0.02
    assert volatility_label(0.021, ranges) == 1.0
    assert volatility_label(0.02, ranges) == 0.0
    with pytest.raises(ValueError):
        volatility_label(0.1, ranges[:-1])


def _feed(scorer: LiveScorer, rows: list[tuple[int, float, float, float, float]]) -> list[object]:
    outs = []
    for start, o, h, low, c in rows:
        outs.append(scorer.on_kline("BTC", start, o, h, low, c))
        scorer.on_signal("BTC", start, 0.6, 0.3, True)
    return outs


def _rows(n: int, t0: int = 0) -> list[tuple[int, float, float, float, float]]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        o = 100 + rng.standard_normal()
        c = o + rng.standard_normal()
        out.append((t0 + i * STEP, o, max(o, c) + rng.random(), min(o, c) - rng.random(), c))
    return out


def test_scores_match_batch_labels_on_real_data() -> None:
    """The live labels equal the batch labels of the whole history (features.make_labels for
    direction, the rolling median for volatility)."""
    t = load_bundled("BTCUSDT", "5").slice(0, 400)
    scorer = LiveScorer(["BTC"], STEP, window=1000)
    for i in range(len(t)):
        scorer.on_kline("BTC", int(t.start[i]), t.open[i], t.high[i], t.low[i], t.close[i])
        scorer.on_signal("BTC", int(t.start[i]), 0.5, 0.5, True)
    y_dir = fx.make_labels(t.open, t.close)
    r = (t.high - t.low) / t.close
    y_vol = np.array(
        [
            float(r[i + 1] > np.median(r[i - VOL_LABEL_BARS + 1 : i + 1]))
            for i in range(VOL_LABEL_BARS - 1, len(t) - 1)
        ]
    )
    # the shared batch labels are the same
    assert list(fx.make_vol_labels(t.high, t.low, t.close)[VOL_LABEL_BARS - 1 : -1]) == list(y_vol)
    pairs_dir = scorer.pairs("BTC", "direction")
    pairs_vol = scorer.pairs("BTC", "volatility")
    # the first scored signal is candle 47's (candle 48 gives its label; 48 ranges exist)
    first = VOL_LABEL_BARS - 1
    assert len(pairs_vol) == len(t) - 1 - first
    assert [a for a, _ in pairs_dir] == list(y_dir[first:-1])
    assert [a for a, _ in pairs_vol] == list(y_vol)
    assert range_rel(t.high[5], t.low[5], t.close[5]) == pytest.approx(r[5])


def test_window_report_and_totals() -> None:
    scorer = LiveScorer(["BTC"], STEP, window=10)
    _feed(scorer, _rows(80))
    assert scorer.scored_total("BTC", "direction") == 80 - VOL_LABEL_BARS
    assert len(scorer.pairs("BTC", "volatility")) == 10
    rep = scorer.report("BTC", "volatility")
    assert rep is not None
    model, base = rep
    assert model["n"] == base["n"] == 10
    y = [a for a, _ in scorer.pairs("BTC", "volatility")]
    assert base["base_rate"] == pytest.approx(statistics.mean(y))


def test_backfill_not_scored_until_live_then_catch_up_is() -> None:
    scorer = LiveScorer(["BTC"], STEP, window=500)
    rows = _rows(120)
    for start, o, h, low, c in rows[:100]:  # history backfill: not scored
        scorer.on_kline("BTC", start, o, h, low, c)
        scorer.on_signal("BTC", start, 0.5, 0.5, False)
    assert scorer.report("BTC", "direction") is None
    for start, o, h, low, c in rows[100:110]:  # live
        scorer.on_kline("BTC", start, o, h, low, c)
        scorer.on_signal("BTC", start, 0.5, 0.5, True)
    assert scorer.scored_total("BTC", "direction") == 9  # the 10th waits for its outcome
    for start, o, h, low, c in rows[90:120]:  # a reconnect's backfill: old rows ignored
        scorer.on_kline("BTC", start, o, h, low, c)
        scorer.on_signal("BTC", start, 0.5, 0.5, False)
    assert scorer.scored_total("BTC", "direction") == 19  # catch-up candles count, once


def test_gap_leaves_the_signal_unscored() -> None:
    scorer = LiveScorer(["BTC"], STEP, window=500)
    rows = _rows(60)
    _feed(scorer, rows)
    before = scorer.scored_total("BTC", "direction")
    start, o, h, low, c = rows[-1]
    scorer.on_kline("BTC", start + 3 * STEP, o, h, low, c)  # two candles missing
    assert scorer.scored_total("BTC", "direction") == before


def test_another_model_starts_a_fresh_window() -> None:
    scorer = LiveScorer(["BTC"], STEP, window=500)
    rows = _rows(70)
    for start, o, h, low, c in rows[:60]:
        scorer.on_kline("BTC", start, o, h, low, c)
        scorer.on_signal("BTC", start, 0.6, 0.3, True, "sha-a")
    assert len(scorer.pairs("BTC", "direction")) == 60 - VOL_LABEL_BARS
    for start, o, h, low, c in rows[60:]:
        scorer.on_kline("BTC", start, o, h, low, c)
        scorer.on_signal("BTC", start, 0.6, 0.3, True, "sha-b")
    # candle 59 (model a) was scored by candle 60, then model b's window began
    assert len(scorer.pairs("BTC", "direction")) == 9
    assert scorer.scored_total("BTC", "direction") == 70 - 1 - (VOL_LABEL_BARS - 1)
