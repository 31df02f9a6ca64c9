"""Backoff and the per-symbol candle sequencer (pure)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from service.market.klines import Kline, KlineEvent
from service.market.rest import Backoff
from service.market.sequencer import CandleSequencer, Fetch, FillRange, Verdict

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


# decisions: frames and REST answers in, deliveries and fetches out (no I/O anywhere) -------
def closed(i: int, close: float = 100.0) -> Kline:
    return replace(k(i), open=close, close=close, high=close * 1.001, low=close * 0.999)


def ts_after(i: int) -> int:
    return T0 + (i + 1) * STEP + 5  # just after candle i closed


def starts(events: list[KlineEvent]) -> list[int]:
    return [(e.kline.start - T0) // STEP for e in events]


def test_warm_up_first_then_held_confirms_in_order() -> None:
    seq = CandleSequencer("BTCUSDT", "5")
    d = seq.start(300)
    assert d.fetch == Fetch("BTCUSDT", latest=300) and seq.busy
    # confirms arrive while the warm-up is out: held, nothing delivered
    d = seq.on_frame(ts_after(10), [closed(10)], 1)
    assert d.deliver == [] and d.fetch is None and seq.held == 1
    d = seq.on_fetched([closed(i) for i in range(0, 10)], ts_after(10), 2)
    assert starts(d.deliver) == list(range(10)) and {e.source for e in d.deliver} == {"rest"}
    assert seq.busy  # handing over: a confirm read now is still held
    seq.on_frame(ts_after(11), [closed(11)], 3)
    d = seq.handed_over()
    assert starts(d.deliver) == [10, 11] and seq.busy  # still handing those over
    assert seq.handed_over().deliver == [] and not seq.busy


def test_a_gap_asks_for_exactly_the_missing_range_and_holds_the_confirm() -> None:
    seq = CandleSequencer("BTCUSDT", "5")
    seq.accept(closed(0))
    seq.observe_time(ts_after(2))  # REST showed the time (one frame moves it 3 bars at most)
    d = seq.on_frame(ts_after(4), [closed(4)], 1)
    assert d.fetch == Fetch("BTCUSDT", T0 + STEP, T0 + 3 * STEP) and seq.held == 1
    d = seq.on_fetched([closed(1), closed(2), closed(3), closed(4)], ts_after(4), 2)
    assert starts(d.deliver) == [1, 2, 3]  # REST stops before the held confirm
    assert starts(seq.handed_over().deliver) == [4]
    assert d.deliver[0].source == "rest"


def test_a_failed_fill_waits_on_exchange_time_then_the_due_fill_covers_it() -> None:
    seq = CandleSequencer("BTCUSDT", "5", fill_retry_ms=60_000)
    seq.accept(closed(0))
    seq.observe_time(ts_after(1))
    d = seq.on_frame(ts_after(3), [closed(3)], 1)
    assert d.fetch is not None
    d = seq.on_fetch_failed(60_000)
    assert d.fetch is None and not seq.busy and seq.held == 1
    assert seq.on_frame(ts_after(3) + 1_000, [closed(3, 100.5)], 2).fetch is None  # waiting
    d = seq.on_time(ts_after(3) + 61_000)
    assert d.fetch is not None and d.fetch.first == T0 + STEP


def test_rest_rows_are_held_to_the_last_close() -> None:
    seq = CandleSequencer("BTCUSDT", "5")
    seq.accept(closed(0, 100.0))
    seq._busy = True  # a fill is out
    seq._fetch = Fetch("BTCUSDT", T0 + STEP, T0 + 3 * STEP)
    rows = [closed(1, 101.0), closed(2, 1e300), closed(3, 1e-300)]
    d = seq.on_fetched(rows, ts_after(3), 1)
    assert starts(d.deliver) == [1] and d.refused == ["implausible_price"] * 2


def test_a_frame_from_the_future_is_refused_and_asks_for_the_exchange_time() -> None:
    seq = CandleSequencer("BTCUSDT", "5")
    seq.accept(closed(0))
    d = seq.on_frame(ts_after(100), [closed(100)], 1)
    assert d.refused == ["future"] and d.probe and d.fetch is None and seq.held == 0
