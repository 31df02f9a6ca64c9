"""Backoff and the per-symbol candle sequencer (pure)."""

from __future__ import annotations

import random

import pytest

from service.backfill import Backoff, CandleSequencer, FillRange, Verdict
from service.klines import Kline

STEP = 300_000
T0 = 1_743_999_900_000  # on the 5-minute grid


def k(i: int, confirm: bool = True) -> Kline:
    return Kline("BTCUSDT", "5", T0 + i * STEP, 1.0, 2.0, 0.5, 1.5, 10.0, None, confirm)


def test_backoff_grows_exponentially_caps_and_resets() -> None:
    b = Backoff(initial_s=0.5, max_s=4.0, factor=2.0, jitter=0.0)
    assert [b.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    b.reset()
    assert b.next_delay() == 0.5


def test_backoff_jitter_stays_within_bounds() -> None:
    b = Backoff(initial_s=1.0, max_s=1.0, jitter=0.25, rng=random.Random(3))
    delays = [b.next_delay() for _ in range(200)]
    assert all(0.75 <= d <= 1.25 for d in delays)
    assert len(set(delays)) > 100  # really jittered, not constant


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Backoff(initial_s=2.0, max_s=1.0)


def test_classify_next_duplicate_gap() -> None:
    seq = CandleSequencer("BTCUSDT", "5")
    assert seq.classify(k(0)) is Verdict.NEXT  # no anchor yet
    seq.accept(k(0))
    assert seq.classify(k(1)) is Verdict.NEXT
    assert seq.classify(k(0)) is Verdict.DUPLICATE
    assert seq.classify(k(-5)) is Verdict.DUPLICATE
    assert seq.classify(k(4)) is Verdict.GAP
    assert seq.gap_before(k(4)) == FillRange(T0 + STEP, T0 + 3 * STEP)


def test_take_orders_dedupes_and_respects_before() -> None:
    seq = CandleSequencer("BTCUSDT", "5")
    seq.accept(k(1))
    got = seq.take([k(3), k(0), k(2), k(1), k(2), k(5)], before=T0 + 5 * STEP)
    assert [x.start for x in got] == [T0 + 2 * STEP, T0 + 3 * STEP]
    assert seq.last_start == T0 + 3 * STEP


def test_live_updates_only_after_the_last_closed() -> None:
    seq = CandleSequencer("BTCUSDT", "5")
    seq.accept(k(3))
    assert seq.is_live(k(4, confirm=False))
    assert not seq.is_live(k(3, confirm=False))


def test_due_fill_waits_for_the_grace_period_on_exchange_time() -> None:
    seq = CandleSequencer("BTCUSDT", "5", grace_ms=10_000)
    assert seq.due_fill(T0 + 10 * STEP) is None  # no anchor: nothing to fill
    seq.accept(k(0))
    end1 = T0 + 2 * STEP  # candle 1 ends here
    assert seq.due_fill(end1 + 9_999) is None  # its confirm may still come
    assert seq.due_fill(end1 + 10_000) == FillRange(T0 + STEP, T0 + STEP)
    # long disconnect: everything that closed more than grace ago
    assert seq.due_fill(T0 + 7 * STEP + 20_000) == FillRange(T0 + STEP, T0 + 6 * STEP)


def test_defer_postpones_fills() -> None:
    seq = CandleSequencer("BTCUSDT", "5", grace_ms=0)
    seq.accept(k(0))
    ts = T0 + 3 * STEP
    assert seq.due_fill(ts) is not None
    seq.defer(ts, 5_000)
    assert seq.due_fill(ts + 4_999) is None
    assert seq.due_fill(ts + 5_000) is not None
