"""GridClock: the next candle close in local time, from frames' exchange ts and receive time."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from service.grid_clock import GridClock

MS = 1_000_000
STEP = 300_000  # 5-minute candles, exchange ms


TS0 = 1_699_999_800_000  # on the 5-minute grid


def _at(speed: float, t0_ns: int = 7_000 * MS, ts0: int = TS0) -> Callable[[int], tuple[int, int]]:
    """(ts, received_ns) of a frame at exchange time ``ts`` on a replay running ``speed``×."""

    def frame(ts: int) -> tuple[int, int]:
        return ts, t0_ns + int((ts - ts0) * MS / speed)

    return frame


def _rated(frame: Callable[[int], tuple[int, int]]) -> GridClock:
    """A clock that has seen two interim pushes 200 ms (local) apart: the rate is known."""
    clock = GridClock(STEP, lead_ms=20.0, min_span_ms=100.0)
    clock.observe(frame(TS0 + 60_000))
    clock.observe(frame(TS0 + 120_000))
    return clock


def test_no_window_until_two_frames_far_enough_apart_give_the_rate() -> None:
    clock = GridClock(STEP, lead_ms=20.0, min_span_ms=100.0)
    frame = _at(300.0)
    assert clock.window(0) is None
    clock.observe(None)
    clock.observe(frame(TS0 + 60_000))
    assert clock.window(0) is None  # one frame: no rate
    clock.observe(frame(TS0 + 60_000 + 15_000))  # 50 ms later: too close
    assert clock.rate is None
    clock.observe(frame(TS0 + 120_000))  # 200 ms after the first
    assert clock.rate == pytest.approx(MS / 300.0)


@pytest.mark.parametrize("speed", [1.0, 300.0])
def test_the_window_is_centred_on_the_next_grid_boundary_in_local_time(speed: float) -> None:
    """Live Bybit (1×) and the accelerated replay (300×): measured, not assumed."""
    ts0 = TS0  # on the 5-minute grid
    frame = _at(speed, ts0=ts0)
    clock = GridClock(STEP, lead_ms=20.0, min_span_ms=100.0)
    for ts in (ts0 + 60_000, ts0 + 120_000, ts0 + 180_000):  # interim pushes
        clock.observe(frame(ts))
    _, rx = frame(ts0 + 180_000)
    start, end = clock.window(rx) or (0, 0)
    close_ns = frame(ts0 + STEP)[1]
    assert abs((start + end) // 2 - close_ns) <= 1  # rounding of the rate only
    assert end - start == 40 * MS


def test_a_passed_boundary_moves_the_aim_to_the_next_one() -> None:
    ts0 = TS0
    frame = _at(300.0, ts0=ts0)
    clock = _rated(frame)
    first = frame(ts0 + STEP)[1]
    period = int(STEP * MS / 300.0)  # 1 s of local time per candle
    # no frame since: once the close's window is over, the one after is aimed at
    start, end = clock.window(first + 21 * MS) or (0, 0)
    assert abs((start + end) // 2 - (first + period)) <= 1
    start, end = clock.window(first + 3 * period) or (0, 0)  # still inside the third's window
    assert abs((start + end) // 2 - (first + 3 * period)) <= 1
    # a confirm (ts just after the boundary) aims at the following close
    clock.observe(frame(ts0 + STEP + 3))
    start, end = clock.window(first) or (0, 0)
    assert abs((start + end) // 2 - (first + period)) <= 1


def test_a_clock_that_jumps_or_changes_speed_starts_the_estimate_again() -> None:
    ts0 = TS0
    frame = _at(300.0, ts0=ts0)
    clock = _rated(frame)
    assert clock.rate is not None
    clock.observe(frame(ts0 + 30_000))  # exchange clock went backwards: a new replay
    assert clock.rate is None and clock.window(0) is None
    clock.observe(frame(ts0 + 90_000))
    assert clock.rate == pytest.approx(MS / 300.0)
    # the same exchange now runs 600×: the next frame lands far from where 300× puts it
    ts, rx = frame(ts0 + 90_000)
    clock.observe((ts + 60_000, rx + int(60_000 * MS / 600.0)))
    assert clock.rate is None
    clock.observe((ts + 120_000, rx + int(120_000 * MS / 600.0)))
    assert clock.rate == pytest.approx(MS / 600.0)


def test_a_bad_step_is_refused() -> None:
    with pytest.raises(ValueError, match="step_ms"):
        GridClock(0)
