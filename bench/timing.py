"""Timing primitives: interleaved latency sampling and percentile summaries.

Every comparison in the benchmarks runs its contenders round-robin in one process, so the
noise of this shared machine (other processes, frequency changes) lands on all of them alike;
the ratios between contenders are the figures that matter, absolute times drift.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

QUANTILES = (50.0, 90.0, 99.0, 99.9)


@dataclass(frozen=True)
class Summary:
    """Latency percentiles of one contender, in microseconds."""

    name: str
    runs: int
    p50: float
    p90: float
    p99: float
    p999: float
    mean: float

    @classmethod
    def of(cls, name: str, ns: npt.NDArray[np.int64]) -> Summary:
        """Summarise raw nanosecond samples."""
        us = ns.astype(np.float64) / 1e3
        p50, p90, p99, p999 = (float(v) for v in np.percentile(us, QUANTILES))
        return cls(name, int(us.size), p50, p90, p99, p999, float(us.mean()))


def interleaved(
    contenders: Mapping[str, Callable[[], object]],
    runs: Mapping[str, int],
    *,
    warmup: int = 500,
    rounds: int = 1000,
    settle: int = 0,
) -> dict[str, Summary]:
    """Time every contender ``runs[name]`` times, round-robin in small blocks.

    Each round gives every contender a block of ``ceil(runs / rounds)`` back-to-back calls,
    so all contenders are sampled uniformly across the whole measurement window. Each call is
    timed alone with ``perf_counter_ns`` (its ~0.1 µs overhead is in every figure alike).
    The garbage collector is paused while sampling so a collection triggered by one
    contender's allocations is not billed to another. ``settle`` untimed calls open every
    block: the previous contender's work evicts caches, and without them the first call of
    each block (1 in ``block`` samples) would time a cold start instead of the contender.
    """
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    blocks = {k: max(1, math.ceil(runs[k] / rounds)) for k in contenders}
    samples = {k: np.zeros(blocks[k] * rounds, dtype=np.int64) for k in contenders}
    order = list(contenders.items())
    clock = time.perf_counter_ns
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            for name, fn in order:
                buf = samples[name]
                b = blocks[name]
                base = r * b
                for _ in range(settle):
                    fn()
                for j in range(b):
                    t0 = clock()
                    fn()
                    buf[base + j] = clock() - t0
    finally:
        if was_enabled:
            gc.enable()
    return {k: Summary.of(k, v) for k, v in samples.items()}


def time_calls(fn: Callable[[], object], runs: int, warmup: int = 100) -> Summary:
    """Percentiles of ``runs`` single calls of one function (no interleaving)."""
    return interleaved({"x": fn}, {"x": runs}, warmup=warmup, rounds=max(1, min(runs, 1000)))["x"]


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus ``histogram_quantile``: linear interpolation in cumulative buckets.

    ``buckets`` are (upper bound, cumulative count) sorted by bound, ending with +Inf.
    Returns NaN with no observations; the last finite bound if the quantile is in +Inf.
    """
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    total = buckets[-1][1]
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound
