"""Section 2: incremental feature update per kline vs batch recomputation, by history length.

Four ``IncrementalFeatures`` states are preloaded with 100, 1k, 10k and 100k real bars and
then updated round-robin, each with its own next bar, so the lengths are compared side by
side. The batch path recomputes ``batch_features`` at every new bar, either over a trailing
300-bar window (the service's backfill; RSI's infinite memory needs that much) or over the
whole history (what recomputation without incremental state costs).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from bench.report import Section, Target
from bench.timing import interleaved
from service import features as fx
from service.market.kline_io import load_bundled

F64 = npt.NDArray[np.float64]
LENGTHS = (100, 1_000, 10_000, 100_000)
TRAILING = 300
SOURCES = (
    ("BTCUSDT", "1"),
    ("ETHUSDT", "1"),
    ("SOLUSDT", "1"),
    ("BTCUSDT", "5"),
    ("ETHUSDT", "5"),
    ("SOLUSDT", "5"),
)


def long_series(n: int) -> F64:
    """(n, 5) OHLCV of real bundled klines, files chained end to end.

    Each next file is rescaled so its first open equals the previous file's last close: one
    continuous price path, every bar's shape (returns, ranges, volumes) real.
    """
    parts: list[F64] = []
    scale_to: float | None = None
    total = 0
    while total < n:
        for sym, itv in SOURCES:
            t = load_bundled(sym, itv)
            ohlc = np.column_stack([t.open, t.high, t.low, t.close])
            if scale_to is not None:
                ohlc = ohlc * (scale_to / ohlc[0, 0])
            parts.append(np.column_stack([ohlc, t.volume]))
            scale_to = float(ohlc[-1, 3])
            total += len(t)
            if total >= n:
                break
    return np.concatenate(parts)[:n]


def _incremental(state: fx.IncrementalFeatures, bars: F64, start: int) -> Callable[[], object]:
    """Each call feeds the next bar (wrapping never happens: enough bars are reserved)."""
    rows = bars[start:].tolist()
    it = iter(rows)
    update = state.update

    def call() -> object:
        o, h, lo, c, v = next(it)
        return update(o, h, lo, c, v)

    return call


def _batch(bars: F64, start: int, length: int) -> Callable[[], object]:
    """Each call recomputes batch_features over the ``length`` bars ending at the next bar."""
    pos = [start]

    def call() -> object:
        end = pos[0]
        pos[0] = end + 1
        w = bars[end - length : end]
        return fx.batch_features(w[:, 0], w[:, 1], w[:, 2], w[:, 3], w[:, 4])

    return call


def run(quick: bool = False) -> Section:
    """Measure and return the section."""
    sec = Section("2. Features")
    n_inc = 1_000 if quick else 20_000
    lengths = LENGTHS
    bars = long_series(max(lengths) + n_inc + 2_000)

    inc_calls: dict[str, Callable[[], object]] = {}
    warm_up = 200
    for h in lengths:
        st = fx.IncrementalFeatures()
        for o, hi, lo, c, v in bars[:h].tolist():
            st.update(o, hi, lo, c, v)
        inc_calls[f"inc_{h}"] = _incremental(st, bars, h)
    t0 = time.perf_counter()
    inc = interleaved(
        inc_calls, dict.fromkeys(inc_calls, n_inc), warmup=warm_up, rounds=min(n_inc, 1000)
    )
    t_inc = time.perf_counter() - t0

    batch_runs = {TRAILING: 2_000, 100: 2_000, 1_000: 1_000, 10_000: 100, 100_000: 10}
    if quick:
        batch_runs = {k: max(2, v // 20) for k, v in batch_runs.items()}
    b_calls = {f"batch_{h}": _batch(bars, max(lengths), h) for h in (TRAILING, *lengths)}
    b_runs = {f"batch_{h}": batch_runs[h] for h in (TRAILING, *lengths)}
    batch = interleaved(b_calls, b_runs, warmup=2, rounds=min(b_runs.values()))

    rows: list[list[object]] = []
    for h in lengths:
        s = inc[f"inc_{h}"]
        b = batch[f"batch_{h}"]
        rows.append(
            [f"{h:,}", s.runs, s.p50, s.p90, s.p99, s.p999, b.runs, b.p50, f"{b.p50 / s.p50:,.0f}×"]
        )
    bt = batch[f"batch_{TRAILING}"]
    sec.add(
        "Real bundled klines chained into one 120k-bar path. Incremental: "
        f"`IncrementalFeatures.update` per kline, the four history lengths interleaved "
        f"({n_inc:,} updates each, {t_inc:.1f} s). Batch: `batch_features` recomputed at every "
        "new bar over the whole history.",
        "",
    )
    sec.table(
        (
            "history (bars preloaded)",
            "incr. runs",
            "incr. p50 µs",
            "p90 µs",
            "p99 µs",
            "p99.9 µs",
            "batch runs",
            "batch (whole history) p50 µs",
            "batch / incr.",
        ),
        rows,
    )
    ref = inc[f"inc_{lengths[0]}"]
    s_inc = [inc[f"inc_{h}"] for h in lengths]
    s_all = max(s_inc, key=lambda s: s.p99)
    sec.add(
        f"Batch over a trailing {TRAILING}-bar window (the smallest exact recomputation, since "
        f"RSI has infinite memory): p50 {bt.p50:,.0f} µs, p99 {bt.p99:,.0f} µs "
        f"({bt.runs} runs) — {bt.p50 / ref.p50:,.0f}× the incremental update.",
        "",
    )
    flat = max(s.p50 for s in s_inc) / min(s.p50 for s in s_inc)
    sec.targets.append(
        Target(
            "incremental update p99 (worst history length)",
            "≤ 20 µs",
            f"{s_all.p99:.1f} µs (p50 {min(s.p50 for s in s_inc):.1f}–"
            f"{max(s.p50 for s in s_inc):.1f} µs)",
            s_all.p99 <= 20.0,
            "" if s_all.p99 <= 20.0 else f"missed by {s_all.p99 / 20.0:.2f}×",
        )
    )
    sec.targets.append(
        Target(
            "flat in history length (p50 max/min over 100…100k bars)",
            "≈ 1 (≤ 1.25)",
            f"{flat:.2f}",
            flat <= 1.25,
            "O(1): fixed 48-slot rings; batch grows linearly",
        )
    )
    return sec
