"""Section 7: the machine's own noise on the service's CPU, with nothing of ours running.

Section 3's tail (frame → signal p99) is set by a few candles in a hundred. This section
measures what this VM does to *any* code on that CPU, so the figure can be read against it:

* **Stalls:** a bare loop reads ``perf_counter_ns`` (CLOCK_MONOTONIC) as fast as it can; a
  gap between two reads is time the vCPU was taken away (timer tick, hypervisor exits,
  kernel threads). Counted per second by length, with the share of the long ones that fall
  in the last 250 µs before a 4 ms boundary of the monotonic clock, where the guest's timer
  tick lands on this VM.
* **A fixed Python workload** of about the live path's length (~35 µs of dict and list
  reads over a working set), timed call by call (``bench.timing.time_calls``): its
  p99 / p50 is the spread that the VM alone puts on a Python path of that size.
* **How much the stalls alone explain:** the same workload's latency if the loop's stalls
  simply paused it (work laid at random start times over the recorded gaps), next to the
  measured one. Where the measured tail is longer, the code ran slower after a stall
  (caches and TLB refilled after a hypervisor exit), which no loop of reads can see.
"""

from __future__ import annotations

import os
import random
import time
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

import numpy as np

from bench.report import Section
from bench.timing import Summary, time_calls
from service.demo import cpu_plan, pin

TICK_NS = 4_000_000  # the guest timer tick's period on this VM (HZ = 250)
TICK_WINDOW_NS = 250_000  # "just before a tick": the last 250 µs of each period
MIN_GAP_NS = 5_000
BINS_US = ((5, 20), (20, 40), (40, 100), (100, 400), (400, None))

Gap = tuple[int, int]  # (start ns, length ns) on perf_counter_ns

# The workload's p50 on the run that measured README's demo figures (make bench,
# 2026-11-28 12:45 UTC, `make demo` p50 41-50 us then): today's p50 over it is this host's
# speed against that day, so a slow host can be told from slow code.
REFERENCE_WORKLOAD_P50_US = 32.9
REFERENCE_DEMO_P50_US = 45.0


def record_gaps(duration_s: float, min_gap_ns: int = MIN_GAP_NS) -> tuple[list[Gap], int, int]:
    """Spin for ``duration_s``; every gap between two clock reads ≥ ``min_gap_ns``, and the
    (start, end) of the recording."""
    clock = time.perf_counter_ns
    gaps: list[Gap] = []
    t0 = prev = clock()
    end = t0 + int(duration_s * 1e9)
    while prev < end:
        now = clock()
        if now - prev >= min_gap_ns:
            gaps.append((prev, now - prev))
        prev = now
    return gaps, t0, prev


def per_second(gaps: Sequence[Gap], seconds: float) -> list[tuple[str, float, float]]:
    """(length bin, gaps per second, ms lost per second) for each of ``BINS_US``."""
    rows = []
    for lo, hi in BINS_US:
        lens = [n for _, n in gaps if n >= lo * 1000 and (hi is None or n < hi * 1000)]
        label = f"{lo}–{hi} µs" if hi is not None else f"≥ {lo} µs"
        rows.append((label, len(lens) / seconds, sum(lens) / 1e6 / seconds))
    return rows


def share_before_tick(gaps: Sequence[Gap], min_len_ns: int) -> float:
    """Share of the gaps ≥ ``min_len_ns`` that start in the last ``TICK_WINDOW_NS`` of a
    ``TICK_NS`` period (uniform phases would give TICK_WINDOW_NS / TICK_NS = 6.25 %)."""
    long = [s for s, n in gaps if n >= min_len_ns]
    if not long:
        return float("nan")
    return sum(1 for s in long if s % TICK_NS >= TICK_NS - TICK_WINDOW_NS) / len(long)


def paused_latency(gaps: Sequence[Gap], start: int, work_ns: int) -> int:
    """Wall time of ``work_ns`` of work begun at ``start`` if every gap just pauses it."""
    i = bisect_left(gaps, (start, 0))
    cur, left = start, work_ns
    if i > 0 and gaps[i - 1][0] + gaps[i - 1][1] > start:  # begun inside a stall
        cur = gaps[i - 1][0] + gaps[i - 1][1]
    while i < len(gaps) and gaps[i][0] < cur + left:
        left -= gaps[i][0] - cur
        cur = gaps[i][0] + gaps[i][1]
        i += 1
    return cur + left - start


def stall_model(
    gaps: Sequence[Gap], t0: int, t1: int, work_ns: int, samples: int, seed: int = 0
) -> np.ndarray:
    """``paused_latency`` at ``samples`` uniform random starts in [t0, t1 − 1 ms) (ns)."""
    rng = random.Random(seed)
    hi = max(t0 + 1, t1 - 1_000_000)
    return np.array(
        [paused_latency(gaps, rng.randrange(t0, hi), work_ns) for _ in range(samples)],
        dtype=np.int64,
    )


class Workload:
    """~35 µs of Python: dict and list reads at random over a 20,000-object working set."""

    def __init__(self, reads: int = 400, objects: int = 20_000, seed: int = 0) -> None:
        rng = random.Random(seed)
        self.objs: list[dict[str, Any]] = [
            {"a": i, "b": str(i), "c": [i, i + 1]} for i in range(objects)
        ]
        self.idx = [rng.randrange(objects) for _ in range(reads)]

    def __call__(self) -> int:
        s = 0
        for i in self.idx:
            o = self.objs[i]
            s += o["a"] + len(o["b"]) + o["c"][1]
        return s


def run(quick: bool = False) -> Section:
    """Record the stalls, time the workload, and compare it with the stalls-only model."""
    sec = Section("7. Machine noise floor (the service's CPU, nothing of ours running)")
    mine = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    plan = cpu_plan(mine) if mine else None
    pin(0, plan[0] if plan is not None else None)  # where `make demo` runs the service
    try:
        seconds = 1.0 if quick else 10.0
        runs = 2_000 if quick else 100_000
        gaps, t0, t1 = record_gaps(seconds)
        # GC paused while timing, as the live service runs with automatic collection off
        measured = time_calls(Workload(), runs, warmup=200)
        model = Summary.of("model", stall_model(gaps, t0, t1, int(measured.p50 * 1000), runs))
    finally:
        pin(0, mine)
    where = f"CPU {sorted(plan[0])}" if plan is not None else "any CPU"
    lost = sum(n for _, n in gaps) / (t1 - t0)
    sec.add(
        f"A bare loop reading the monotonic clock on {where} for {seconds:.0f} s: "
        f"{len(gaps):,} gaps of ≥ {MIN_GAP_NS // 1000} µs, {lost:.2%} of the time lost.",
        "",
    )
    sec.table(
        ("gap length", "per second", "ms lost per second"),
        [(label, rate, ms) for label, rate, ms in per_second(gaps, seconds)],
    )
    before = share_before_tick(gaps, 20_000)
    sec.add(
        f"Of the gaps ≥ 20 µs, {before:.0%} start in the last 250 µs before a 4 ms boundary "
        "of the monotonic clock (6 % if their phases were uniform): the guest's timer tick. "
        "A candle received there meets it on its way to the store.",
        "",
    )
    ratio = measured.p99 / measured.p50 if measured.p50 > 0 else float("nan")
    sec.table(
        ("~35 µs of Python, back to back", "runs", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs"),
        [
            ["measured", measured.runs, measured.p50, measured.p90, measured.p99, measured.p999],
            [
                "stalls alone (model: the p50 of work paused by the loop's gaps)",
                model.runs,
                model.p50,
                model.p90,
                model.p99,
                model.p999,
            ],
        ],
    )
    slower = measured.p99 > 1.1 * model.p99
    speed = host_speed(measured.p50)
    sec.add(
        f"The VM alone puts a p99 of {ratio:.1f}× the median on a Python path of this size. "
        f"The stalls the loop sees, simply pausing the work, would give p99 {model.p99:.0f} µs "
        f"against the measured {measured.p99:.0f} µs"
        + (" — the rest is the code running slower after them." if slower else ".")
        + " Section 3's path lives on this floor.",
        "",
        f"Host speed: the workload's p50 is {speed:.2f}× its {REFERENCE_WORKLOAD_P50_US} µs on "
        f"the reference run (README's demo figures, p50 ~{REFERENCE_DEMO_P50_US:.0f} µs); "
        "expect section 3's absolute latencies scaled by about as much"
        + (" — this host is running slower than on that day." if speed > 1.25 else "."),
    )
    return sec


def host_speed(workload_p50_us: float) -> float:
    """This host's time for the workload over the reference run's (> 1: slower than then)."""
    return workload_p50_us / REFERENCE_WORKLOAD_P50_US
