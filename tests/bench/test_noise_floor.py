"""The noise-floor section's arithmetic: stall bins, tick phase, and the stalls-only model."""

from __future__ import annotations

import math

from bench.noise_floor import (
    REFERENCE_WORKLOAD_P50_US,
    TICK_NS,
    Workload,
    host_speed,
    paused_latency,
    per_second,
    record_gaps,
    share_before_tick,
    stall_model,
)
from bench.timing import time_calls

US = 1_000


def test_paused_latency_adds_every_stall_the_work_meets() -> None:
    gaps = [(100 * US, 30 * US), (200 * US, 50 * US), (1_000 * US, 400 * US)]
    assert paused_latency(gaps, 0, 40 * US) == 40 * US  # done before the first stall
    assert paused_latency(gaps, 90 * US, 40 * US) == 70 * US  # meets the 30 µs one
    # 10 µs, stall 30, 70 µs, stall 50, the last 20 µs: meets two
    assert paused_latency(gaps, 90 * US, 100 * US) == 180 * US
    assert paused_latency(gaps, 110 * US, 5 * US) == 25 * US  # begun inside a stall
    assert paused_latency([], 5, 7) == 7


def test_stall_model_without_stalls_is_the_work_itself() -> None:
    out = stall_model([], 0, 10_000_000, 35 * US, 100)
    assert out.size == 100 and set(out.tolist()) == {35 * US}
    one = stall_model([(5_000_000, 100 * US)], 0, 10_000_000, 35 * US, 5_000, seed=3)
    hit = one[one > 35 * US]
    # a 100 µs stall in 9 ms of starts: ~1.5 % of starts meet it, each by at most 100 µs
    assert 0.005 < hit.size / one.size < 0.03 and hit.max() <= 135 * US


def test_bins_and_tick_share() -> None:
    gaps = [(TICK_NS - 100 * US, 30 * US), (TICK_NS + 1_000 * US, 30 * US), (10, 6 * US)]
    rows = {label: (rate, ms) for label, rate, ms in per_second(gaps, 2.0)}
    assert rows["20–40 µs"] == (1.0, 0.03) and rows["5–20 µs"][0] == 0.5
    assert rows["≥ 400 µs"] == (0.0, 0.0)
    assert share_before_tick(gaps, 20 * US) == 0.5
    assert math.isnan(share_before_tick(gaps, 1_000 * US))


def test_recording_and_workload_run_for_real() -> None:
    gaps, t0, t1 = record_gaps(0.05, min_gap_ns=2 * US)
    assert t1 - t0 >= 50_000_000 and all(n >= 2 * US and t0 <= s < t1 for s, n in gaps)
    assert [s for s, _ in gaps] == sorted(s for s, _ in gaps)  # paused_latency bisects them
    work = Workload(reads=50, objects=100)
    assert work() == work()  # deterministic
    timed = time_calls(work, 20, warmup=2)
    assert timed.runs == 20 and timed.p50 > 0


def test_host_speed_is_the_workload_against_the_reference_run() -> None:
    assert host_speed(REFERENCE_WORKLOAD_P50_US) == 1.0
    assert math.isclose(host_speed(3 * REFERENCE_WORKLOAD_P50_US), 3.0)
