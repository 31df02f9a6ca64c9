"""Backoff and the per-symbol candle sequencer (pure)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from service.market.klines import Kline
from service.market.rest import Backoff
from service.market.sequencer import CandleSequencer, FillRange, Verdict

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


def test_fill_ranges_are_bounded_by_the_history_kept() -> None:
    seq = CandleSequencer("BTCUSDT", "5", grace_ms=0, history_bars=300)
    seq.accept(k(0))
    far = 2**63 - 1
    r = seq.due_fill(far)  # once: every window of a 3e16-candle range, built up front
    assert r is not None and (r.last - r.first) // STEP + 1 == 300
    gap = seq.gap_before(k(10_000))
    assert gap == FillRange(T0 + 9_700 * STEP, T0 + 9_999 * STEP)


def test_one_frame_moves_the_clock_at_most_a_few_intervals() -> None:
    seq = CandleSequencer("BTCUSDT", "5", ahead_intervals=3)
    seq.observe_time(T0 + 10 * STEP)  # REST's time
    assert seq.admit(T0 + 10 * STEP + 5, [k(10, confirm=False)]) is None
    assert seq.clock == T0 + 10 * STEP + 5
    assert seq.admit(2**63 - 1, [k(10, confirm=False)]) == "future"
    assert seq.admit(T0 + 10 * STEP, [k(1010)]) == "future"  # a start 1000 intervals ahead
    assert seq.admit(T0 + 10 * STEP, [k(2**62 // STEP)]) == "future"
    assert seq.clock == T0 + 10 * STEP + 5  # none of them moved it
    assert seq.admit(T0 + 13 * STEP, [k(12)]) is None  # within the tolerance: time moves on
    seq.observe_time(T0 + 40 * STEP)  # REST confirms a real jump (a long disconnect)
    assert seq.admit(T0 + 40 * STEP + 3, [k(39)]) is None


def test_before_any_time_is_known_a_frame_must_describe_its_own_present() -> None:
    seq = CandleSequencer("BTCUSDT", "5")
    assert seq.admit(2**63 - 1, [k(0, confirm=False)]) == "future"
    assert seq.admit(T0 + STEP // 2, [k(1000)]) == "future"
    assert seq.clock is None
    assert seq.admit(T0 + STEP // 2, [k(0, confirm=False)]) is None


def test_a_far_future_ts_does_not_postpone_the_repair_of_a_late_confirm() -> None:
    seq = CandleSequencer("BTCUSDT", "5", grace_ms=10_000)
    seq.accept(k(0))
    seq.observe_time(T0 + STEP)
    assert seq.admit(2**62, [k(1, confirm=False)]) == "future"  # refused before any defer
    assert seq.due_fill(T0 + 3 * STEP) == FillRange(T0 + STEP, T0 + STEP)


def test_websocket_confirms_that_cannot_be_true_are_refused() -> None:
    seq = CandleSequencer("BTCUSDT", "5", max_jump=0.2, early_ms=1_000)
    seq.accept(k(0))  # close 1.5
    nxt = k(1)  # open 1.0, close 1.5: within 20 % of the previous close? open is not
    assert seq.check_confirm(nxt, T0 + STEP) == "early_confirm"  # stamped mid-candle
    assert seq.check_confirm(nxt, T0 + 2 * STEP + 3) == "implausible_price"
    ok = Kline("BTCUSDT", "5", T0 + STEP, 1.5, 1.7, 1.4, 1.6, 10.0, None, True)
    assert seq.check_confirm(ok, T0 + 2 * STEP + 3) is None
    tiny = Kline("BTCUSDT", "5", T0 + STEP, 1e-300, 1e-300, 1e-300, 1e-300, 1.0, None, True)
    assert seq.check_confirm(tiny, T0 + 2 * STEP + 3) == "implausible_price"
    # the candle's own updates are the reference once seen
    assert seq.note_interim(Kline("BTCUSDT", "5", T0 + STEP, 1.5, 1.9, 1.5, 1.75, 5.0)) is None
    up = Kline("BTCUSDT", "5", T0 + STEP, 1.5, 2.0, 1.5, 2.0, 10.0, None, True)
    assert seq.check_confirm(up, T0 + 2 * STEP + 3) is None  # 2.0 is within 20 % of 1.75


def test_a_confirm_that_contradicts_the_candles_own_updates_is_refused() -> None:
    seq = CandleSequencer("BTCUSDT", "5")
    seq.accept(k(0))  # close 1.5
    seen = Kline("BTCUSDT", "5", T0 + STEP, 1.5, 1.6, 1.45, 1.55, 8.0, None, False)
    assert seq.note_interim(seen) is None
    end = T0 + 2 * STEP + 3
    real = Kline("BTCUSDT", "5", T0 + STEP, 1.5, 1.7, 1.4, 1.6, 10.0, None, True)
    assert seq.check_confirm(real, end) is None
    for forged in (
        replace(real, open=1.49),  # the open is fixed once the candle opened
        replace(real, high=1.59, close=1.58),  # the high only grows
        replace(real, low=1.46),  # the low only falls
        replace(real, volume=7.0),  # the volume only grows
    ):
        assert seq.check_confirm(forged, end) == "inconsistent_confirm", forged
